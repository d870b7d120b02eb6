"""Activation checkpointing: a layer's intermediates are recomputed in the backward pass instead
of kept, trading about one more forward of that layer for its memory.

Recomputation replays the same operations with the same random state (dropout masks included),
so outputs and gradients are those of the plain forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def run(function: Callable, *args, checkpointed: bool):
    """``function(*args)``, checkpointed when asked and a backward pass will need it."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)
