"""Samplers that make a run on several processes see the batches a single process sees.

Lightning's default under DDP is ``DistributedSampler``: it deals clips to processes one by one,
shuffles with its own seed, and pads the split with repeated clips so every process has as many.
That changes the training batches, and for evaluation both the batches (the protocol's scores are
per-batch means and maxima) and the clips (the padded repeats count twice). These samplers instead:

* training: cut one seeded permutation of the split into *global* batches of
  ``batch_size x processes`` clips, the batches a single process with that batch size draws, and
  give each process its slice of every global batch, so one optimiser step sees the same clips;
* evaluation: deal *whole* single-process batches to processes in turn, so each batch is scored
  as one, exactly once, and no clip is repeated.

Both read the number of processes and the rank from ``torch.distributed`` when they are iterated,
so a loader built before the processes start (as ``avsac_lit.run.conditions`` builds the test
loaders) is still split right. They subclass ``DistributedSampler`` only so that Lightning, which
wraps any other sampler in its own under DDP, leaves them alone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning as L

import math
import os
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


def process_layout() -> tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def run_seed() -> int:
    """The run's seed as ``seed_everything`` exports it to every process, 0 when none was set."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class TrainSampler(DistributedSampler):
    """A fresh permutation of the split every epoch, seeded by the run's seed and the epoch.

    With P processes and ``batch_size`` b per process, the permutation is cut into global batches
    of b*P clips; process r takes clips [r*b, (r+1)*b) of each, so the P processes of one step
    together see exactly the batch a single process with batch size b*P sees (the gradients are
    then the same: DDP averages equal-sized halves of a mean). A last global batch of c < b*P
    clips is split into P equal parts of c // P clips; the c % P left over are not trained on in
    that epoch (a single process uses them all), and with c < P the batch is dropped.

    The permutation depends only on the seed and the epoch (Lightning calls ``set_epoch``), so a
    resumed run draws the batches the uninterrupted run drew, and ``skip_batches`` continues an
    epoch interrupted after that many of this process's batches.
    """

    def __init__(self, num_clips: int, *, batch_size: int, seed: int | None = None) -> None:
        # DistributedSampler.__init__ is not called: it would fix the processes at construction.
        self.num_clips, self.batch_size = num_clips, batch_size
        self.seed = run_seed() if seed is None else seed
        self.epoch = 0
        self.batches_to_skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, count: int) -> None:
        """Leave out this process's first ``count`` batches of the next epoch (mid-epoch resume)."""
        self.batches_to_skip = count

    def rank_batches(self) -> list[list[int]]:
        """This process's batches of the current epoch, in order."""
        processes, rank = process_layout()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_clips, generator=generator).tolist()
        global_size = self.batch_size * processes
        batches = []
        for start in range(0, self.num_clips, global_size):
            global_batch = order[start : start + global_size]
            share = len(global_batch) // processes
            if share:
                batches.append(global_batch[rank * share : (rank + 1) * share])
        return batches

    def __iter__(self) -> Iterator[int]:
        batches = self.rank_batches()[self.batches_to_skip :]
        self.batches_to_skip = 0
        return (index for batch in batches for index in batch)

    def __len__(self) -> int:
        return sum(map(len, self.rank_batches()))


class EvalSampler(DistributedSampler):
    """The split in order, cut into batches of ``batch_size`` as a single process cuts it; with
    P processes, batch j goes to process j % P. Every clip is scored once, in the batch it has on
    one process; the processes may get different numbers of batches."""

    def __init__(self, num_clips: int, *, batch_size: int) -> None:
        self.num_clips, self.batch_size = num_clips, batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self) -> int:
        return math.ceil(self.num_clips / self.batch_size)

    def global_batch_index(self, local_index: int) -> int:
        """The single-process position of this process's ``local_index``-th batch."""
        processes, rank = process_layout()
        return local_index * processes + rank

    def rank_batch_indices(self) -> range:
        """The single-process batch numbers this process scores."""
        processes, rank = process_layout()
        if processes > self.num_batches():
            # A process without batches would skip the epoch's end, where the others wait for
            # it to add up the metrics.
            raise ValueError(
                f"An evaluation split of {self.num_clips} clips makes {self.num_batches()} "
                f"batches of data.eval_batch_size={self.batch_size}, fewer than the {processes} "
                "processes evaluating it. Use fewer processes (trainer.devices) or, knowing that "
                "the protocol's F-score depends on it, a smaller data.eval_batch_size."
            )
        return range(rank, self.num_batches(), processes)

    def __iter__(self) -> Iterator[int]:
        for batch in self.rank_batch_indices():
            start = batch * self.batch_size
            yield from range(start, min(start + self.batch_size, self.num_clips))

    def __len__(self) -> int:
        return sum(
            min(self.batch_size, self.num_clips - batch * self.batch_size)
            for batch in self.rank_batch_indices()
        )


def continue_interrupted_epoch(trainer: L.Trainer | None, sampler) -> None:
    """Start a training ``sampler`` where a resumed run's training stands.

    Lightning asks for the loader after restoring its loops from the checkpoint and draws the
    first batch before it sets the sampler's epoch, so the epoch is set here; a checkpoint
    written mid-epoch continues that epoch with the batches it had not trained on.
    """
    if trainer is None or not trainer.ckpt_path:
        return
    epochs = trainer.fit_loop.epoch_progress
    sampler.set_epoch(epochs.current.processed)
    # processed, not completed: a checkpoint written at a batch's end holds its step.
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    batches = limited_batches(len(sampler.rank_batches()), trainer.limit_train_batches)
    mid_epoch = epochs.total.started == epochs.total.processed + 1 and 0 < done < batches
    if not mid_epoch:
        return
    # The loader draws its first batch in the interrupted epoch, which Lightning continues.
    sampler.skip_batches(done)
    # Lightning warns that such a resume is "unreliable" for loaders that start the epoch
    # again; this one does not.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")
    log.info(
        "Resuming from %s, written in the middle of epoch %d after %d of its %d batches: the "
        "epoch continues with the batches it had not trained on, as the interrupted run would "
        "have, its training metrics' sums restored.",
        trainer.ckpt_path, epochs.current.processed, done, batches,
    )  # fmt: skip


def limited_batches(batches: int, limit: int | float | None) -> int:
    """The batches an epoch trains on under ``trainer.limit_train_batches``, as Lightning
    counts them."""
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)
