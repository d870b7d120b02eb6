"""Lightning callbacks of the suite."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BaseFinetuning, Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch.optim import Optimizer
from torch.utils.data import Dataset, default_collate

from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.storage.atomic import atomic_path, remove_leftovers
from avsac_lit.storage.safe_paths import inside
from avsac_lit.viz.draw import (
    GROUND_TRUTH,
    clip_figure,
    frames_to_uint8,
    log_mel_image,
    predicted_masks,
)

log = logging.getLogger(__name__)


def find_backbone(pl_module: L.LightningModule) -> VisualBackbone:
    backbones = [m for m in pl_module.modules() if isinstance(m, VisualBackbone)]
    if len(backbones) != 1:
        raise ValueError(f"Expected one VisualBackbone in the module, found {len(backbones)}.")
    return backbones[0]


class UnfreezeBackbone(BaseFinetuning):
    """Keeps the visual backbone frozen for ``epochs`` epochs, then trains it (AVSegFormer's
    ``freeze_epochs``: 5 for S4, 10 for MS3, 0 for AVSS).

    On unfreezing, the backbone's parameters join the optimiser as a new parameter group with the
    current learning rate (AVSegFormer trains them at the same rate), and its normalisation layers
    leave eval mode. Lightning's fine-tuning callback keeps the groups across checkpoints, so a
    resumed run continues with them.

    Args:
        epochs: the epoch at which the backbone starts training (0 trains it from the start).
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        if epochs < 0:
            raise ValueError(f"callbacks.unfreeze_backbone.epochs must be >= 0, got {epochs}.")
        self.epochs = epochs

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        find_backbone(pl_module).set_frozen(True)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch != self.epochs:
            return
        backbone = find_backbone(pl_module)
        backbone.set_frozen(False)
        self.unfreeze_and_add_param_group(backbone, optimizer, initial_denom_lr=1.0, train_bn=True)


class ValidationOverlays(Callback):
    """Every ``every_n_epochs`` validation epochs, draws the same validation clips with their
    predicted and ground-truth masks and their log-mel.

    With a W&B logger the frames go to W&B as images with two mask layers (``predictions``,
    ``ground_truth``) that the dashboard toggles, and the log-mels as images (``val/overlays``,
    ``val/log_mel``). Without one, each clip is a PNG grid,
    ``{dirpath}/epoch_{NNN}/{clip}.png``. Skips the sanity check; runs on rank zero only.

    Args:
        dirpath: where PNG grids go (the run directory's ``overlays/``).
        clips: how many validation clips, spread evenly over the split and fixed for the run.
        every_n_epochs: draw every this many epochs (the last validation of a run too).
    """

    def __init__(self, dirpath: str | Path, clips: int = 4, every_n_epochs: int = 1) -> None:
        super().__init__()
        if clips < 1 or every_n_epochs < 1:
            raise ValueError(
                f"callbacks.overlays: clips={clips} and every_n_epochs={every_n_epochs} must "
                "both be at least 1 (remove the callback with ~callbacks.overlays)."
            )
        self.dirpath = Path(dirpath)
        self.clips, self.every_n_epochs = clips, every_n_epochs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        last_epoch = max_epochs is not None and trainer.current_epoch + 1 >= max_epochs
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or not due:
            return
        dataset = validation_dataset(trainer)
        indices = np.unique(np.linspace(0, len(dataset) - 1, self.clips).round().astype(int))
        batch = default_collate([dataset[int(i)] for i in indices])
        # As the validation loop feeds the model: in the trainer's precision (float64 frames to
        # a 64-true model, autocast under the mixed precisions).
        precision = trainer.precision_plugin
        inputs = precision.convert_input({k: v for k, v in batch.items() if torch.is_tensor(v)})
        inputs = {k: v.to(pl_module.device) for k, v in inputs.items()}
        with torch.no_grad(), precision.val_step_context():
            predictions = predicted_masks(pl_module(inputs)["logits"]).cpu()
        num_classes = pl_module.num_classes
        class_names = getattr(dataset, "class_names", None)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            self.log_to_wandb(wandb_loggers, batch, predictions, num_classes, class_names, trainer)
        else:
            folder = self.dirpath / f"epoch_{trainer.current_epoch:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(batch["name"]):
                figure = clip_figure(
                    batch["frames"][i], batch["audio"][i],
                    {GROUND_TRUTH: batch["masks"][i], "prediction": predictions[i]},
                    num_classes=num_classes, frame_valid=batch["frame_valid"][i],
                    mask_valid=batch["mask_valid"][i], class_names=class_names,
                    title=f"{name}, epoch {trainer.current_epoch}",
                )  # fmt: skip
                with atomic_path(inside(folder, f"{name}.png")) as partial:
                    figure.savefig(partial, dpi=100, format="png")
            log.info("Validation overlays written to %s", folder)

    @staticmethod
    def log_to_wandb(loggers, batch, predictions, num_classes, class_names, trainer) -> None:
        import wandb

        names = class_names or (["background", "sounding"] if num_classes == 1 else None)
        labels = dict(enumerate(names)) if names else {c: str(c) for c in range(num_classes)}
        images, log_mels = [], []
        for i, name in enumerate(batch["name"]):
            frames = frames_to_uint8(batch["frames"][i])
            for k in batch["frame_valid"][i].nonzero()[:, 0].tolist():
                layers = {"predictions": predictions[i, k]}
                if batch["mask_valid"][i, k]:
                    layers["ground_truth"] = batch["masks"][i, k].long()
                masks = {
                    layer: {"mask_data": mask.numpy(), "class_labels": labels}
                    for layer, mask in layers.items()
                }
                images.append(wandb.Image(frames[k], masks=masks, caption=f"{name} frame {k + 1}"))
            spectrogram = log_mel_image(batch["audio"][i][batch["frame_valid"][i]])
            log_mels.append(wandb.Image(normalised(spectrogram[::-1]), caption=name))
        step = {"trainer/global_step": trainer.global_step}
        for logger in loggers:
            logger.experiment.log({"val/overlays": images, "val/log_mel": log_mels, **step})


def normalised(image: np.ndarray) -> np.ndarray:
    """A float image scaled to uint8 0..255 over its own range."""
    low, high = float(image.min()), float(image.max())
    return ((image - low) / max(high - low, 1e-12) * 255).round().astype(np.uint8)


def validation_dataset(trainer: L.Trainer) -> Dataset:
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    return loader.dataset


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose best-k tracking survives a resume into a new run
    directory (the README's default): the interrupted run's best checkpoints are copied into this
    run's ``checkpoints/`` (to a temporary name, then renamed) and tracked there with their
    scores, so an epoch worse than them never becomes the best, and the best one is what the end
    of training tests. Lightning's own class forgets the scores when the directory changes."""

    @property
    def state_key(self) -> str:
        # The key of the class it extends, so that either reads the other's checkpoints.
        return f"ModelCheckpoint{super().state_key.removeprefix(type(self).__qualname__)}"

    def load_state_dict(self, state_dict: dict) -> None:
        previous = state_dict.get("dirpath")
        if previous is None or self.dirpath is None or previous == self.dirpath:
            return super().load_state_dict(state_dict)
        copies = {}
        for path in state_dict.get("best_k_models", {}):
            source = Path(path)
            if not source.is_file():
                log.warning("Best checkpoint %s of the resumed run is gone: not tracked.", source)
                continue
            target = Path(self.dirpath) / source.name
            with atomic_path(target) as partial:
                shutil.copyfile(source, partial)
            copies[path] = str(target)
        log.info("Best checkpoints of the resumed run copied into %s: %s", self.dirpath,
                 ", ".join(Path(c).name for c in copies.values()) or "none")  # fmt: skip
        scores = state_dict.get("best_k_models", {})
        super().load_state_dict(
            {
                **state_dict,
                "dirpath": self.dirpath,
                "best_k_models": {copies[p]: scores[p] for p in copies},
                "best_model_path": copies.get(state_dict.get("best_model_path"), ""),
                "kth_best_model_path": copies.get(state_dict.get("kth_best_model_path"), ""),
                "last_model_path": "",  # this run writes its own
            }
        )
        if not self.best_model_path:
            self.best_model_score = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # Lightning 2.6 writes last.ckpt only when the epoch also wrote a best checkpoint, so a
        # crash after an epoch that did not improve would resume from an older one.
        if (
            self.save_last
            and not self._should_skip_saving_checkpoint(trainer)
            and not self._should_save_on_train_epoch_end(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.dirpath is not None:
            remove_leftovers(self.dirpath)
            self.remove_untracked(trainer.ckpt_path)

    def remove_untracked(self, resumed_from: str | None) -> None:
        """Delete checkpoints in ``dirpath`` that the resumed state does not track: a kill
        between writing a new best and deleting the old one leaves both, and the resumed run
        would keep the orphan beside its own (Lightning only deletes what it tracks). Only
        files named as this callback names its checkpoints (:meth:`own_name`) are deleted:
        others there (a user's copies, exports) are not the run's."""
        if not resumed_from or not Path(self.dirpath).is_dir():
            return
        keep = {Path(p).resolve() for p in self.best_k_models} | {Path(resumed_from).resolve()}
        own_name = self.own_name()
        for path in sorted(Path(self.dirpath).glob("*" + self.FILE_EXTENSION)):
            last = path.stem.startswith(self.CHECKPOINT_NAME_LAST)
            if path.resolve() in keep or last or not own_name.fullmatch(path.name):
                continue
            path.unlink()
            log.info("Removed %s: a checkpoint of the interrupted run that its state (%s) no "
                     "longer tracks.", path.name, Path(resumed_from).name)  # fmt: skip

    def own_name(self) -> re.Pattern[str]:
        """The names this callback gives its checkpoints (``filename``'s template, as Lightning
        fills it in, with a version suffix): ``epoch_{epoch:03d}`` gives ``epoch_007.ckpt``,
        never ``epoch_best_by_hand.ckpt``."""
        name = Path(self.format_checkpoint_name(_EveryValue())).name
        stem = name.removesuffix(self.FILE_EXTENSION)
        pattern = _LOGGED_VALUE.join(re.escape(part) for part in stem.split(_MARKER))
        version = re.escape(self.CHECKPOINT_JOIN_CHAR) + r"v\d+"
        return re.compile(f"{pattern}(?:{version})?{re.escape(self.FILE_EXTENSION)}")


# A number as Lightning writes one into a checkpoint's name (``format(tensor, spec)``).
_LOGGED_VALUE = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf)"
_MARKER = "\0"


class _Marker:
    def __format__(self, spec: str) -> str:
        return _MARKER


class _EveryValue(dict):
    """The metrics a checkpoint's name is filled in from, holding every name, each written as
    :data:`_MARKER` whatever its format: where the template puts values."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> _Marker:
        return _Marker()


class FirstStepRecorder(Callback):
    """Saves the first training step's loss (the mean over processes) and its gradients (after
    DDP has averaged them) to ``path``: how a multi-process setup is checked against one process
    (``experiments/design/runs_that_survive.py ddp``). Add it with
    ``+callbacks.first_step._target_=avsac_lit.run.callbacks.FirstStepRecorder
    +callbacks.first_step.path=step.pt``."""

    def __init__(self, path: str | Path) -> None:
        self.path, self.gradients = Path(path), None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            named = pl_module.named_parameters()
            self.gradients = {n: p.grad.clone() for n, p in named if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 and batch_idx == 0:
            loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
            if trainer.is_global_zero:
                with atomic_path(self.path) as partial, open(partial, "wb") as handle:
                    torch.save({"loss": loss, "gradients": self.gradients}, handle)
