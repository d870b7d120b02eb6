"""Flattening the stride-8/16/32 visual levels into one token sequence, and back."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from avsac_lit.models.deformable_attention import reference_points_for
from avsac_lit.models.position_encoding import SinePositionalEncoding


class MultiScaleTokens(nn.Module):
    """Levels [N, C, h_l, w_l] -> tokens [N, L, C] with their positional encoding, plus the
    reference points and shapes the deformable attention needs.

    The positional encoding is the fixed sine encoding plus a learnable per-level embedding.
    """

    def __init__(self, *, dim: int = 256, levels: int = 3) -> None:
        super().__init__()
        self.position = SinePositionalEncoding(num_feats=dim // 2)
        self.level_embed = nn.Parameter(torch.empty(levels, dim))
        nn.init.normal_(self.level_embed)

    def forward(self, levels: list[Tensor]) -> dict:
        shapes = [(f.shape[-2], f.shape[-1]) for f in levels]
        batch = levels[0].shape[0]
        tokens, positions = [], []
        for index, feature in enumerate(levels):
            height, width = feature.shape[-2:]
            position = self.position(batch, height, width, device=feature.device)
            tokens.append(rearrange(feature, "n c h w -> n (h w) c"))
            positions.append(rearrange(position, "n c h w -> n (h w) c") + self.level_embed[index])
        return {
            "tokens": torch.cat(tokens, dim=1),  # [N, L, C]
            "pos": torch.cat(positions, dim=1),  # [N, L, C]
            "shapes": shapes,
            "reference_points": reference_points_for(shapes, batch, device=levels[0].device),
        }


def level_map(tokens: Tensor, shapes: list[tuple[int, int]], index: int) -> Tensor:
    """Level ``index`` of flattened tokens [N, L, C] as a map [N, C, h, w]."""
    start = sum(h * w for h, w in shapes[:index])
    height, width = shapes[index]
    return rearrange(tokens[:, start : start + height * width], "n (h w) c -> n c h w", h=height)
