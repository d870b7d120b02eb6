"""The LightningDataModule over the AVSBench datasets (real or synthetic)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from avsac_lit.data.avsbench import AVSBenchDataset, build_dataset
from avsac_lit.data.conditions import AudioCondition, check_condition
from avsac_lit.data.manifest import read_manifest
from avsac_lit.data.metadata import SPLITS, TASKS, check_not_another_task, resolve_root
from avsac_lit.data.samplers import EvalSampler, TrainSampler

log = logging.getLogger(__name__)


class AVSDataModule(L.LightningDataModule):
    """Train/val/test loaders for one AVSBench task.

    Args:
        task: ``s4``, ``ms3`` or ``avss``.
        root: the user's copy of the task (see ``docs/data.md``), or where synthetic data goes.
        img_size: side of the square frames and masks fed to the model.
        train_batch_size: clips per training batch, per process. Several processes together see
            the batches one process with ``train_batch_size x processes`` sees
            (:mod:`avsac_lit.data.samplers`).
        eval_batch_size: clips per validation/test batch, per process. The protocol's F-score is a
            mean of per-batch maxima, so it depends on this; 2 clips is AVSegFormer's setting, which
            the published numbers use. Change it only knowingly. Several processes score the
            batches one process would, each once.
        num_workers: dataloader worker processes.
        pin_memory: pin host memory (useful on GPU).
        cache_dir: the suite's cache directory (``paths.cache_dir``); ``None`` for the default.
        in_memory: keep each split's items in memory once loaded (per loader process), so that
            later epochs read no file; for small datasets such as SynthAVS.
        synthetic: if given, ``root`` is filled by the synthetic generator with these arguments
            (``videos``, ``seed``, ``size``) unless it already holds a tree made with them.

    ``test_dataloader(audio=...)`` gives the test split with counterfactual audio
    (:mod:`avsac_lit.data.conditions`); Lightning's call, without it, gives the protocol's.
    """

    def __init__(
        self,
        *,
        task: str,
        root: str | Path,
        img_size: int = 224,
        train_batch_size: int = 4,
        eval_batch_size: int = 2,
        num_workers: int = 4,
        pin_memory: bool = False,
        cache_dir: str | Path | None = None,
        in_memory: bool = False,
        synthetic: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(TASKS)}.")
        for name, value in (
            ("train_batch_size", train_batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"data.{name} must be at least 1 clip, got {value}.")
        # Plain containers, so checkpoints (which keep these) load with weights_only=True.
        root, synthetic = str(root), None if synthetic is None else dict(synthetic)
        self.save_hyperparameters(logger=False)
        self.datasets: dict[str, AVSBenchDataset] = {}

    def prepare_data(self) -> None:
        # Runs on one process: only IO here (generation, audio cache), never state.
        hp = self.hparams
        if hp.synthetic is not None and not _has_synthetic_tree(hp.root, hp.task, hp.synthetic):
            from avsac_lit.data.synthetic import generate

            generate(task=hp.task, out=hp.root, **hp.synthetic)
        for split in SPLITS:
            dataset = self._build(split)
            dataset.audio_cache.remove_leftovers()
            dataset.precompute_audio()

    def check_root(self) -> None:
        """Fail early, before any model is built, on a root that is not an AVSBench copy (a
        synthetic root may not exist yet: ``prepare_data`` generates it)."""
        hp = self.hparams
        if hp.synthetic is None:
            resolve_root(hp.task, hp.root)
            return
        check_not_another_task(hp.task, hp.root)
        if not _has_synthetic_tree(hp.root, hp.task, hp.synthetic):
            from avsac_lit.data.synthetic_settings import check_generation

            # Never generated over a user's data, nor at a size no machine holds.
            check_generation(task=hp.task, out=hp.root, **hp.synthetic)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in wanted.get(stage, SPLITS):
            if split not in self.datasets:
                self.datasets[split] = self._build(split)

    def _build(self, split: str) -> AVSBenchDataset:
        hp = self.hparams
        return build_dataset(hp.task, hp.root, split, hp.img_size, hp.cache_dir, hp.in_memory)

    def _loader(
        self, split: str, batch_size: int, shuffle: bool, audio: str = "matched"
    ) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        if check_condition(audio) != "matched":
            dataset = AudioCondition(dataset, audio)
        workers = self.hparams.num_workers
        if shuffle:
            sampler = TrainSampler(len(dataset), batch_size=batch_size)
            # A resumed run's loader starts where the interrupted run stood.
            from avsac_lit.data.samplers import continue_interrupted_epoch

            continue_interrupted_epoch(self.trainer, sampler)
        else:
            sampler = EvalSampler(len(dataset), batch_size=batch_size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.train_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self, audio: str = "matched") -> DataLoader:
        """The test split; ``audio``: ``matched`` (the protocol), ``shuffled`` or ``silent``."""
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False, audio=audio)

    @property
    def num_classes(self) -> int:
        """1 for S4/MS3; for AVSS the classes of the root's label2idx.json (background included),
        known for synthetic data before it is generated."""
        hp = self.hparams
        if hp.task != "avss":
            return 1
        if hp.synthetic is not None and not _has_synthetic_tree(hp.root, hp.task, hp.synthetic):
            from avsac_lit.data.scenes import CATEGORIES

            return len(CATEGORIES) + 1
        if not self.datasets:
            self.setup(None)
        return next(iter(self.datasets.values())).num_classes

    @property
    def class_names(self) -> list[str] | None:
        """AVSS: the class names, background first (label2idx.json order); None for S4/MS3."""
        if self.hparams.task != "avss":
            return None
        if not self.datasets:
            self.setup(None)
        return list(next(iter(self.datasets.values())).class_names)


def _has_synthetic_tree(root: str | Path, task: str, settings: dict[str, Any]) -> bool:
    manifest = read_manifest(root)
    if manifest is None:
        return False
    recorded = manifest.get("settings", {})
    # A generation killed midway leaves its first manifest, marked incomplete.
    complete = manifest.get("complete", "splits" in manifest)
    return (
        complete
        and manifest.get("task") == task
        and all(recorded.get(k) == v for k, v in settings.items())
    )
