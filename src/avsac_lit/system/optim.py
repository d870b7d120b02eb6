"""The optimisation of an AVS system: the optimiser and scheduler built from the config's partials,
and the learning-rate warm-up on top of the scheduler."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.optim import Optimizer


def optimizer_config(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: Callable[[Iterable[Tensor]], Optimizer],
    scheduler: Callable[[Optimizer], torch.optim.lr_scheduler.LRScheduler] | None,
    interval: str,
    monitor: str,
) -> dict:
    """What ``configure_optimizers`` returns: ``optimizer`` called with the trainable
    parameters only (frozen encoders take no optimiser state), and ``scheduler``, if any, called
    with it, stepping every ``interval`` (``epoch`` or ``step``) and reading ``monitor``."""
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        raise ValueError("Nothing to train: every parameter of the model is frozen.")
    built = optimizer(params=trainable)
    if scheduler is None:
        return {"optimizer": built}
    return {
        "optimizer": built,
        "lr_scheduler": {
            "scheduler": scheduler(optimizer=built),
            "interval": interval,
            "monitor": monitor,
        },
    }


def warmup_factor(global_step: int, warmup_steps: int) -> float:
    """The share of the scheduled learning rate the optimiser step after ``global_step`` steps
    uses: a linear ramp from 1/warmup_steps to 1 (1 throughout when ``warmup_steps`` is 0)."""
    return min(1.0, (global_step + 1) / warmup_steps) if warmup_steps else 1.0


@contextmanager
def scaled_learning_rates(optimizer: Optimizer, factor: float) -> Iterator[None]:
    """The optimiser's rates times ``factor`` inside the block, and what the scheduler set again
    after it: the scheduler keeps computing from its own rates."""
    if factor == 1.0:
        yield
        return
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
        group["lr"] = lr * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr
