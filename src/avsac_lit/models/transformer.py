"""AVSegFormer's transformer: a deformable encoder over the visual levels and a query decoder.

Both are post-norm with GELU FFNs of width 2048 and dropout 0.1, as in AVSegFormer. The decoder's
cross-attention is dense (plain multi-head attention over every encoder token, no positional
encoding), also as in AVSegFormer.
"""

from __future__ import annotations

from torch import Tensor, nn

from avsac_lit.models.deformable_attention import MultiScaleDeformableAttention


class FeedForward(nn.Module):
    """Post-norm residual FFN: ``norm(x + dropout(W2 dropout(gelu(W1 x))))``."""

    def __init__(self, *, dim: int = 256, hidden_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


class DeformableEncoderLayer(nn.Module):
    """Multi-scale deformable self-attention over all visual tokens, then an FFN."""

    def __init__(
        self, *, dim: int = 256, levels: int = 3, heads: int = 8, points: int = 4,
        hidden_dim: int = 2048, dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            dim=dim, levels=levels, heads=heads, points=points
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, hidden_dim=hidden_dim, dropout=dropout)

    def forward(
        self, tokens: Tensor, pos: Tensor, reference_points: Tensor, shapes: list[tuple[int, int]]
    ) -> Tensor:
        attended = self.self_attn(tokens + pos, reference_points, tokens, shapes)
        return self.ffn(self.norm(tokens + self.dropout(attended)))


class QueryDecoderLayer(nn.Module):
    """Self-attention among queries, dense cross-attention to the visual tokens, FFN."""

    def __init__(
        self, *, dim: int = 256, heads: int = 8, hidden_dim: int = 2048, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.ffn = FeedForward(dim=dim, hidden_dim=hidden_dim, dropout=dropout)

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        attended = self.self_attn(queries, queries, queries)[0]
        queries = self.norms[0](queries + self.dropout(attended))
        attended = self.cross_attn(queries, memory, memory)[0]
        queries = self.norms[1](queries + self.dropout(attended))
        return self.ffn(queries)
