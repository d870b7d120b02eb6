"""What AVSegFormer and AVSAC share: frozen encoders, projections, tokens, audio queries, masks."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.models.checkpointing import run
from avsac_lit.models.deformable_attention import MultiScaleDeformableAttention
from avsac_lit.models.mask_head import InputProjections, MaskFeature, PredictionHead
from avsac_lit.models.multiscale import MultiScaleTokens
from avsac_lit.models.query_generator import AudioQueryGenerator
from avsac_lit.models.vggish import AudioEncoder


def standard_layout(tensor: Tensor) -> Tensor:
    """``tensor`` with row-major strides. timm's PVT hands back permuted NHWC views, and a
    convolution rounds differently on a channels-last layout (even one that only its strides of
    size-1 dimensions suggest): computed and cached levels must look alike to give equal bits."""
    strides, step = [], 1
    for size in reversed(tensor.shape):
        strides.insert(0, step)
        step *= size
    if list(tensor.stride()) == strides:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


class AVSModel(nn.Module):
    """Base of the AVS models. Subclasses turn tokens and audio queries into (feature, queries).

    Args:
        visual: the (frozen) visual backbone.
        audio: the (frozen) VGGish plus its trainable projection.
        num_classes: 1 for S4/MS3, the number of classes for AVSS.
        dim: width of every token and query (256).
        num_queries: audio queries (300).
        generator_layers: layers of the audio query generator (6).
        mlp_hidden: hidden width of the prediction MLP (2048).
        mask_channels: widths of the mask upsampling convs (128, 32).
        activation_checkpointing: recompute the decoder layers' and the mask head's
            intermediates in the backward pass instead of keeping them (less memory, about one
            more forward of those parts; the same outputs and gradients).
        mask_head_chunk: frames per pass of the prediction head (0: all at once). Its
            full-resolution convolutions hold the largest intermediates; in chunks, only one
            chunk's are alive at a time (with checkpointing, in training too).
    """

    # T appears only in reshapes: a frame's outputs depend on its own frame and audio (and on no
    # other, unless a BatchNorm in train mode normalises over the batch).
    frames_independent = True

    def __init__(
        self,
        *,
        visual: VisualBackbone,
        audio: AudioEncoder,
        num_classes: int = 1,
        dim: int = 256,
        num_queries: int = 300,
        generator_layers: int = 6,
        mlp_hidden: int = 2048,
        mask_channels: tuple[int, int] = (128, 32),
        activation_checkpointing: bool = False,
        mask_head_chunk: int = 0,
    ) -> None:
        super().__init__()
        if mask_head_chunk < 0:
            raise ValueError(
                f"model.net.mask_head_chunk={mask_head_chunk}; expected a number of frames >= 1, "
                "or 0 for all frames at once."
            )
        self.activation_checkpointing = activation_checkpointing
        self.mask_head_chunk = mask_head_chunk
        self.visual, self.audio = visual, audio
        self.num_classes = num_classes
        self.input_proj = InputProjections(in_channels=visual.channels, dim=dim)
        self.tokens = MultiScaleTokens(dim=dim, levels=3)
        self.query_generator = AudioQueryGenerator(
            num_layers=generator_layers, num_queries=num_queries, dim=dim
        )
        self.learnable_queries = nn.Embedding(num_queries, dim)
        self.mask_feature = MaskFeature(dim=dim)
        self.head = PredictionHead(
            num_queries=num_queries,
            dim=dim,
            mlp_hidden=mlp_hidden,
            num_classes=num_classes,
            mask_channels=tuple(mask_channels),
        )

    def head_modules(self) -> list[nn.Module]:
        """Everything trainable that is not an encoder, for initialisation."""
        return [m for name, m in self.named_children() if name not in ("visual", "audio")]

    def reset_head_parameters(self) -> None:
        # AVSegFormer's initialisation: xavier on every matrix of the head, then the deformable
        # attention's own scheme, then a normal level embedding.
        for module in self.head_modules():
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.tokens.level_embed)

    def encode(
        self,
        frames: Tensor,
        audio: Tensor,
        frame_valid: Tensor | None = None,
        encoded: dict[str, Tensor | list] | None = None,
    ) -> dict:
        """Frames [B, T, 3, H, W] and log-mels [B, T, 1, 96, 64] -> encoder outputs per frame.

        ``frame_valid`` [B, T] (AVSS padding is False) zeroes the padding frames' visual features,
        as AVSegFormer does with its temporal flag. ``encoded`` gives what the pretrained encoders
        output for the (b t)-flattened inputs, if known (the feature cache): ``visual``, the
        backbone's 4 feature maps [N, C_i, H / s, W / s], and/or ``audio``, the VGGish embeddings
        [N, 128]; what it lacks is computed here.
        """
        encoded = dict(encoded or {})
        if "visual" not in encoded:
            encoded["visual"] = self.visual(rearrange(frames, "b t c h w -> (b t) c h w"))
        if "audio" not in encoded:
            encoded["audio"] = self.audio.embed(rearrange(audio, "b t one m f -> (b t) one m f"))
        audio_feature = self.audio.project(encoded["audio"])  # [N, C]
        flag = None if frame_valid is None else self.frame_flag(frame_valid)
        levels = [standard_layout(level) for level in encoded["visual"]]
        if flag is not None:
            levels = [level * flag for level in levels]
        levels = self.input_proj(levels)  # 4 x [N, C, H/s, W/s]
        audio_token = audio_feature[:, None]  # [N, 1, C]
        # F_a of the paper: generated audio queries plus learnable ones, added.
        audio_queries = self.query_generator(audio_token) + self.learnable_queries.weight
        return {
            "flag": flag,
            "stride4": levels[0],
            "tokens": self.tokens(levels[1:]),
            "audio_token": audio_token,
            "audio_queries": audio_queries,  # [N, Q, C]
        }

    def predict(self, feature: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """The prediction head over frames [N, C, H/4, W/4] and queries [N, Q, C], in chunks of
        ``mask_head_chunk`` frames -> (pixel feature [N, C, H/4, W/4], logits [N, K, H, W])."""
        chunk = self.mask_head_chunk or len(feature)
        checkpointed = self.activation_checkpointing
        pixel_features, logits = [], []
        for frames, frame_queries in zip(feature.split(chunk), queries.split(chunk), strict=True):
            pixel_feature = run(self.head.fuse, frames, frame_queries, checkpointed=checkpointed)
            pixel_features.append(pixel_feature)
            logits.append(run(self.head.to_mask, pixel_feature, checkpointed=checkpointed))
        if len(logits) == 1:
            return pixel_features[0], logits[0]
        return torch.cat(pixel_features), torch.cat(logits)

    @staticmethod
    def frame_flag(frame_valid: Tensor) -> Tensor:
        """[B, T] bool -> [B*T, 1, 1, 1] float, to multiply per-frame maps with."""
        return rearrange(frame_valid.float(), "b t -> (b t) 1 1 1")

    @staticmethod
    def masked(tensor: Tensor, flag: Tensor | None) -> Tensor:
        return tensor if flag is None else tensor * flag

    @staticmethod
    def per_clip(tensor: Tensor, batch: int) -> Tensor:
        return rearrange(tensor, "(b t) ... -> b t ...", b=batch)
