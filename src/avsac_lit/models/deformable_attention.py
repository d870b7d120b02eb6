"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, with no compiled extension.

The reference implementations ship a CUDA kernel and fall back to a ``grid_sample`` core; this is
that core, written for every device. Sampling is bilinear with zero padding and
``align_corners=False``: a location (x, y) in [0, 1] maps to pixel (x W - 0.5, y H - 0.5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def multi_scale_deformable_sampling(
    value: Tensor, spatial_shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """Attention-weighted sum of bilinear samples from several feature levels.

    Args:
        value: [B, sum(H_l W_l), heads, head_dim] per-level values, flattened and concatenated.
        spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.
        locations: [B, Q, heads, levels, points, 2] sampling points, (x, y) in [0, 1].
        weights: [B, Q, heads, levels, points] attention weights.

    Returns:
        [B, Q, heads * head_dim].
    """
    batch, _, heads, _ = value.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * locations - 1  # grid_sample's [-1, 1] coordinates
    samples = []
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = rearrange(per_level[level], "b (h w) m d -> (b m) d h w", h=height, w=width)
        grid = rearrange(grids[:, :, :, level], "b q m p xy -> (b m) q p xy")
        samples.append(
            F.grid_sample(
                level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # [(B heads), head_dim, Q, points]
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # [(B heads), head_dim, Q, levels * points]
    weights = rearrange(weights, "b q m l p -> (b m) 1 q (l p)")
    output = (stacked * weights).sum(-1)  # [(B heads), head_dim, Q]
    return rearrange(output, "(b m) d q -> b q (m d)", b=batch, m=heads)


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``points`` learned locations around its reference point per level.

    Args:
        dim: model width.
        levels: number of feature levels.
        heads: attention heads.
        points: sampling points per head and level.
    """

    def __init__(self, *, dim: int = 256, levels: int = 3, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Deformable DETR's initialisation: head h starts sampling along direction 2 pi h / heads,
        # point k at k + 1 pixels away, with uniform attention.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        grid = directions[:, None, None, :].repeat(1, self.levels, self.points, 1)
        grid *= torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """
        Args:
            query: [B, Q, dim] (positional encoding already added).
            reference_points: [B, Q, levels, 2], (x, y) in [0, 1].
            value: [B, sum(H_l W_l), dim].
            spatial_shapes: (H_l, W_l) per level.

        Returns:
            [B, Q, dim].
        """
        batch, queries, _ = query.shape
        value = self.value_proj(value).view(batch, value.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(
            batch, queries, self.heads, self.levels, self.points, 2
        )
        weights = self.attention_weights(query).view(batch, queries, self.heads, -1).softmax(-1)
        weights = weights.view(batch, queries, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to get [0, 1] units.
        normaliser = torch.tensor(
            [(w, h) for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normaliser[None, None, None, :, None, :]
        )
        output = multi_scale_deformable_sampling(value, spatial_shapes, locations, weights)
        return self.output_proj(output)


def reference_points_for(spatial_shapes: list[tuple[int, int]], batch: int, device=None) -> Tensor:
    """Pixel centres of every level as reference points: [B, sum(H_l W_l), levels, 2] in [0, 1]."""
    centres = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))
    points = torch.cat(centres)  # [L, 2]
    return points[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)
