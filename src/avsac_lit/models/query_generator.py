"""AVSegFormer's audio query generator: learnable queries that read the audio feature."""

from __future__ import annotations

from torch import Tensor, nn


class QueryGeneratorLayer(nn.Module):
    """Post-norm self-attention, cross-attention to the audio tokens, FFN (GELU)."""

    def __init__(self, *, dim: int, heads: int, hidden_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, queries: Tensor, audio: Tensor) -> Tensor:
        queries = self.norms[0](queries + self.self_attn(queries, queries, queries)[0])
        queries = self.norms[1](queries + self.cross_attn(queries, audio, audio)[0])
        return self.norms[2](queries + self.ffn(queries))


class AudioQueryGenerator(nn.Module):
    """Turns the audio feature into ``num_queries`` audio-conditioned queries.

    With a single audio token the cross-attention's softmax is 1, so every query receives the same
    projected audio vector; the self-attention then mixes it differently per query.

    Args:
        num_layers: generator layers (6).
        num_queries: number of queries (300).
        dim: width (256).
        heads: attention heads (8).
        hidden_dim: FFN width (1024).
    """

    def __init__(
        self,
        *,
        num_layers: int = 6,
        num_queries: int = 300,
        dim: int = 256,
        heads: int = 8,
        hidden_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.queries = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(
            QueryGeneratorLayer(dim=dim, heads=heads, hidden_dim=hidden_dim)
            for _ in range(num_layers)
        )

    def forward(self, audio: Tensor) -> Tensor:
        """Audio tokens [N, A, dim] -> queries [N, num_queries, dim]."""
        queries = self.queries.weight[None].expand(audio.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(queries, audio)
        return queries
