"""The system: an AVS model trained with its criterion and scored with the AVSBench protocol."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MeanMetric, Metric, MetricCollection

from avsac_lit.checkpoints.versions import check_weights_fit, suite_version
from avsac_lit.data.conditions import condition_of, metric_prefix
from avsac_lit.metrics import (
    AudioShare,
    AVSSFScore,
    AVSSMeanIoU,
    PooledFScore,
    ProtocolFScore,
    ProtocolJaccard,
    counterfactual_shifts,
)
from avsac_lit.models.losses import AVSCriterion
from avsac_lit.models.weights import floating_dtype, state_digest
from avsac_lit.system.feature_cache import EncoderFeatureCache
from avsac_lit.system.memory import keep_freed_memory

log = logging.getLogger(__name__)

MONITOR = "val/miou"  # checkpoint selection, as AVSegFormer: best validation mIoU


def random_state() -> dict:
    """The random generators a run draws from: Python's, NumPy's, torch's (CPU and CUDA), in
    plain types, so that checkpoints still load with ``torch.load(weights_only=True)``."""
    # The legacy global NumPy generator is the one seed_everything seeds and libraries draw from.
    name, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_random_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    keys = np.asarray(keys, dtype=np.uint32)
    np.random.set_state((name, keys, position, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def frames_independent(net: nn.Module) -> bool:
    """Whether a frame's outputs depend on its own inputs only: the model says it treats frames
    independently, and no BatchNorm in train mode normalises with statistics over the batch."""
    return getattr(net, "frames_independent", False) and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules()
    )


NON_FINITE_CAUSES = (
    "Check the weights (a damaged or diverged checkpoint: python -m avsac_lit.eval on another "
    "one), the clips' frames and audio (python -m avsac_lit.data.check), and the feature cache "
    "(model.feature_cache.enabled=false runs without it)."
)


class NonFiniteError(FloatingPointError):
    """A NaN or infinity in training, validation or testing: the run stops, naming the split, the
    epoch and the batch's clips."""


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
    ``f_pooled`` for S4/MS3); loss parts are ``{stage}/loss``, ``{stage}/seg``, ``{stage}/sync``
    (and ``mix`` for AVSegFormer). Training scores the annotated frames only, like the loss.
    ``val/miou_best`` tracks the best validation mIoU; ``val/audio_share`` and
    ``test/audio_share`` the audio share of the final feature. A test loader with counterfactual
    audio (``AVSDataModule.test_dataloader(audio="shuffled")``) logs under that condition's
    prefix (``test_shuffled/``) instead of ``test/``.
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
        self.eval_losses: dict[str, MeanMetric] = {}  # "{prefix}/{part}", made as they come
        self.val_miou_best = MaxMetric()
        # In the checkpoint, so that a resumed run (and a sweeper reading val/miou_best) keeps the
        # best score reached before the interruption.
        self.val_miou_best.persistent(True)
        self.resumed_random_state: dict | None = None
        self.resumed_train_metric_sums: list[dict[str, Tensor]] | None = None
        # What the encoders are when built from the config (a weight file, a hub, or the fixed
        # init): a checkpoint leaves out an encoder that still matches, and rebuilds it on loading.
        # Compared in the dtype they were built in, so that a float64 copy (64-true) still
        # matches and is left out.
        self.encoder_dtypes = {k: floating_dtype(m) for k, m in self.encoders().items()}
        self.encoder_digests = {k: state_digest(m) for k, m in self.encoders().items()}
        # The audio conditions of the running test call, one per loader, and the condition of
        # the batch at hand (on_test_start, test_step).
        self.test_prefixes, self.test_prefix = ["test"], "test"
        self.test_metrics: dict[str, MetricCollection] = {}
        keep_freed_memory()  # every command builds a module: train, eval, predict, bench
        # The first non-finite evaluation batch of this epoch, described (batch_is_finite).
        self.non_finite_batch: str | None = None
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

    def stage_metrics(self, stage: str) -> MetricCollection:
        return self.metrics[f"{stage}_metrics"]

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

    def on_fit_start(self) -> None:
        # After a resumed checkpoint's weights are in: the cache keys on the weights in use.
        if self.feature_cache is not None:
            self.feature_cache.bind(self.net)

    def on_fit_end(self) -> None:
        if self.feature_cache is not None:
            self.feature_cache.unbind()

    def frames_to_compute(self, batch: dict) -> dict:
        """The training batch with only the frames something reads (see ``skip_unread_frames``):
        clips keep their layout when each has as many labelled frames (S4: [B, 1]), otherwise
        every labelled frame becomes a one-frame clip."""
        keep = batch["mask_valid"]  # [B, T]
        if (
            not self.hparams.skip_unread_frames
            or self.criterion.reads_unlabelled_frames
            or not frames_independent(self.net)
            or keep.all()
            or not keep.any()
        ):
            return batch
        counts = keep.sum(dim=1).tolist()
        uniform = all(c == counts[0] for c in counts)
        clips, per_clip = (len(counts), counts[0]) if uniform else (sum(counts), 1)

        def select(value):
            if isinstance(value, Tensor) and value.shape[:2] == keep.shape:
                return value[keep].reshape(clips, per_clip, *value.shape[2:])  # [B', T', ...]
            if not uniform and isinstance(value, list | tuple) and len(value) == len(counts):
                return [item for item, c in zip(value, counts, strict=True) for _ in range(c)]
            return value

        return {key: select(value) for key, value in batch.items()}

    def scored_frames(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        """[B, T] bool: the frames a stage's metrics see."""
        frames = batch["mask_valid"]
        if stage != "train" and self.num_classes > 1 and self.hparams.eval_padding_frames:
            frames = frames | ~batch["frame_valid"]
        return frames

    def update_metrics(self, stage: str, outputs: dict[str, Tensor], batch: dict) -> None:
        frames = self.scored_frames(batch, stage)
        logits = outputs["logits"][frames].detach()  # [n, K, H, W]
        target = batch["masks"][frames]  # [n, H, W]
        if self.num_classes == 1:
            logits = logits[:, 0]
        if stage == "test":  # the metrics of the batch's audio condition
            metrics = self.test_metrics[self.test_prefix]
        else:
            metrics = self.stage_metrics(stage)
        metrics.update(logits.float(), target)

    def eval_loss_scores(self, prefix: str) -> dict[str, Tensor]:
        """The epoch's mean losses under ``prefix``, over every process's clips, then reset.

        Lightning's own epoch means would average the processes' means, which weighs a clip of a
        process with fewer batches more than one of a process with more.
        """
        scores = {}
        for key in sorted(k for k in self.eval_losses if k.startswith(prefix + "/")):
            scores[key] = self.eval_losses[key].compute()
            self.eval_losses[key].reset()
        return scores

    def setup(self, stage: str) -> None:
        keep_freed_memory()  # again in the processes ddp_spawn starts (they unpickle the module)
        # ddp_spawn hands the module to its processes through shared memory, so without fresh
        # states every process, and the main one, would add into the same metric tensors: the
        # sums doubled alike (means were right by luck) and a test call started from the sums of
        # the one before.
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def on_train_start(self) -> None:
        # The sanity check's batches must not count towards the first epoch.
        self.stage_metrics("val").reset()
        self.audio_share["val"].reset()
        self.restore_train_metric_sums(self.resumed_train_metric_sums)
        self.resumed_train_metric_sums = None

    def on_train_epoch_start(self) -> None:
        self.restore_random_state()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # A run resumed mid-epoch: Lightning continues the epoch without starting it again.
        self.restore_random_state()

    def restore_random_state(self) -> None:
        """A resumed run draws its shuffles, dropout masks and augmentations from the random state
        the uninterrupted run had when it wrote the checkpoint, so it continues identically. At
        the next epoch's start (before its loader draws a seed) or, resumed mid-epoch, before the
        next batch."""
        if self.resumed_random_state is not None:
            set_random_state(self.resumed_random_state)
            self.resumed_random_state = None

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        clips = len(batch["frames"])
        self.batch_clips = list(batch["name"])
        batch = self.frames_to_compute(batch)
        outputs, losses = self.model_step(batch)
        # Every process decides together, so that under DDP none is left waiting for the others.
        finite = bool(torch.isfinite(losses["loss"]).item())
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            parts = ", ".join(f"{name} {value.item():.4g}" for name, value in losses.items())
            raise NonFiniteError(
                self.non_finite_message(f"the training loss is not finite ({parts})")
            )
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss",
                     batch_size=clips)  # fmt: skip
        if batch["mask_valid"].any():
            self.update_metrics("train", outputs, batch)
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        metrics = self.stage_metrics("train")
        # A run resumed from an end-of-validation checkpoint closes that epoch without batches.
        updated = any(metric.update_called for metric in metrics.values())
        if self.trainer.strategy.reduce_boolean_decision(updated, all=False):
            self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()
        # Not for the loggers: for metrics.json, which ddp_spawn's main process writes without
        # the fit loop's count (it stays in the worker processes).
        self.log("epochs_trained", float(self.current_epoch + 1), logger=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.stop_on_non_finite_batch("val")
        scores = self.stage_metrics("val").compute() | self.compute_audio_share("val")
        self.stage_metrics("val").reset()
        losses = self.eval_loss_scores("val")
        self.check_finite_scores("val", scores | losses)
        # Every value is already over all processes; sync_dist only averages equal numbers.
        self.log_dict(scores, prog_bar=True, sync_dist=True)
        self.log_dict(losses, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_miou_best(scores[MONITOR])
            self.log("val/miou_best", self.val_miou_best.compute())

    def on_test_start(self) -> None:
        # One test call scores every audio condition, one loader each (test_conditions): under
        # ddp_spawn each call starts its processes anew.
        loaders = self.trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, list) else [loaders]
        self.test_prefixes = [metric_prefix(condition_of(loader.dataset)) for loader in loaders]
        template = self.stage_metrics("test")
        self.test_metrics = {
            prefix: template if index == 0 else template.clone()
            for index, prefix in enumerate(self.test_prefixes)
        }

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_prefix = self.test_prefixes[dataloader_idx]
        self.evaluation_step("test", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.stop_on_non_finite_batch("test")
        for prefix in self.test_prefixes:  # in the same order on every process
            metrics = self.test_metrics[prefix]
            scores = metrics.compute()
            metrics.reset()
            if prefix == "test":
                scores |= self.compute_audio_share("test")
            scores = {prefix + k.removeprefix("test"): v for k, v in scores.items()}
            scores |= self.eval_loss_scores(prefix)
            self.check_finite_scores(prefix, scores)
            self.log_dict(scores, sync_dist=True, add_dataloader_idx=False)
        self.test_metrics = {}

    def evaluation_step(self, stage: str, batch: dict, batch_idx: int) -> None:
        outputs, losses = self.model_step(batch)
        prefix = self.test_prefix if stage == "test" else stage
        if not self.batch_is_finite(prefix, batch, outputs, losses):
            return
        for name, value in losses.items():
            if f"{prefix}/{name}" not in self.eval_losses:
                self.eval_losses[f"{prefix}/{name}"] = MeanMetric().to(value.device)
            self.eval_losses[f"{prefix}/{name}"].update(value.detach(), len(batch["frames"]))
        self.update_metrics(stage, outputs, batch)
        if self.measures_audio_share(stage, batch, batch_idx):
            shifts = counterfactual_shifts(self.cached_forward, batch, outputs["pixel_feature"])
            self.audio_share[stage].update(*shifts)

    def measures_audio_share(self, stage: str, batch: dict, batch_idx: int) -> bool:
        limit = self.hparams.audio_share_batches
        # The batch's position on a single process (EvalSampler deals batches out in turn), so
        # several processes measure the same batches as one.
        position = batch_idx * self.trainer.world_size + self.trainer.global_rank
        return (
            (limit is None or position < limit)
            and len(batch["frames"]) > 1  # a lone last clip has no partner to swap with
            # Under counterfactual test audio the "true" input is already swapped.
            and (stage == "val" or self.test_prefix == "test")
        )

    def compute_audio_share(self, stage: str) -> dict[str, Tensor]:
        metric = self.audio_share[stage]
        # Decided together: computing synchronises the processes, and one may have no batch
        # with a partner clip.
        if not self.trainer.strategy.reduce_boolean_decision(metric.update_called, all=False):
            return {}
        share = metric.compute()
        metric.reset()
        if not torch.isfinite(share):
            # Neither input moved the feature at all: the share is undefined, not a number.
            log.warning("The %s audio share is undefined (no input changed the final feature): "
                        "not logged.", stage)  # fmt: skip
            return {}
        return {f"{stage}/audio_share": share}

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        gradients = {n: p.grad for n, p in self.named_parameters() if p.grad is not None}
        if not gradients:
            return
        # One check, one synchronisation per step; the names only when it fails. A norm is NaN or
        # infinite when any element is (one fused kernel over all gradients, where a check per
        # tensor cost two small ops each); it can also overflow on huge finite values, so the
        # exact check below decides.
        if torch.stack(torch._foreach_norm(list(gradients.values()))).isfinite().all():
            return
        bad = [name for name, gradient in gradients.items() if not gradient.isfinite().all()]
        if not bad:
            return
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(self.non_finite_message(f"the gradient of {shown} is not finite"))

    def non_finite_message(self, what: str) -> str:
        clips = ", ".join(map(str, getattr(self, "batch_clips", []))) or "unknown"
        return (
            f"Stopped at epoch {self.current_epoch}, step {self.global_step}: {what}, on the "
            f"batch of clips {clips}. The weights were not updated and no checkpoint was written "
            f"from them; {self.last_good_checkpoint()}. Check those clips' frames, masks and "
            "audio (python -m avsac_lit.data.check), or lower model.optimizer.lr."
        )

    def last_good_checkpoint(self) -> str:
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        last = getattr(callback, "last_model_path", "") or ""
        if last and Path(last).is_file():
            return f"the last good state is {last}"
        return "no checkpoint had been written yet"

    def batch_is_finite(self, split: str, batch: dict, outputs: dict, losses: dict) -> bool:
        """A validation or test batch's losses and logits must be finite: a NaN would otherwise
        turn the split's mean loss into NaN and its masks into background, and the run would end
        with a wrong score and status 0. One process stops at once. The processes of a
        distributed run may have different numbers of batches (the last one goes to one
        process), so they cannot decide together batch by batch: each notes its first
        non-finite batch and leaves it and later ones out of its scores (returns False), and all
        decide together at the epoch's end (:meth:`stop_on_non_finite_batch`)."""
        finite = bool(torch.isfinite(losses["loss"]).item()) and bool(
            torch.isfinite(outputs["logits"]).all().item()
        )
        if finite and self.non_finite_batch is None:
            return True
        if self.non_finite_batch is None:
            parts = ", ".join(f"{name} {value.item():.4g}" for name, value in losses.items())
            logits = "finite" if torch.isfinite(outputs["logits"]).all() else "not finite"
            clips = ", ".join(map(str, batch["name"]))
            self.non_finite_batch = (
                f"Stopped in {split} at epoch {self.current_epoch}: the outputs are not finite "
                f"on the batch of clips {clips} (losses: {parts}; logits {logits}). No score was "
                f"written from them. {NON_FINITE_CAUSES}"
            )
        if self.trainer.world_size == 1:
            self.stop_on_non_finite_batch(split)
        return False

    def stop_on_non_finite_batch(self, split: str) -> None:
        """Raises on every process if any of them saw a non-finite batch this epoch."""
        message, self.non_finite_batch = self.non_finite_batch, None
        if self.trainer.strategy.reduce_boolean_decision(message is None, all=True):
            return
        raise NonFiniteError(
            message
            or f"Stopped in {split} at epoch {self.current_epoch}: another process of this run "
            "found outputs that are not finite; its error names the clips."
        )

    def check_finite_scores(self, split: str, scores: dict[str, Tensor]) -> None:
        bad = [name for name, value in scores.items() if not torch.isfinite(value).all()]
        if bad:
            raise NonFiniteError(
                f"Stopped in {split} at epoch {self.current_epoch}: {', '.join(bad)} over the "
                f"split is not finite (from every clip of it). No score was written. "
                f"{NON_FINITE_CAUSES}"
            )

    def encoders(self) -> dict[str, nn.Module]:
        """The pretrained encoders by state-dict prefix: ``net.visual`` and ``net.audio.vggish``."""
        found = {"net.visual": getattr(self.net, "visual", None)}
        found["net.audio.vggish"] = getattr(getattr(self.net, "audio", None), "vggish", None)
        return {prefix: module for prefix, module in found.items() if module is not None}

    def leave_out_built_encoders(self, checkpoint: dict) -> None:
        """Remove from the checkpoint the encoders that are still what their config builds,
        recording their digests (``avsac_lit.rebuilt_encoders``): most of a checkpoint's bytes
        otherwise (the frozen VGGish alone is 97% of the demo's)."""
        rebuilt = {}
        for prefix, module in self.encoders().items():
            digest = state_digest(module, self.encoder_dtypes.get(prefix))
            if digest == self.encoder_digests.get(prefix):
                state_dict = checkpoint["state_dict"]
                for key in [k for k in state_dict if k.startswith(prefix + ".")]:
                    del state_dict[key]
                rebuilt[prefix] = digest
        checkpoint["avsac_lit"]["rebuilt_encoders"] = rebuilt

    def restore_built_encoders(self, checkpoint: dict) -> None:
        """Put back the encoders a checkpoint left out, from this module's, which its config
        built, after checking they are the same tensors."""
        rebuilt = (checkpoint.get("avsac_lit") or {}).get("rebuilt_encoders") or {}
        encoders = self.encoders()
        for prefix, digest in rebuilt.items():
            built = encoders.get(prefix)
            if built is None or state_digest(built, self.encoder_dtypes.get(prefix)) != digest:
                raise ValueError(
                    f"The checkpoint does not store {prefix} (its weights come from the run's "
                    "config: a weight file, timm's hub or the fixed random init), and the one "
                    "built here is not the one it was trained with (another weight file, or "
                    f"another version of it; expected sha256 {digest[:16]}...). Use the weight "
                    "files of the training run, or a self-contained checkpoint written where "
                    "they are: python -m avsac_lit.export CKPT OUTPUT."
                )
            for name, tensor in encoders[prefix].state_dict().items():
                checkpoint["state_dict"][f"{prefix}.{name}"] = tensor
        if "avsac_lit" in checkpoint:
            checkpoint["avsac_lit"]["rebuilt_encoders"] = {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        checkpoint["avsac_lit"] = {
            "version": suite_version(),  # named when a later version cannot load it
            "config": self.run_config,
            "class_names": getattr(datamodule, "class_names", None),
            "random_state": random_state(),
            "train_metric_sums": self.train_metric_sums(),
        }
        self.leave_out_built_encoders(checkpoint)
        # The weights written (an encoder left out is the one its config builds), and only them:
        # the best score starts at -inf before the first validation.
        weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteError(
                f"Refusing to write a checkpoint at epoch {checkpoint.get('epoch')}, step "
                f"{checkpoint.get('global_step')}: {len(bad)} weight tensors are not finite "
                f"({bad[0]}, ...). "
                "The last checkpoint written is the last good state."
            )

    def train_metric_sums(self) -> list[dict[str, Tensor]]:
        """The running sums of the epoch's training metrics, one dict per process (zeros at an
        epoch's end), so that an epoch resumed after a mid-epoch checkpoint ends with the
        metrics of the uninterrupted epoch. Every process calls this as the checkpoint is
        dumped (Lightning dumps it on all of them), and the sums are gathered."""
        metrics = self.stage_metrics("train")
        metrics.persistent(True)
        try:
            sums = {name: value.detach().clone() for name, value in metrics.state_dict().items()}
        finally:
            metrics.persistent(False)
        if self._trainer is None or self.trainer.world_size == 1:
            return [sums]
        gathered = {name: self.all_gather(value) for name, value in sums.items()}  # [P, ...]
        return [
            {n: v[rank] for n, v in gathered.items()} for rank in range(self.trainer.world_size)
        ]

    def restore_train_metric_sums(self, per_process: list[dict[str, Tensor]] | None) -> None:
        """This process's running sums of :meth:`train_metric_sums`. With another number of
        processes than the checkpoint's, the first takes their total (sums add over processes)."""
        if not per_process:
            return
        processes, rank = self.trainer.world_size, self.trainer.global_rank
        if len(per_process) == processes:
            mine = per_process[rank]
        else:
            mine = {n: sum(p[n] for p in per_process) for n in per_process[0]}
            if rank != 0:
                mine = {n: v.zero_() for n, v in mine.items()}
        metrics = self.stage_metrics("train")
        metrics.persistent(True)
        try:
            metrics.load_state_dict(mine, strict=False)
        finally:
            metrics.persistent(False)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints written before the best score was saved: start it from nothing.
        best = "val_miou_best.max_value"
        checkpoint["state_dict"].setdefault(best, torch.tensor(float("-inf")))
        saved = checkpoint.get("avsac_lit") or {}
        self.resumed_random_state = saved.get("random_state")
        self.resumed_train_metric_sums = saved.get("train_metric_sums")
        self.restore_built_encoders(checkpoint)
        source = self._trainer.ckpt_path if self._trainer is not None else None
        check_weights_fit(
            checkpoint["state_dict"],
            self.state_dict(),
            source or "(the one being loaded)",
            saved.get("version"),
        )

    def warmup_factor(self) -> float:
        """The share of the scheduled learning rate the next optimiser step uses."""
        warmup = self.hparams.warmup_steps
        return min(1.0, (self.trainer.global_step + 1) / warmup) if warmup else 1.0

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        factor = self.warmup_factor()
        if factor == 1.0:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr * factor
        try:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:  # the scheduler keeps computing from its own rates
            for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
                group["lr"] = lr

    def configure_optimizers(self) -> dict:
        trainable = [p for p in self.trainer.model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("Nothing to train: every parameter of the model is frozen.")
        optimizer = self.optimizer_factory(params=trainable)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler_factory(optimizer=optimizer),
                "interval": self.hparams.scheduler_interval,
                "monitor": MONITOR,
            },
        }
