"""The bookkeeping of an AVS system's scores: the protocol's metrics per stage (and per audio
condition in a test), the frames each stage scores, the epoch's mean evaluation losses, when the
audio share is measured and whether it is logged, and the running training sums a mid-epoch
checkpoint carries (docs/metrics.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from avsac_lit.data.conditions import condition_of, metric_prefix
from avsac_lit.metrics import (
    AVSSFScore,
    AVSSMeanIoU,
    PooledFScore,
    ProtocolFScore,
    ProtocolJaccard,
)

log = logging.getLogger(__name__)


def protocol_metrics(num_classes: int) -> MetricCollection:
    """``miou`` and ``f`` as the protocol reports them; ``f_pooled`` (S4/MS3) is the
    batch-independent F, logged as a sanity check (docs/metrics.md)."""
    # The groups are given, not detected: torchmetrics merges metrics whose states are equal
    # after the first update, and the Jaccard and F means have equal states whenever a first
    # batch scores the same on both (0 and 0 for an empty prediction, 1 and 1 for a perfect
    # one); merged, one reported the other's score for the rest of the run. The AVSS metrics
    # hold the same per-class sums by construction, so they share them.
    if num_classes == 1:
        return MetricCollection(
            {"miou": ProtocolJaccard(), "f": ProtocolFScore(), "f_pooled": PooledFScore()},
            compute_groups=False,
        )
    return MetricCollection(
        {"miou": AVSSMeanIoU(num_classes=num_classes), "f": AVSSFScore(num_classes=num_classes)},
        compute_groups=[["miou", "f"]],
    )


class StageMetrics:
    """A system's metric bookkeeping, over the metric objects it holds: ``metrics`` (one
    collection per stage, ``{stage}_metrics``) and ``audio_share`` (``val``, ``test``) stay
    registered on the module, so its state-dict keys are its own; this holds references.

    Args:
        metrics: the stages' collections, from :func:`protocol_metrics`.
        audio_share: the validation and test audio-share metrics.
        num_classes: 1 for S4/MS3, the AVSS classes with background.
        eval_padding_frames: AVSS: also score the padding frames of 5-frame clips in
            validation and testing (:meth:`scored_frames`).
        audio_share_batches: the first validation and test batches (per process) on which the
            audio share is measured; ``None``: every batch.
    """

    def __init__(
        self,
        metrics: nn.ModuleDict,
        audio_share: nn.ModuleDict,
        *,
        num_classes: int,
        eval_padding_frames: bool,
        audio_share_batches: int | None,
    ) -> None:
        self.metrics, self.audio_share = metrics, audio_share
        self.num_classes, self.eval_padding_frames = num_classes, eval_padding_frames
        self.audio_share_batches = audio_share_batches
        self.eval_losses: dict[str, MeanMetric] = {}  # "{prefix}/{part}", made as they come
        # The audio conditions of the running test call, one per loader, and the condition of
        # the batch at hand (start_test, test_condition).
        self.test_prefixes, self.test_prefix = ["test"], "test"
        self.test_metrics: dict[str, MetricCollection] = {}
        self.resumed_train_sums: list[dict[str, Tensor]] | None = None

    def collection(self, stage: str) -> MetricCollection:
        return self.metrics[f"{stage}_metrics"]

    def prefix(self, stage: str) -> str:
        """The logged prefix of a stage's batch at hand: the test's audio condition in a test."""
        return self.test_prefix if stage == "test" else stage

    def scored_frames(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        """[B, T] bool: the frames a stage's metrics see: the annotated ones (training scores them
        only, like the loss), and in evaluation of AVSS with ``eval_padding_frames`` the padding
        frames of 5-frame clips too."""
        frames = batch["mask_valid"]
        if stage != "train" and self.num_classes > 1 and self.eval_padding_frames:
            frames = frames | ~batch["frame_valid"]
        return frames

    def update(self, stage: str, outputs: dict[str, Tensor], batch: dict) -> None:
        """A batch's scored frames into the stage's metrics (a test's: its audio condition's)."""
        frames = self.scored_frames(batch, stage)
        logits = outputs["logits"][frames].detach()  # [n, K, H, W]
        target = batch["masks"][frames]  # [n, H, W]
        if self.num_classes == 1:
            logits = logits[:, 0]
        # A test's batch goes to the metrics of its audio condition.
        metrics = self.test_metrics[self.test_prefix] if stage == "test" else self.collection(stage)
        metrics.update(logits.float(), target)

    def update_losses(self, prefix: str, losses: dict[str, Tensor], clips: int) -> None:
        """An evaluation batch's losses into the epoch's means, weighted by its ``clips``."""
        for name, value in losses.items():
            if f"{prefix}/{name}" not in self.eval_losses:
                self.eval_losses[f"{prefix}/{name}"] = MeanMetric().to(value.device)
            self.eval_losses[f"{prefix}/{name}"].update(value.detach(), clips)

    def loss_scores(self, prefix: str) -> dict[str, Tensor]:
        """The epoch's mean losses under ``prefix``, over every process's clips, then reset.

        Lightning's own epoch means would average the processes' means, which weighs a clip of a
        process with fewer batches more than one of a process with more.
        """
        scores = {}
        for key in sorted(k for k in self.eval_losses if k.startswith(prefix + "/")):
            scores[key] = self.eval_losses[key].compute()
            self.eval_losses[key].reset()
        return scores

    def measures_audio_share(
        self, stage: str, batch: dict, batch_idx: int, trainer: L.Trainer
    ) -> bool:
        """Whether this evaluation batch's audio share is measured (two more forward passes)."""
        limit = self.audio_share_batches
        # The batch's position on a single process (EvalSampler deals batches out in turn), so
        # several processes measure the same batches as one.
        position = batch_idx * trainer.world_size + trainer.global_rank
        return (
            (limit is None or position < limit)
            and len(batch["frames"]) > 1  # a lone last clip has no partner to swap with
            # Under counterfactual test audio the "true" input is already swapped.
            and (stage == "val" or self.test_prefix == "test")
        )

    def audio_share_scores(self, stage: str, trainer: L.Trainer) -> dict[str, Tensor]:
        """``{stage}/audio_share`` over the epoch, then reset; nothing where no process measured
        it or it is undefined."""
        metric = self.audio_share[stage]
        # Decided together: computing synchronises the processes, and one may have no batch
        # with a partner clip.
        if not trainer.strategy.reduce_boolean_decision(metric.update_called, all=False):
            return {}
        share = metric.compute()
        metric.reset()
        if not torch.isfinite(share):
            # Neither input moved the feature at all: the share is undefined, not a number.
            log.warning("The %s audio share is undefined (no input changed the final feature): "
                        "not logged.", stage)  # fmt: skip
            return {}
        return {f"{stage}/audio_share": share}

    def start_training(self, trainer: L.Trainer) -> None:
        """Forget the sanity check's validation batches (they must not count towards the first
        epoch), and take up the training sums of the checkpoint resumed from."""
        self.collection("val").reset()
        self.audio_share["val"].reset()
        self.restore_train_sums(trainer, self.resumed_train_sums)
        self.resumed_train_sums = None

    def train_scores(self, trainer: L.Trainer) -> dict[str, Tensor]:
        """The epoch's training scores (none for an epoch without batches: a run resumed from an
        end-of-validation checkpoint closes that epoch so), then reset."""
        metrics = self.collection("train")
        updated = any(metric.update_called for metric in metrics.values())
        scores = {}
        if trainer.strategy.reduce_boolean_decision(updated, all=False):
            scores = metrics.compute()
        metrics.reset()
        return scores

    def val_scores(self, trainer: L.Trainer) -> dict[str, Tensor]:
        """The epoch's validation scores, the audio share among them, then reset."""
        scores = self.collection("val").compute() | self.audio_share_scores("val", trainer)
        self.collection("val").reset()
        return scores

    def start_test(self, loaders) -> None:
        """One test call scores every audio condition, one loader each (test_conditions), each
        into metrics of its own."""
        loaders = loaders if isinstance(loaders, list) else [loaders]
        self.test_prefixes = [metric_prefix(condition_of(loader.dataset)) for loader in loaders]
        template = self.collection("test")
        self.test_metrics = {
            prefix: template if index == 0 else template.clone()
            for index, prefix in enumerate(self.test_prefixes)
        }

    def test_condition(self, dataloader_idx: int) -> None:
        """The test batches that come next are those of loader ``dataloader_idx``'s condition."""
        self.test_prefix = self.test_prefixes[dataloader_idx]

    def test_scores(self, trainer: L.Trainer) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """(prefix, scores) of each audio condition of the test, in the same order on every
        process, each reset as it is computed."""
        for prefix in self.test_prefixes:
            metrics = self.test_metrics[prefix]
            scores = metrics.compute()
            metrics.reset()
            if prefix == "test":
                scores |= self.audio_share_scores("test", trainer)
            scores = {prefix + k.removeprefix("test"): v for k, v in scores.items()}
            yield prefix, scores | self.loss_scores(prefix)
        self.test_metrics = {}

    def train_sums(
        self, trainer: L.Trainer | None, all_gather: Callable[[Tensor], Tensor]
    ) -> list[dict[str, Tensor]]:
        """The running sums of the epoch's training metrics, one dict per process (zeros at an
        epoch's end), so that an epoch resumed after a mid-epoch checkpoint ends with the
        metrics of the uninterrupted epoch. Every process calls this as the checkpoint is
        dumped (Lightning dumps it on all of them), and the sums are gathered."""
        metrics = self.collection("train")
        metrics.persistent(True)
        try:
            sums = {name: value.detach().clone() for name, value in metrics.state_dict().items()}
        finally:
            metrics.persistent(False)
        if trainer is None or trainer.world_size == 1:
            return [sums]
        gathered = {name: all_gather(value) for name, value in sums.items()}  # [P, ...]
        return [{n: v[rank] for n, v in gathered.items()} for rank in range(trainer.world_size)]

    def restore_train_sums(
        self, trainer: L.Trainer, per_process: list[dict[str, Tensor]] | None
    ) -> None:
        """This process's running sums of :meth:`train_sums`. With another number of processes
        than the checkpoint's, the first takes their total (sums add over processes)."""
        if not per_process:
            return
        processes, rank = trainer.world_size, trainer.global_rank
        if len(per_process) == processes:
            mine = per_process[rank]
        else:
            mine = {n: sum(p[n] for p in per_process) for n in per_process[0]}
            if rank != 0:
                mine = {n: v.zero_() for n, v in mine.items()}
        metrics = self.collection("train")
        metrics.persistent(True)
        try:
            metrics.load_state_dict(mine, strict=False)
        finally:
            metrics.persistent(False)
