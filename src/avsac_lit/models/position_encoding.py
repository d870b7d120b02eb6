"""Sine positional encoding as AVSegFormer uses it (mmdet's, ``normalize=False``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SinePositionalEncoding(nn.Module):
    """Fixed 2-D sine/cosine encoding of pixel positions.

    Row and column indices are counted from 1 and not normalised (mmdet's default, which AVSegFormer
    uses, unlike Deformable DETR's normalised variant). The output stacks the ``num_feats`` row
    features before the ``num_feats`` column features, each interleaving sin and cos.

    Args:
        num_feats: features per axis; the encoding has ``2 * num_feats`` channels.
        temperature: the wavelength base.
    """

    def __init__(self, *, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(
        self, batch: int, height: int, width: int, device: torch.device | None = None
    ) -> Tensor:
        """Encoding [batch, 2 * num_feats, height, width]."""
        rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        columns = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y, x = torch.meshgrid(rows, columns, indexing="ij")  # [H, W] each
        index = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        exponent = 2 * torch.div(index, 2, rounding_mode="floor") / self.num_feats
        wavelengths = self.temperature**exponent

        def encode(position: Tensor) -> Tensor:
            angles = position[..., None] / wavelengths  # [H, W, num_feats]
            sin_cos = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1)
            return sin_cos.flatten(-2)

        encoding = torch.cat((encode(y), encode(x)), dim=-1).permute(2, 0, 1)  # [2F, H, W]
        return encoding[None].expand(batch, -1, -1, -1)
