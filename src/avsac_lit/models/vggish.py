"""VGGish, the audio encoder of AVSBench, AVSegFormer and AVSAC, in torchvggish's key layout.

The published architecture (Hershey et al., 2017) as the AVS repositories use it: four conv blocks
on a [1, 96, 64] log-mel example, three fully connected layers with a ReLU after the last one (the
torchvggish port keeps it; current TF VGGish does not), no PCA post-processing. 72.1M parameters.

Module names match ``vggish-10086976.pth`` (``features.{0,3,6,8,11,13}.*``,
``embeddings.{0,2,4}.*``) so the released weights load with ``load_state_dict`` unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from avsac_lit.models.batchnorm import DistributedBatchNorm1d
from avsac_lit.models.weights import (
    fixed_encoder_init,
    load_checkpoint_file,
    load_matching,
    remember_digest,
    state_digest,
)

log = logging.getLogger(__name__)


class VGGish(nn.Module):
    """VGGish embeddings: log-mel examples [N, 1, 96, 64] -> [N, 128] (non-negative)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for block in ((64,), (128,), (256, 256), (512, 512)):
            for width in block:
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 128),
            nn.ReLU(inplace=True),
        )

    def reset_parameters(self) -> None:
        """He initialisation, for a VGGish without its released weights: PyTorch's default
        initialisation shrinks activations at every layer, so after nine ReLU layers the
        embeddings of all clips are nearly equal (std over clips ~5% of their mean); He keeps
        their scale (~25%) and a linear probe reads the sounding categories from either."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, examples: Tensor) -> Tensor:
        x = self.features(examples.contiguous(memory_format=torch.channels_last))  # [N, 512, 6, 4]
        # The TF original flattens in NHWC order; the released weights expect that order.
        x = x.permute(0, 2, 3, 1).flatten(1)  # [N, 6 * 4 * 512]
        return self.embeddings(x)


def random_vggish() -> VGGish:
    """The VGGish of a run without a weight file: He-initialised from the fixed encoder seed, so
    the same tensors in every run (channels-last, see :class:`AudioEncoder`). Drawing its 72M
    weights takes about half a second; a process that builds it a second time (tests, notebooks,
    sweeps in one process) keeps a copy and its digest, and clones that from then on (290 MB; a
    process that builds it once keeps nothing)."""
    global _RANDOM_VGGISH_BUILDS, _RANDOM_VGGISH_STATE, _RANDOM_VGGISH_DIGEST
    if torch.empty(()).is_meta:  # built for its shapes (torch.device("meta")): nothing to draw
        return VGGish()
    if _RANDOM_VGGISH_STATE is not None:
        with torch.device("meta"):
            vggish = VGGish()
        state = {name: tensor.clone() for name, tensor in _RANDOM_VGGISH_STATE.items()}
        vggish.load_state_dict(state, assign=True)
        remember_digest(vggish, _RANDOM_VGGISH_DIGEST)
        return vggish
    with fixed_encoder_init():
        vggish = VGGish()
        vggish.reset_parameters()
    # After the draw: initialised in place, a channels-last tensor would draw its numbers in
    # another order.
    vggish.to(memory_format=torch.channels_last)
    _RANDOM_VGGISH_BUILDS += 1
    if _RANDOM_VGGISH_BUILDS >= 2:
        _RANDOM_VGGISH_STATE = {k: v.clone() for k, v in vggish.state_dict().items()}
        _RANDOM_VGGISH_DIGEST = state_digest(vggish)
    return vggish


_RANDOM_VGGISH_BUILDS = 0
_RANDOM_VGGISH_STATE: dict[str, Tensor] | None = None
_RANDOM_VGGISH_DIGEST = ""


class AudioEncoder(nn.Module):
    """Frozen VGGish followed by a trainable projection to the decoder width.

    Args:
        dim: output width (256 in AVSegFormer and AVSAC).
        weights: path to ``vggish-10086976.pth`` (torchvggish format); ``None`` leaves VGGish
            randomly initialised, with a warning, which is only sensible for tests and the synthetic
            demo.
        freeze: keep VGGish frozen (no gradients, eval mode, run under ``no_grad``), as the paper.
        normalize: standardise each embedding dimension over the batch (a trainable BatchNorm)
            before the projection. Off in the paper's configs; the synthetic experiments use it,
            because a random VGGish's embeddings share a large common component that hides the
            differences between clips from a plain linear layer.
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        weights: str | Path | None = None,
        freeze: bool = True,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if weights is not None:
            with fixed_encoder_init():  # its draws must not move the run's random state
                self.vggish = VGGish()
            load_matching(self.vggish, load_checkpoint_file(weights), source=str(weights))
        else:
            self.vggish = random_vggish()
            log.warning(
                "VGGish is randomly initialised: no weights.audio given. Set weights.audio to "
                "vggish-10086976.pth (torchvggish release) to reproduce the paper."
            )
        # Channels-last convolutions: 1.25x faster on a CPU (oneDNN), the same values up to
        # float rounding; digests (state_digest) and checkpoints do not see a layout.
        self.vggish.to(memory_format=torch.channels_last)
        self.norm = DistributedBatchNorm1d(128) if normalize else nn.Identity()
        self.proj = nn.Linear(128, dim)
        self.freeze = freeze
        if freeze:
            self.vggish.requires_grad_(False)
            self.vggish.eval()  # Lightning 2.2+ keeps each module's mode; train() may never come

    def train(self, mode: bool = True) -> AudioEncoder:
        super().train(mode)
        if self.freeze:
            self.vggish.eval()
        return self

    def embed(self, audio: Tensor) -> Tensor:
        """Log-mel examples [N, 1, 96, 64] -> VGGish embeddings [N, 128]: the frozen part, which
        the encoder feature cache can stand in for."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.vggish(audio)

    def project(self, embedding: Tensor) -> Tensor:
        """VGGish embeddings [N, 128] -> audio features [N, dim]: the trainable part."""
        return self.proj(self.norm(embedding))

    def forward(self, audio: Tensor) -> Tensor:
        """Log-mel examples [N, 1, 96, 64] -> audio features [N, dim]."""
        return self.project(self.embed(audio))
