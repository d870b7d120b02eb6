"""The system: an AVS model trained with its criterion and scored with the AVSBench protocol.

The LightningModule holds the net, the loss, the steps and the optimiser; what it is made of lives
beside it: the metric bookkeeping (:mod:`avsac_lit.system.stage_metrics`), the non-finite guards
(:mod:`avsac_lit.system.guards`), the warm-up and the optimiser's config
(:mod:`avsac_lit.system.optim`), the frames a step computes (:mod:`avsac_lit.system.frames`) and
the frozen encoders a checkpoint leaves out (:mod:`avsac_lit.checkpoints.encoders`). Two callbacks
that every run's assembly adds complete it: ``NonFiniteGuard`` (the gradients, in ``guards``) and
``ExactResume`` (the random state a resumed run continues from, :mod:`avsac_lit.run.exact_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, Metric

from avsac_lit.checkpoints.encoders import (
    BuiltEncoders,
    leave_out_built_encoders,
    restore_built_encoders,
)
from avsac_lit.checkpoints.versions import check_weights_fit, suite_version
from avsac_lit.metrics import AudioShare, counterfactual_shifts
from avsac_lit.models.losses import AVSCriterion
from avsac_lit.system.feature_cache import EncoderFeatureCache
from avsac_lit.system.frames import frames_to_compute
from avsac_lit.system.guards import (
    EvalFiniteness,
    check_finite_scores,
    check_training_loss,
    check_weights_written,
)
from avsac_lit.system.memory import keep_freed_memory
from avsac_lit.system.optim import optimizer_config, scaled_learning_rates, warmup_factor
from avsac_lit.system.stage_metrics import StageMetrics, protocol_metrics

MONITOR = "val/miou"  # checkpoint selection, as AVSegFormer: best validation mIoU


class AVSLitModule(L.LightningModule):
    """Trains an AVS model (AVSAC or AVSegFormer) and evaluates it with the AVSBench protocol.

    Built from a run's ``model`` config by one ``instantiate``; every default lives in
    ``avsac_lit/conf/model/*.yaml``.

    Args:
        name: the model's name (``avsac``, ``avsegformer``), recorded with the run's results.
        num_classes: 1 for S4/MS3 (sounding or not), the AVSS classes with background.
        net: the model; ``forward(frames, audio, frame_valid)`` returns at least ``logits``
            [B, T, K, H, W].
        loss: the criterion (:class:`AVSCriterion`), returning ``loss`` and its parts.
        optimizer: a partial optimiser, called with the trainable parameters only, so frozen
            encoders take no optimiser state.
        scheduler: an optional partial LR scheduler, called with the optimiser.
        scheduler_interval: ``epoch`` or ``step``: when the scheduler steps.
        warmup_steps: optimiser steps over which the learning rate ramps linearly from
            1/warmup_steps of the scheduled rate to all of it (0: none). It scales whatever the
            scheduler sets, without changing the scheduler's own state; the logged ``lr-AdamW``
            is the scheduled rate.
        eval_padding_frames: AVSS: also score the padding frames of 5-frame clips (as all
            background, with the zeroed logits the model gives them), as the reference does, so
            numbers compare with published ones (docs/metrics.md, quirk 10).
        audio_share_batches: validation and test batches (the first ones, per process) on which
            the audio share of the final feature is measured; each costs two more forward passes.
            ``None`` measures every batch, 0 none (docs/metrics.md, "Audio share").
        feature_cache: keeps the frozen encoders' outputs on disk, so that training and validation
            compute them once per input (:mod:`avsac_lit.system.feature_cache`); ``None``: no cache.
        skip_unread_frames: training computes only the frames a loss term or a training metric
            reads (S4: the labelled first frame), where that changes nothing: the model treats
            frames independently (no BatchNorm in train mode) and no loss term reads the others
            (the synchrony loss reads every frame).

    Each stage has its own metrics, logged per epoch as ``{train,val,test}/{miou,f}`` (and
    ``f_pooled`` for S4/MS3), with the loss parts ``{stage}/{loss,seg,sync[,mix]}``,
    ``val/miou_best`` and ``{val,test}/audio_share``; a test under counterfactual audio logs
    under its condition's prefix (``test_shuffled/``). docs/training.md lists them.
    """

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        net: nn.Module,
        loss: AVSCriterion,
        optimizer: Callable[[Iterable[Tensor]], Optimizer],
        scheduler: Callable[[Optimizer], torch.optim.lr_scheduler.LRScheduler] | None,
        scheduler_interval: str,
        warmup_steps: int,
        eval_padding_frames: bool,
        audio_share_batches: int | None,
        feature_cache: EncoderFeatureCache | None = None,
        skip_unread_frames: bool = True,
    ) -> None:
        super().__init__()
        if loss.num_classes != num_classes:
            raise ValueError(
                f"model.loss.num_classes={loss.num_classes} but model.num_classes={num_classes}; "
                "leave the loss's at ${model.num_classes}."
            )
        if audio_share_batches is not None and audio_share_batches < 0:
            raise ValueError(
                f"model.audio_share_batches={audio_share_batches}; expected a number of batches "
                ">= 0 (0 turns the measurement off) or null for every batch."
            )
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps={warmup_steps}; expected a number of steps >= 0.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"model.scheduler_interval={scheduler_interval!r}; expected 'epoch' or 'step'."
            )
        # The run's config.yaml rebuilds the net, the loss and the optimiser; keeping them out of
        # hparams keeps checkpoints loadable with torch.load(weights_only=True).
        self.save_hyperparameters(
            logger=False, ignore=["net", "loss", "optimizer", "scheduler", "feature_cache"]
        )
        self.net, self.criterion = net, loss
        self.feature_cache = feature_cache
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # ModuleDict keys may not shadow Module attributes such as ``train``.
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": protocol_metrics(num_classes).clone(prefix=f"{stage}/")
                for stage in ("train", "val", "test")
            }
        )
        self.audio_share = nn.ModuleDict({"val": AudioShare(), "test": AudioShare()})
        self.val_miou_best = MaxMetric()
        # In the checkpoint, so that a resumed run (and a sweeper reading val/miou_best) keeps the
        # best score reached before the interruption.
        self.val_miou_best.persistent(True)
        # The bookkeeping over the metric objects above, which stay registered here: their
        # state-dict keys are the module's.
        self.scores = StageMetrics(
            self.metrics, self.audio_share, num_classes=num_classes,
            eval_padding_frames=eval_padding_frames, audio_share_batches=audio_share_batches,
        )  # fmt: skip
        self.finiteness = EvalFiniteness()  # of the validation and test batches
        # What the encoders are as built from the config: a checkpoint leaves out those that
        # still match, and its loading rebuilds them.
        self.built_encoders = BuiltEncoders.of(self)
        keep_freed_memory()  # every command builds a module: train, eval, predict, bench
        # The resolved run config, saved into every checkpoint (``build_run`` sets it), so that a
        # checkpoint alone rebuilds its model: avsac_lit.predict and the notebooks.
        self.run_config: dict | None = None
        # DDP broadcasts every parameter from rank 0 when it wraps the module; the frozen VGGish
        # (72M parameters, nothing unfreezes it) is already the same on every rank: the same
        # weight file or the same fixed init, and ddp_spawn's processes unpickle one module.
        audio = getattr(self.net, "audio", None)
        if getattr(audio, "freeze", False):
            self._ddp_params_and_buffers_to_ignore = [
                f"net.audio.vggish.{name}" for name, _ in audio.vggish.state_dict().items()
            ]

    @property
    def num_classes(self) -> int:
        return self.hparams.num_classes

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The net's outputs for a data batch (see the model's ``forward``)."""
        return self.net(batch["frames"], batch["audio"], batch["frame_valid"])

    def model_step(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        outputs = self.cached_forward(batch["frames"], batch["audio"], batch["frame_valid"])
        return outputs, self.criterion(outputs, batch)

    def cached_forward(self, frames: Tensor, audio: Tensor, frame_valid: Tensor) -> dict:
        """The net's forward, with the frozen encoders' outputs from the feature cache while
        fitting (training and validation; a test or a prediction sees each input once)."""
        encoded = None
        if self.feature_cache is not None and self.feature_cache.bound:
            encoded = self.feature_cache.outputs(
                self.net,
                rearrange(frames, "b t c h w -> (b t) c h w"),
                rearrange(audio, "b t one m f -> (b t) one m f"),
            )
        return self.net(frames, audio, frame_valid, encoded)

    def setup(self, stage: str) -> None:
        keep_freed_memory()  # again in the processes ddp_spawn starts (they unpickle the module)
        # ddp_spawn hands the module to its processes through shared memory, so without fresh
        # states every process, and the main one, would add into the same metric tensors: the
        # sums doubled alike (means were right by luck) and a test call started from the sums of
        # the one before.
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def on_fit_start(self) -> None:
        # After a resumed checkpoint's weights are in: the cache keys on the weights in use.
        if self.feature_cache is not None:
            self.feature_cache.bind(self.net)

    def on_fit_end(self) -> None:
        if self.feature_cache is not None:
            self.feature_cache.unbind()

    def on_train_start(self) -> None:
        self.scores.start_training(self.trainer)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        clips = len(batch["frames"])
        names = list(batch["name"])
        batch = frames_to_compute(batch, self.net, self.criterion, self.hparams.skip_unread_frames)
        outputs, losses = self.model_step(batch)
        check_training_loss(self.trainer, losses, names)  # all processes, before it is logged
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss",
                     batch_size=clips)  # fmt: skip
        if batch["mask_valid"].any():
            self.scores.update("train", outputs, batch)
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        scores = self.scores.train_scores(self.trainer)
        if scores:
            self.log_dict(scores, sync_dist=True)
        # Not for the loggers: for metrics.json, which ddp_spawn's main process writes without
        # the fit loop's count (it stays in the worker processes).
        self.log("epochs_trained", float(self.current_epoch + 1), logger=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.finiteness.stop_on_non_finite_batch(self.trainer, "val")
        scores = self.scores.val_scores(self.trainer)
        losses = self.scores.loss_scores("val")
        check_finite_scores(self.current_epoch, "val", scores | losses)
        # Every value is already over all processes; sync_dist only averages equal numbers.
        self.log_dict(scores, prog_bar=True, sync_dist=True)
        self.log_dict(losses, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_miou_best(scores[MONITOR])
            self.log("val/miou_best", self.val_miou_best.compute())

    def on_test_start(self) -> None:
        # Under ddp_spawn each test call starts its processes anew.
        self.scores.start_test(self.trainer.test_dataloaders)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.scores.test_condition(dataloader_idx)
        self.evaluation_step("test", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.finiteness.stop_on_non_finite_batch(self.trainer, "test")
        for prefix, scores in self.scores.test_scores(self.trainer):
            check_finite_scores(self.current_epoch, prefix, scores)
            self.log_dict(scores, sync_dist=True, add_dataloader_idx=False)

    def evaluation_step(self, stage: str, batch: dict, batch_idx: int) -> None:
        outputs, losses = self.model_step(batch)
        prefix = self.scores.prefix(stage)
        if not self.finiteness.batch_is_finite(self.trainer, prefix, batch, outputs, losses):
            return
        self.scores.update_losses(prefix, losses, len(batch["frames"]))
        self.scores.update(stage, outputs, batch)
        if self.scores.measures_audio_share(stage, batch, batch_idx, self.trainer):
            shifts = counterfactual_shifts(self.cached_forward, batch, outputs["pixel_feature"])
            self.audio_share[stage].update(*shifts)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        # ExactResume's hook ran first (callbacks' run before the module's) and put the random
        # state here; it keeps its place among the keys.
        exact_state = checkpoint.get("avsac_lit") or {}
        checkpoint["avsac_lit"] = {
            "version": suite_version(),  # named when a later version cannot load it
            "config": self.run_config,
            "class_names": getattr(datamodule, "class_names", None),
            **exact_state,
            "train_metric_sums": self.scores.train_sums(self._trainer, self.all_gather),
        }
        leave_out_built_encoders(self, checkpoint)
        check_weights_written(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints written before the best score was saved: start it from nothing.
        best = "val_miou_best.max_value"
        checkpoint["state_dict"].setdefault(best, torch.tensor(float("-inf")))
        saved = checkpoint.get("avsac_lit") or {}
        self.scores.resumed_train_sums = saved.get("train_metric_sums")
        # Here, not in a callback: Lightning calls this before the strict state-dict load.
        restore_built_encoders(self, checkpoint)
        source = self._trainer.ckpt_path if self._trainer is not None else None
        check_weights_fit(
            checkpoint["state_dict"],
            self.state_dict(),
            source or "(the one being loaded)",
            saved.get("version"),
        )

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        factor = warmup_factor(self.trainer.global_step, self.hparams.warmup_steps)
        with scaled_learning_rates(optimizer, factor):
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def configure_optimizers(self) -> dict:
        return optimizer_config(
            self.trainer.model.parameters(), self.optimizer_factory, self.scheduler_factory,
            self.hparams.scheduler_interval, monitor=MONITOR,
        )  # fmt: skip
