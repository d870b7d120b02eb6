"""From tokens to masks: input projections, the stride-4 mask feature, AVSegFormer's mixer, and
the prediction head shared by AVSegFormer and AVSAC (Eq. 1 of the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def conv_gn(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(32, out_channels),
    )


class InputProjections(nn.Module):
    """1x1 conv + GroupNorm(32) taking each backbone level to ``dim`` channels."""

    def __init__(self, *, in_channels: list[int], dim: int = 256) -> None:
        super().__init__()
        self.projections = nn.ModuleList(conv_gn(c, dim) for c in in_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [project(f) for project, f in zip(self.projections, features, strict=True)]


class MaskFeature(nn.Module):
    """Stride-4 per-pixel feature: the stride-8 tokens upsampled, plus a lateral of the stride-4
    backbone level, through a 3x3 conv + GroupNorm + ReLU.

    Every conv keeps its bias, as in AVSegFormer: GroupNorm normalises groups of 8 channels, so a
    per-channel bias before it does not cancel (the published weights carry one)."""

    def __init__(self, *, dim: int = 256) -> None:
        super().__init__()
        self.lateral = conv_gn(dim, dim)
        self.out_conv = nn.Sequential(*conv_gn(dim, dim, kernel_size=3), nn.ReLU(inplace=True))

    def forward(self, stride8: Tensor, stride4: Tensor) -> Tensor:
        """stride8 [N, dim, H/8, W/8], stride4 (projected backbone level) [N, dim, H/4, W/4]."""
        upsampled = F.interpolate(
            stride8, size=stride4.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.out_conv(upsampled + self.lateral(stride4))


class CrossModalMixer(nn.Module):
    """AVSegFormer's audio-visual mixer: audio-queried channel attention that rescales the mask
    feature's channels by a sigmoid gate."""

    def __init__(self, *, dim: int = 256, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.query = nn.Linear(dim, dim, bias=False)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def channel_logits(self, tokens: Tensor, audio: Tensor) -> Tensor:
        """tokens [N, L, C], audio [N, A, C] -> [N, C]: each audio query attends over the tokens,
        the attended values are averaged over the queries, and a linear layer maps them to one
        logit per channel (the gate before its sigmoid)."""
        query = rearrange(self.query(audio), "n a (m d) -> n m a d", m=self.heads)
        key, value = rearrange(
            self.key_value(tokens), "n l (two m d) -> two n m l d", two=2, m=self.heads
        )
        weights = (query @ key.transpose(-1, -2) * self.scale).softmax(dim=-1)  # [N, m, A, L]
        mixed = rearrange(weights @ value, "n m a d -> n a (m d)").mean(dim=1)  # [N, C]
        return self.proj(mixed)

    def forward(self, feature: Tensor, audio: Tensor) -> Tensor:
        """feature [N, C, H, W], audio [N, A, C] -> gated feature [N, C, H, W]."""
        tokens = rearrange(feature, "n c h w -> n (h w) c")
        gate = self.channel_logits(tokens, audio).sigmoid()
        return feature * gate[:, :, None, None]


class PredictionHead(nn.Module):
    """``M = Linear(F + MLP(F . Q))``: per-pixel products with the queries, an MLP over them back to
    ``dim`` channels, a residual, and a conv stack up to full resolution.

    Args:
        num_queries: queries whose products form the MLP's input channels (300).
        dim: feature width (256).
        mlp_hidden: hidden width of the 1x1-conv MLP (2048 in AVSegFormer).
        mask_channels: widths of the two 3x3 convs that upsample to the mask (128 and 32 in
            AVSegFormer); the second runs at full resolution, the costliest layer of a small
            model.
        num_classes: output channels (1 for S4/MS3, 71 for AVSS).
    """

    def __init__(
        self,
        *,
        num_queries: int = 300,
        dim: int = 256,
        mlp_hidden: int = 2048,
        num_classes: int = 1,
        mask_channels: tuple[int, int] = (128, 32),
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(num_queries, mlp_hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mlp_hidden, mlp_hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mlp_hidden, dim, 1),
        )
        self.to_mask = nn.Sequential(
            nn.Conv2d(dim, mask_channels[0], 3, padding=1),
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False),
            nn.Conv2d(mask_channels[0], mask_channels[1], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mask_channels[1], num_classes, 1, bias=False),
        )

    def fuse(self, feature: Tensor, queries: Tensor) -> Tensor:
        """``F + MLP(F . Q)``, the final per-pixel feature: feature [N, C, H/4, W/4], queries
        [N, Q, C] -> [N, C, H/4, W/4]. The audio share (docs/metrics.md) is measured on it."""
        products = torch.einsum("nqc,nchw->nqhw", queries, feature)  # [N, Q, H/4, W/4]
        return feature + self.mlp(products)

    def forward(self, feature: Tensor, queries: Tensor) -> Tensor:
        """feature [N, C, H/4, W/4], queries [N, Q, C] -> mask logits [N, classes, H, W]."""
        return self.to_mask(self.fuse(feature, queries))
