"""The Bidirectional Audio-Visual Decoder (BAVD) of AVSAC, section 3.2 of the paper.

Two towers, joined by bridges at every layer:

* AGV (audio-guided vision), layer i: deformable self-attention over the visual tokens (F_v^i),
  then audio-guided cross-attention (AGCA, Eq. 2): queries from F_v^i, keys and values from the
  VGA tower's *input* at layer i, added to F_v^i scaled by a learnable weight w; then an FFN.
* VGA (vision-guided audio), layer i: cross-attention only (Eq. 3): queries are the previous VGA
  output (F_a at layer 1), keys and values the AGV tower's output of layer i.

AGCA has two readings (``model.net.agca``, docs/model.md): ``cross_attention`` is Eq. 2 as above;
``channel_gate`` follows Eq. 2 with an audio-queried channel gate (Fig. 1(b)'s "channel
attention [3]", AVSegFormer's mixer), :class:`AudioChannelGate`.

Ablations (Table 3): without a bridge direction, the tower on its receiving end attends to the
other modality's fixed input (F_vis or F_a) instead of the other tower's layer output; without
AGCA (``none``) the AGV tower does not attend to audio at all.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from avsac_lit.models.checkpointing import run
from avsac_lit.models.deformable_attention import MultiScaleDeformableAttention
from avsac_lit.models.mask_head import CrossModalMixer
from avsac_lit.models.transformer import FeedForward

Bridge = Literal["bidirectional", "audio_to_vision", "vision_to_audio"]
BRIDGES = ("bidirectional", "audio_to_vision", "vision_to_audio")
Agca = Literal["cross_attention", "channel_gate", "none"]
AGCA_READINGS = ("cross_attention", "channel_gate", "none")
# model.net.agca's values until 0.9.0, which the configs and checkpoints written then hold.
AGCA_BEFORE = {True: "cross_attention", False: "none"}


def agca_reading(agca: Agca | bool) -> Agca:
    """``model.net.agca`` as one of :data:`AGCA_READINGS`; ``true`` and ``false`` (its values until
    0.9.0) mean ``cross_attention`` and ``none``."""
    if isinstance(agca, bool):
        return AGCA_BEFORE[agca]
    if agca not in AGCA_READINGS:
        raise ValueError(
            f"model.net.agca={agca!r}; expected one of {', '.join(AGCA_READINGS)} (true and "
            "false, its values until 0.9.0, mean cross_attention and none)."
        )
    return agca


class AudioChannelGate(nn.Module):
    """The channel-gate reading of AGCA: each audio token queries the AGV tokens, the attended
    values are averaged over the audio tokens and a linear layer gives one gate per channel
    (AVSegFormer's mixer, :class:`CrossModalMixer`); the tokens' channels are rescaled by
    ``2 sigmoid(.)``.

    The linear layer starts at zero, so the gate starts at exactly 1 (the layer is Eq. 2's alone)
    and learns to damp a channel (towards 0) or to raise it (up to 2). AVSegFormer's plain
    sigmoid would start by halving every channel and could only damp.
    """

    def __init__(self, *, dim: int = 256, heads: int = 8) -> None:
        super().__init__()
        self.attention = CrossModalMixer(dim=dim, heads=heads)
        nn.init.zeros_(self.attention.proj.weight)
        nn.init.zeros_(self.attention.proj.bias)

    def forward(self, tokens: Tensor, audio: Tensor) -> Tensor:
        """tokens [N, L, C], audio [N, A, C] -> the tokens, each channel rescaled [N, L, C]."""
        gate = 2 * self.attention.channel_logits(tokens, audio).sigmoid()  # [N, C]
        return tokens * gate[:, None, :]


class AGVLayer(nn.Module):
    """Deformable self-attention, AGCA, FFN; post-norm.

    AGCA (``agca``): ``cross_attention``, Eq. 2; ``channel_gate``, Eq. 2 and then the audio channel
    gate on its output F_AGV^i, before the FFN; ``none``, no audio. The gate rescales
    LayerNorm-ed tokens by 1 at first and by at most 2, and the FFN's residual and LayerNorm that
    follow bring the layer's output back to unit scale: no norm of its own, so that at first it
    changes nothing.
    """

    def __init__(
        self, *, dim: int = 256, heads: int = 8, points: int = 4, levels: int = 3,
        hidden_dim: int = 2048, dropout: float = 0.1, agca: Agca | bool = "cross_attention",
    ) -> None:  # fmt: skip
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            dim=dim, levels=levels, heads=heads, points=points
        )
        self.self_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.agca = agca_reading(agca)
        if self.agca != "none":
            self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            # w of Eq. 2: how much audio the vision tower takes in.
            self.audio_weight = nn.Parameter(torch.ones(()))
            self.cross_norm = nn.LayerNorm(dim)
        if self.agca == "channel_gate":
            # Drawn from a stream of its own, seeded from the global one, which is left where it
            # was: a seed then draws every other weight as under cross_attention, so the two
            # readings start as the same function (the gate is 1) and runs of one seed differ
            # by what the gate learns alone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, ())))
                self.channel_gate = AudioChannelGate(dim=dim, heads=heads)
        self.ffn = FeedForward(dim=dim, hidden_dim=hidden_dim, dropout=dropout)

    def forward(
        self, tokens: Tensor, pos: Tensor, reference_points: Tensor,
        shapes: list[tuple[int, int]], audio: Tensor,
    ) -> Tensor:  # fmt: skip
        attended = self.self_attn(tokens + pos, reference_points, tokens, shapes)
        visual = self.self_norm(tokens + self.dropout(attended))  # F_v^i
        if self.agca != "none":
            heard = self.cross_attn(visual + pos, audio, audio)[0]
            visual = self.cross_norm(visual + self.dropout(heard) * self.audio_weight)  # F_AGV^i
        if self.agca == "channel_gate":
            visual = self.channel_gate(visual, audio)
        return self.ffn(visual)


class VGALayer(nn.Module):
    """Cross-attention from the audio queries to the visual tokens (no self-attention).

    Args:
        ffn: follow the cross-attention with an FFN, as a transformer decoder layer without its
            self-attention. Off by default: the paper's VGA branch has "only cross attention
            layers", and its parameter count agrees (docs/design_log.md).
    """

    def __init__(
        self, *, dim: int = 256, heads: int = 8, hidden_dim: int = 2048, dropout: float = 0.1,
        ffn: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, hidden_dim=hidden_dim, dropout=dropout) if ffn else None

    def forward(self, queries: Tensor, visual: Tensor) -> Tensor:
        queries = self.norm(queries + self.dropout(self.cross_attn(queries, visual, visual)[0]))
        return self.ffn(queries) if self.ffn is not None else queries


class BAVD(nn.Module):
    """The two towers and their bridges.

    Args:
        num_layers: layers per tower (Table 5: 2, 4, 6).
        bridge: ``bidirectional``, ``audio_to_vision`` or ``vision_to_audio``.
        agca: the AGV tower's AGCA: ``cross_attention`` (Eq. 2), ``channel_gate`` (Eq. 2, then
            the audio channel gate) or ``none``; ``true`` and ``false`` (until 0.9.0) mean
            ``cross_attention`` and ``none``.
        vga_ffn: an FFN after each VGA cross-attention (off: the paper's VGA is cross-attention
            only).
    """

    def __init__(
        self, *, num_layers: int = 6, bridge: Bridge = "bidirectional",
        agca: Agca | bool = "cross_attention", vga_ffn: bool = False, dim: int = 256,
        heads: int = 8, points: int = 4, hidden_dim: int = 2048, dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        if bridge not in BRIDGES:
            raise ValueError(f"model.net.bridge={bridge!r}; expected one of {', '.join(BRIDGES)}.")
        if num_layers < 1:
            raise ValueError(f"model.net.decoder_layers must be at least 1, got {num_layers}.")
        self.bridge = bridge
        self.agv_layers = nn.ModuleList(
            AGVLayer(
                dim=dim,
                heads=heads,
                points=points,
                hidden_dim=hidden_dim,
                dropout=dropout,
                agca=agca,
            )
            for _ in range(num_layers)
        )
        self.vga_layers = nn.ModuleList(
            VGALayer(dim=dim, heads=heads, hidden_dim=hidden_dim, dropout=dropout, ffn=vga_ffn)
            for _ in range(num_layers)
        )
        # Set by the model (AVSAC's ``activation_checkpointing``).
        self.activation_checkpointing = False

    def forward(
        self, visual: Tensor, pos: Tensor, reference_points: Tensor,
        shapes: list[tuple[int, int]], audio: Tensor,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """F_vis [N, L, C] and F_a [N, Q, C] -> (AGV tokens [N, L, C], F_VGA [N, Q, C])."""
        audio_to_vision = self.bridge in ("bidirectional", "audio_to_vision")
        vision_to_audio = self.bridge in ("bidirectional", "vision_to_audio")
        agv, vga = visual, audio
        checkpointed = self.activation_checkpointing
        for agv_layer, vga_layer in zip(self.agv_layers, self.vga_layers, strict=True):
            guide = vga if audio_to_vision else audio
            agv = run(agv_layer, agv, pos, reference_points, shapes, guide,
                      checkpointed=checkpointed)  # fmt: skip
            vga = run(vga_layer, vga, agv if vision_to_audio else visual, checkpointed=checkpointed)
        return agv, vga
