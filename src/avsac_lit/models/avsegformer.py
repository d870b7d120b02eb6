"""AVSegFormer (Gao et al., AAAI 2024), the baseline of the AVSAC paper.

Structure as published (anchors section 1.2): deformable encoder over the stride-8/16/32 levels,
query decoder from the audio queries over the encoder memory, stride-4 mask feature gated by the
audio-visual mixer, and the prediction head. The unused modules of the reference (``SimpleFPN``,
``attn_fc``, ResNet's second branch) are left out. Frames are handled independently; T only
appears in reshapes.
"""

from __future__ import annotations

from torch import Tensor, nn

from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.models.base import AVSModel
from avsac_lit.models.checkpointing import run
from avsac_lit.models.mask_head import CrossModalMixer
from avsac_lit.models.multiscale import level_map
from avsac_lit.models.transformer import DeformableEncoderLayer, QueryDecoderLayer
from avsac_lit.models.vggish import AudioEncoder


class AVSegFormer(AVSModel):
    """AVSegFormer. Keyword arguments beyond :class:`AVSModel`'s:

    Args:
        encoder_layers: deformable encoder layers (6).
        decoder_layers: query decoder layers (6).
        heads: attention heads of both (8).
        hidden_dim: FFN width of both (2048).
        dropout: transformer dropout (0.1).
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
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        heads: int = 8,
        hidden_dim: int = 2048,
        mlp_hidden: int = 2048,
        mask_channels: tuple[int, int] = (128, 32),
        activation_checkpointing: bool = False,
        mask_head_chunk: int = 0,
        dropout: float = 0.1,
    ) -> None:
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
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(dim=dim, heads=heads, hidden_dim=hidden_dim, dropout=dropout)
            for _ in range(encoder_layers)
        )
        self.decoder = nn.ModuleList(
            QueryDecoderLayer(dim=dim, heads=heads, hidden_dim=hidden_dim, dropout=dropout)
            for _ in range(decoder_layers)
        )
        self.mixer = CrossModalMixer(dim=dim)
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
            ``logits`` [B, T, classes, H, W]; ``pixel_feature`` [B, T, C, H/4, W/4] (the
            mask feature plus the MLP of its products with the queries, the input of the final
            layers); ``mask_feature`` [B, T, C, H/4, W/4] (after the
            mixer); ``audio_queries`` [B, T, Q, C] (F_a); ``queries`` [B, T, Q, C] (decoder output).
        """
        batch = frames.shape[0]
        encoded = self.encode(frames, audio, frame_valid, encoded)
        tokens = encoded["tokens"]
        memory = tokens["tokens"]
        checkpointed = self.activation_checkpointing
        for layer in self.encoder:
            memory = run(layer, memory, tokens["pos"], tokens["reference_points"],
                         tokens["shapes"], checkpointed=checkpointed)  # fmt: skip
        queries = encoded["audio_queries"]
        for layer in self.decoder:
            queries = run(layer, queries, memory, checkpointed=checkpointed)
        feature = self.mask_feature(level_map(memory, tokens["shapes"], 0), encoded["stride4"])
        feature = self.masked(self.mixer(feature, encoded["audio_token"]), encoded["flag"])
        pixel_feature, logits = self.predict(feature, queries)
        logits = self.masked(logits, encoded["flag"])
        return {
            "logits": self.per_clip(logits, batch),
            "pixel_feature": self.per_clip(pixel_feature, batch),
            "mask_feature": self.per_clip(feature, batch),
            "audio_queries": self.per_clip(encoded["audio_queries"], batch),
            "queries": self.per_clip(queries, batch),
        }
