"""The audio share of the final per-pixel feature: the paper's Figure 1a as a metric.

The paper argues that AVSegFormer's final feature is dominated by the frames, and that AVSAC raises
the share of the audio in it, but gives no formula. We measure it with counterfactual inputs: for a
clip with frames V and audio A, and a partner clip with (V', A'), let F(V, A) be the model's final
per-pixel feature of a frame (``pixel_feature`` [C, H/4, W/4], the input of the last layers).
Then, per frame,

* audio shift ``d_a = ||F(V, A') - F(V, A)||_2``: how far the feature moves when only the audio
  is swapped;
* visual shift ``d_v = ||F(V', A) - F(V, A)||_2``: how far it moves when only the frames are
  swapped;

and over an epoch ``audio_share = sum(d_a) / (sum(d_a) + sum(d_v))``. 0 means the feature does not
depend on the audio at all, 0.5 that swapping either input moves it as much, 1 that it ignores
the frames. docs/metrics.md discusses what it does and does not measure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

Forward = Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]


def partner_clips(batch_size: int) -> Tensor:
    """The clip whose input each clip of a batch borrows: the next one, cyclically (never itself
    when there are at least 2)."""
    return torch.roll(torch.arange(batch_size), shifts=-1)


@torch.no_grad()
def counterfactual_shifts(
    forward: Forward, batch: dict[str, Tensor], feature: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-frame audio and visual shifts of the final feature, each [n] for the n frames that are
    real in both a clip and its partner (AVSS padding frames are left out).

    Args:
        forward: the model, ``forward(frames, audio, frame_valid)`` returning ``pixel_feature``.
        batch: at least 2 clips: ``frames`` [B, T, 3, H, W], ``audio`` [B, T, 1, 96, 64],
            ``frame_valid`` [B, T].
        feature: ``pixel_feature`` [B, T, C, h, w] of the batch as it is (already computed).
    """
    frames, audio, valid = batch["frames"], batch["audio"], batch["frame_valid"]
    if len(frames) < 2:
        raise ValueError("The audio share needs at least 2 clips per batch to swap inputs.")
    partner = partner_clips(len(frames)).to(frames.device)
    audio_swapped = forward(frames, audio[partner], valid)["pixel_feature"]
    frames_swapped = forward(frames[partner], audio, valid[partner])["pixel_feature"]
    both_real = valid & valid[partner]  # [B, T]
    reference = feature[both_real].float()  # [n, C, h, w]
    audio_shift = (audio_swapped[both_real].float() - reference).flatten(1).norm(dim=1)
    visual_shift = (frames_swapped[both_real].float() - reference).flatten(1).norm(dim=1)
    return audio_shift, visual_shift


class AudioShare(Metric):
    """``sum(audio shifts) / (sum(audio shifts) + sum(visual shifts))`` over every update.

    States are sums, so processes reduce by summation and the result does not depend on batching.
    With no shift at all (nothing moved, or no update) the share is NaN.
    """

    higher_is_better = None
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        zero = torch.zeros((), dtype=torch.float64)
        self.add_state("audio_shift", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("visual_shift", default=zero.clone(), dist_reduce_fx="sum")

    def update(self, audio_shift: Tensor, visual_shift: Tensor) -> None:
        """Per-frame shifts [n], as :func:`counterfactual_shifts` gives them."""
        self.audio_shift += audio_shift.double().sum()
        self.visual_shift += visual_shift.double().sum()

    def compute(self) -> Tensor:
        total = self.audio_shift + self.visual_shift
        share = self.audio_shift / total if total > 0 else torch.tensor(float("nan"))
        return share.float()
