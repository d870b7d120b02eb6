"""Frozen visual backbones from timm, returning features at strides 4, 8, 16 and 32.

``pvt_v2_b5`` gives the paper's PVT rows, ``resnet50`` its R50 rows, and ``avsac_tiny_pvt`` (a
PVT-v2 with one block per stage and narrow widths, registered with timm here) runs the same code
path on a CPU in tests and the synthetic demo. Its pretrained weights (``pretrained=True``) ship
with the package: made by :mod:`avsac_lit.pretrain` on synthetic frames, as ImageNet made PVT's.

Weights come from a local file in the published format: the PVT release's ``pvt_v2_b5.pth``
(mapped onto timm's names by timm's own ``checkpoint_filter_fn``) or torchvision's
``resnet50-19c8e357.pth`` (whose names timm's ResNet shares); or from timm's hub with
``pretrained=True`` where a hub is reachable; or nowhere, with a loud warning.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import timm
from timm.models import build_model_with_cfg, register_model
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_v2_filter
from torch import Tensor, nn

from avsac_lit.models.weights import fixed_encoder_init, load_checkpoint_file, load_matching

log = logging.getLogger(__name__)

STRIDES = (4, 8, 16, 32)
TINY_PVT = "avsac_tiny_pvt"
# What ``python -m avsac_lit.pretrain --out ...`` wrote; docs/training.md gives its command.
TINY_PVT_WEIGHTS = "avsac_tiny_pvt_synth.pth"


def tiny_pvt_weights() -> Path:
    """The packaged pretrained weights of ``avsac_tiny_pvt``."""
    return Path(str(resources.files("avsac_lit") / "weights" / TINY_PVT_WEIGHTS))


@register_model
def avsac_tiny_pvt(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    """A 0.4M-parameter PVT-v2 (depths 1-1-1-1, widths 16-32-64-128) for tests and CPU demos;
    ``pretrained=True`` loads the weights the package ships (:func:`tiny_pvt_weights`)."""
    args = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 1, 2, 4))
    model = build_model_with_cfg(
        PyramidVisionTransformerV2, TINY_PVT, pretrained=False, **(args | kwargs)
    )
    if pretrained:
        # The file holds a backbone (num_classes=0): a classifier would be left untrained.
        if kwargs.get("num_classes") != 0:
            raise ValueError(f"{TINY_PVT}'s pretrained weights are a backbone's: num_classes=0.")
        load_matching(model, load_checkpoint_file(tiny_pvt_weights()), source=TINY_PVT_WEIGHTS)
    return model


class VisualBackbone(nn.Module):
    """A timm model cut into its stride-4/8/16/32 feature maps.

    Args:
        name: timm model name: ``pvt_v2_b5``, ``resnet50``, ``avsac_tiny_pvt`` or any timm model
            whose features include those four strides.
        weights: a local checkpoint in the published format (see the module docstring).
        pretrained: fetch timm's pretrained weights instead (needs a reachable hub).
        freeze: no gradients (until :meth:`set_frozen` unfreezes it).
        drop_path_rate: stochastic depth in train mode (AVSegFormer's PVT: 0.1).
        eval_when_frozen: keep a frozen backbone in eval mode when the model trains, so that its
            BatchNorm statistics stay fixed and drop path is off (AVSAC's frozen encoders).
            ``False`` leaves it in the model's mode, as the official AVSegFormer does before its
            backbone starts training: drop path stays active and ResNet's BatchNorm uses and
            updates batch statistics.
    """

    def __init__(
        self,
        *,
        name: str,
        weights: str | Path | None = None,
        pretrained: bool = False,
        freeze: bool = True,
        drop_path_rate: float = 0.0,
        eval_when_frozen: bool = True,
    ) -> None:
        super().__init__()
        if weights is not None and pretrained:
            raise ValueError("Give either weights.visual=PATH or pretrained=true, not both.")
        if name not in timm.list_models():
            raise ValueError(
                f"Unknown timm backbone {name!r}; e.g. pvt_v2_b5, resnet50, avsac_tiny_pvt."
            )
        extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        with fixed_encoder_init():
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **extra)
        reductions = [info["reduction"] for info in self.model.feature_info]
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"Backbone {name} has no features at strides {missing}.")
        self.indices = [reductions.index(s) for s in STRIDES]
        self.channels = [self.model.feature_info[i]["num_chs"] for i in self.indices]
        if weights is not None:
            self.load_published(weights)
        elif not pretrained:
            log.warning(
                "Visual backbone %s is randomly initialised: set weights.visual=PATH (or "
                "pretrained=true with a reachable hub) to reproduce the paper.",
                name,
            )
        self.eval_when_frozen = eval_when_frozen
        self.frozen = False
        self.set_frozen(freeze)

    def load_published(self, path: str | Path) -> None:
        state_dict = load_checkpoint_file(path)
        if isinstance(self.model, PyramidVisionTransformerV2):
            state_dict = pvt_v2_filter(state_dict, self.model)
        # Classification heads of the released checkpoints have no place in a backbone.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc."))}
        load_matching(self.model, state_dict, source=str(path))

    def set_frozen(self, frozen: bool) -> None:
        """Freeze or unfreeze (AVSegFormer's ``freeze_epochs`` unfreezes after N epochs)."""
        self.frozen = frozen
        self.model.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> VisualBackbone:
        super().train(mode)
        if self.frozen and self.eval_when_frozen:
            self.model.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images [N, 3, H, W] -> feature maps [N, C_i, H / s, W / s] for s = 4, 8, 16, 32."""
        return self.model.forward_intermediates(
            images, indices=self.indices, intermediates_only=True
        )
