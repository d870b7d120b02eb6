"""The audio share of the final feature: the counterfactual shifts against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from avsac_lit.metrics import AudioShare, counterfactual_shifts
from avsac_lit.metrics.audio_share import partner_clips
from tests.test_module import small_module


def linear_model(audio_weight: float, visual_weight: float):
    """A model whose feature is ``audio_weight * mean(log-mel) + visual_weight * mean(frame)`` at
    every one of its 2x2x2 positions, so each shift is a weight times an input difference times
    sqrt(8)."""

    def forward(frames, audio, frame_valid):
        value = audio_weight * audio.mean(dim=(2, 3, 4)) + visual_weight * frames.mean(
            dim=(2, 3, 4)
        )
        return {"pixel_feature": value[:, :, None, None, None].expand(-1, -1, 2, 2, 2)}

    return forward


def constant_batch(frame_values, audio_values, frame_valid=None) -> dict:
    """Clips whose frames and log-mels are constant: [B, T] values each."""
    frames = torch.tensor(frame_values, dtype=torch.float32)[:, :, None, None, None]
    audio = torch.tensor(audio_values, dtype=torch.float32)[:, :, None, None, None]
    batch = {
        "frames": frames.expand(-1, -1, 3, 4, 4).clone(),
        "audio": audio.expand(-1, -1, 1, 96, 64).clone(),
    }
    batch["frame_valid"] = (
        torch.ones(frames.shape[:2], dtype=torch.bool) if frame_valid is None else frame_valid
    )
    return batch


def shares(forward, batch) -> tuple[torch.Tensor, torch.Tensor]:
    feature = forward(batch["frames"], batch["audio"], batch["frame_valid"])["pixel_feature"]
    return counterfactual_shifts(forward, batch, feature)


def test_partners_are_the_next_clip_cyclically():
    assert partner_clips(3).tolist() == [1, 2, 0]
    assert partner_clips(2).tolist() == [1, 0]


def test_shifts_and_share_match_a_hand_computation():
    # Clip 0: frames 1, audio 0; clip 1: frames 3, audio 4. Partners swap 0 <-> 1.
    batch = constant_batch([[1.0], [3.0]], [[0.0], [4.0]])
    audio_shift, visual_shift = shares(linear_model(audio_weight=0.5, visual_weight=2.0), batch)
    root8 = math.sqrt(8)
    # |0.5 * (4 - 0)| * sqrt(8) for both clips; |2 * (3 - 1)| * sqrt(8) for both.
    assert audio_shift.tolist() == pytest.approx([2 * root8, 2 * root8])
    assert visual_shift.tolist() == pytest.approx([4 * root8, 4 * root8])
    metric = AudioShare()
    metric.update(audio_shift, visual_shift)
    assert metric.compute().item() == pytest.approx(2 / (2 + 4))


def test_a_model_that_ignores_the_audio_has_share_zero_and_one_that_ignores_frames_one():
    batch = constant_batch([[1.0, 2.0], [3.0, 5.0]], [[0.0, 1.0], [4.0, 2.0]])
    for weights, expected in (((0.0, 1.0), 0.0), ((1.0, 0.0), 1.0)):
        metric = AudioShare()
        metric.update(*shares(linear_model(*weights), batch))
        assert metric.compute().item() == pytest.approx(expected)


def test_padding_frames_of_either_clip_are_left_out():
    valid = torch.tensor([[True, True], [True, False]])
    batch = constant_batch([[1.0, 1.0], [3.0, 9.0]], [[0.0, 0.0], [4.0, 8.0]], valid)
    audio_shift, visual_shift = shares(linear_model(1.0, 1.0), batch)
    assert len(audio_shift) == 2  # frame 0 of each clip; frame 1 is padding in clip 1
    assert audio_shift.tolist() == pytest.approx([4 * math.sqrt(8)] * 2)
    assert visual_shift.tolist() == pytest.approx([2 * math.sqrt(8)] * 2)


def test_the_share_is_a_ratio_of_sums_so_batching_does_not_change_it():
    whole, parts = AudioShare(), AudioShare()
    audio, visual = torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([3.0, 2.0, 1.0, 2.0])
    whole.update(audio, visual)
    parts.update(audio[:1], visual[:1])
    parts.update(audio[1:], visual[1:])
    assert whole.compute().item() == pytest.approx(12 / 20)
    assert parts.compute().item() == pytest.approx(whole.compute().item())
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(AudioShare().compute().item())  # nothing measured


def test_one_clip_cannot_be_swapped():
    batch = constant_batch([[1.0]], [[0.0]])
    with pytest.raises(ValueError, match="at least 2 clips"):
        shares(linear_model(1.0, 1.0), batch)


def test_real_model_feature_moves_with_both_inputs():
    module = small_module().eval()
    torch.manual_seed(0)
    batch = {
        "frames": torch.randn(2, 2, 3, 32, 32),
        "audio": torch.randn(2, 2, 1, 96, 64),
        "frame_valid": torch.ones(2, 2, dtype=torch.bool),
    }
    outputs = module(batch)
    assert outputs["pixel_feature"].shape == (2, 2, 32, 8, 8)
    audio_shift, visual_shift = counterfactual_shifts(module.net, batch, outputs["pixel_feature"])
    assert audio_shift.shape == visual_shift.shape == (4,)
    assert (audio_shift > 0).all() and (visual_shift > 0).all()
    # Swapping in the clip's own inputs moves nothing.
    same = {**batch, "frames": batch["frames"][[0, 0]], "audio": batch["audio"][[0, 0]]}
    feature = module(same)["pixel_feature"]
    audio_shift, visual_shift = counterfactual_shifts(module.net, same, feature)
    assert audio_shift.abs().max() < 1e-4 and visual_shift.abs().max() < 1e-4
