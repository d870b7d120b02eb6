"""AVSAC: AVSegFormer's encoders and audio queries, decoded by the BAVD (see bavd.py).

``M = Linear(F_AGV + MLP(F_AGV . F_VGA))`` (Eq. 1) is read as AVSegFormer's prediction head with
the mask feature built from the final AGV tokens (the stride-8 level upsampled plus the stride-4
lateral) and the per-pixel products taken against the final VGA queries. docs/model.md lists every
reading of the paper made here.
"""

from __future__ import annotations

from torch import Tensor

from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.models.base import AVSModel
from avsac_lit.models.bavd import BAVD, Agca, Bridge
from avsac_lit.models.multiscale import level_map
from avsac_lit.models.vggish import AudioEncoder


class AVSAC(AVSModel):
    """AVSAC: the encoders, audio queries and head of :class:`AVSModel`, decoded by the BAVD.

    Args (the BAVD's; the rest as :class:`AVSModel`):
        decoder_layers: BAVD layers per tower (Table 5: 2, 4, 6).
        bridge: ``bidirectional``, ``audio_to_vision`` or ``vision_to_audio`` (Table 3).
        agca: the AGV tower's audio guidance (Table 3): ``cross_attention`` (Eq. 2),
            ``channel_gate`` (Eq. 2, then an audio-queried channel gate) or ``none`` (see
            :class:`~avsac_lit.models.bavd.AGVLayer`; ``true``/``false`` until 0.9.0).
        vga_ffn: an FFN after each VGA cross-attention (off: the paper's VGA layers are
            cross-attention only; docs/design_log.md, lead 4).
        heads, hidden_dim, dropout: attention heads, FFN width and dropout of the BAVD layers.
    """

    def __init__(
        self,
        *,
        visual: VisualBackbone,
        audio: AudioEncoder,
        num_classes: int = 1,
        dim: int = 256,
        num_queries: int = 300,
        generator_layers: int = 6,
        decoder_layers: int = 6,
        bridge: Bridge = "bidirectional",
        agca: Agca | bool = "cross_attention",
        vga_ffn: bool = False,
        heads: int = 8,
        hidden_dim: int = 2048,
        dropout: float = 0.1,
        mlp_hidden: int = 2048,
        mask_channels: tuple[int, int] = (128, 32),
        activation_checkpointing: bool = False,
        mask_head_chunk: int = 0,
    ) -> None:
        # Built before the rest, right after the encoders, so that a seed initialises every part
        # as it did when the BAVD was instantiated from its own config node.
        bavd = BAVD(
            num_layers=decoder_layers, bridge=bridge, agca=agca, vga_ffn=vga_ffn, dim=dim,
            heads=heads, hidden_dim=hidden_dim, dropout=dropout,
        )  # fmt: skip
        super().__init__(
            visual=visual,
            audio=audio,
            num_classes=num_classes,
            dim=dim,
            num_queries=num_queries,
            generator_layers=generator_layers,
            mlp_hidden=mlp_hidden,
            mask_channels=mask_channels,
            activation_checkpointing=activation_checkpointing,
            mask_head_chunk=mask_head_chunk,
        )
        self.bavd = bavd
        bavd.activation_checkpointing = activation_checkpointing
        self.reset_head_parameters()

    def forward(
        self,
        frames: Tensor,
        audio: Tensor,
        frame_valid: Tensor | None = None,
        encoded: dict | None = None,
    ) -> dict[str, Tensor]:
        """
        Args:
            frames: [B, T, 3, H, W] normalised frames.
            audio: [B, T, 1, 96, 64] log-mel examples.
            frame_valid: [B, T] bool; padding frames (False) get zero features and logits.
            encoded: the frozen encoders' outputs for these inputs, if already known (see
                :meth:`AVSModel.encode`).

        Returns:
            ``logits`` [B, T, classes, H, W]; ``pixel_feature`` [B, T, C, H/4, W/4]
            (``F_AGV + MLP(F_AGV . F_VGA)`` of Eq. 1, the input of the final layers);
            ``agv`` [B, T, C, H/4, W/4] (F_AGV, the per-pixel feature the AVFS loss reads);
            ``audio_queries`` [B, T, Q, C] (F_a); ``vga`` [B, T, Q, C] (F_VGA).
        """
        batch = frames.shape[0]
        encoded = self.encode(frames, audio, frame_valid, encoded)
        tokens = encoded["tokens"]
        agv_tokens, vga = self.bavd(
            tokens["tokens"],
            tokens["pos"],
            tokens["reference_points"],
            tokens["shapes"],
            encoded["audio_queries"],
        )
        agv = self.mask_feature(level_map(agv_tokens, tokens["shapes"], 0), encoded["stride4"])
        agv = self.masked(agv, encoded["flag"])
        pixel_feature, logits = self.predict(agv, vga)
        logits = self.masked(logits, encoded["flag"])
        return {
            "logits": self.per_clip(logits, batch),
            "pixel_feature": self.per_clip(pixel_feature, batch),
            "agv": self.per_clip(agv, batch),
            "audio_queries": self.per_clip(encoded["audio_queries"], batch),
            "vga": self.per_clip(vga, batch),
        }
