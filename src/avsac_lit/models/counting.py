"""Parameter counts, as every report of the suite gives them."""

from __future__ import annotations

from torch import nn


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """``{trainable, frozen, total}`` parameters of ``module``."""
    parameters = list(module.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    total = sum(p.numel() for p in parameters)
    return {"trainable": trainable, "frozen": total - trainable, "total": total}
