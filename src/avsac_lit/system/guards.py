"""The non-finite guards: a NaN or infinity in training, validation or testing stops the run, naming
the split, the epoch and the batch's clips, before it reaches the weights, a score or a checkpoint
(docs/bad_inputs.md).

Where each check runs follows Lightning's order: the training loss is checked inside the training
step (:func:`check_training_loss`), since every process must decide before it is logged; the
gradients by :class:`NonFiniteGuard`, a callback every run's assembly adds (a config group, which
``+debug=...`` empties, could drop it); the evaluation batches and scores by the module's steps
through :class:`EvalFiniteness`; the weights by the module's ``on_save_checkpoint``
(:func:`check_weights_written`), the one hook Lightning calls for every checkpoint (a callback's
is skipped for a weights-only one).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.optim import Optimizer

NON_FINITE_CAUSES = (
    "Check the weights (a damaged or diverged checkpoint: python -m avsac_lit.eval on another "
    "one), the clips' frames and audio (python -m avsac_lit.data.check), and the feature cache "
    "(model.feature_cache.enabled=false runs without it)."
)


class NonFiniteError(FloatingPointError):
    """A NaN or infinity in training, validation or testing: the run stops, naming the split, the
    epoch and the batch's clips."""


def non_finite_message(trainer: L.Trainer | None, what: str, clips: list) -> str:
    """Why training stopped at this step (``what``), on the batch of ``clips``, and where its last
    good state is."""
    epoch, step = (trainer.current_epoch, trainer.global_step) if trainer is not None else (0, 0)
    return (
        f"Stopped at epoch {epoch}, step {step}: {what}, on the batch of clips "
        f"{', '.join(map(str, clips)) or 'unknown'}. The weights were not updated and no "
        f"checkpoint was written from them; {last_good_checkpoint(trainer)}. Check those clips' "
        "frames, masks and audio (python -m avsac_lit.data.check), or lower model.optimizer.lr."
    )


def last_good_checkpoint(trainer: L.Trainer | None) -> str:
    callback = trainer.checkpoint_callback if trainer is not None else None
    last = getattr(callback, "last_model_path", "") or ""
    if last and Path(last).is_file():
        return f"the last good state is {last}"
    return "no checkpoint had been written yet"


def check_training_loss(trainer: L.Trainer, losses: dict[str, Tensor], clips: list) -> None:
    """Raises :class:`NonFiniteError` on every process if the loss is not finite on any: they
    decide together, so that under DDP none is left waiting for the others."""
    finite = bool(torch.isfinite(losses["loss"]).item())
    if not trainer.strategy.reduce_boolean_decision(finite, all=True):
        parts = ", ".join(f"{name} {value.item():.4g}" for name, value in losses.items())
        what = f"the training loss is not finite ({parts})"
        raise NonFiniteError(non_finite_message(trainer, what, clips))


def check_weights_written(checkpoint: dict) -> None:
    """Refuses a checkpoint whose weights (``net.*``, as written: an encoder left out is the one
    its config builds) are not all finite; only them: the best score starts at -inf before the
    first validation."""
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(
            f"Refusing to write a checkpoint at epoch {checkpoint.get('epoch')}, step "
            f"{checkpoint.get('global_step')}: {len(bad)} weight tensors are not finite "
            f"({bad[0]}, ...). "
            "The last checkpoint written is the last good state."
        )


def check_finite_scores(epoch: int, split: str, scores: dict[str, Tensor]) -> None:
    """Raises :class:`NonFiniteError` naming the split's epoch scores that are not finite."""
    bad = [name for name, value in scores.items() if not torch.isfinite(value).all()]
    if bad:
        raise NonFiniteError(
            f"Stopped in {split} at epoch {epoch}: {', '.join(bad)} over the "
            f"split is not finite (from every clip of it). No score was written. "
            f"{NON_FINITE_CAUSES}"
        )


class NonFiniteGuard(Callback):
    """Stops training before an optimiser step that a NaN or infinite gradient would make, naming
    the parameters and the batch's clips."""

    def __init__(self) -> None:
        self.clips: list = []

    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        self.clips = list(batch["name"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer: Optimizer) -> None:
        gradients = {n: p.grad for n, p in pl_module.named_parameters() if p.grad is not None}
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
        what = f"the gradient of {shown} is not finite"
        raise NonFiniteError(non_finite_message(trainer, what, self.clips))


class EvalFiniteness:
    """A validation or test batch's losses and logits must be finite: a NaN would otherwise turn
    the split's mean loss into NaN and its masks into background, and the run would end with a
    wrong score and status 0. One process stops at once. The processes of a distributed run may
    have different numbers of batches (the last one goes to one process), so they cannot decide
    together batch by batch: each notes its first non-finite batch and leaves it and later ones
    out of its scores, and all decide together at the epoch's end."""

    def __init__(self) -> None:
        # The first non-finite evaluation batch of this epoch, described.
        self.non_finite_batch: str | None = None

    def batch_is_finite(
        self, trainer: L.Trainer, split: str, batch: dict, outputs: dict, losses: dict
    ) -> bool:
        """Whether the batch counts (False from the first non-finite one of the epoch on);
        raises :class:`NonFiniteError` at once on a single process."""
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
                f"Stopped in {split} at epoch {trainer.current_epoch}: the outputs are not "
                f"finite on the batch of clips {clips} (losses: {parts}; logits {logits}). No "
                f"score was written from them. {NON_FINITE_CAUSES}"
            )
        if trainer.world_size == 1:
            self.stop_on_non_finite_batch(trainer, split)
        return False

    def stop_on_non_finite_batch(self, trainer: L.Trainer, split: str) -> None:
        """Raises on every process if any of them saw a non-finite batch this epoch."""
        message, self.non_finite_batch = self.non_finite_batch, None
        if trainer.strategy.reduce_boolean_decision(message is None, all=True):
            return
        raise NonFiniteError(
            message
            or f"Stopped in {split} at epoch {trainer.current_epoch}: another process of this "
            "run found outputs that are not finite; its error names the clips."
        )
