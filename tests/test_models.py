"""AVSegFormer and AVSAC: shapes, gradients, bridges, losses and parameter budgets."""

from __future__ import annotations

import math

import pytest
import torch

from avsac_lit.models.avsac import AVSAC
from avsac_lit.models.avsegformer import AVSegFormer
from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.models.bavd import BAVD
from avsac_lit.models.deformable_attention import MultiScaleDeformableAttention
from avsac_lit.models.losses import AVSCriterion, avfs_loss, dice_loss
from avsac_lit.models.multiscale import MultiScaleTokens
from avsac_lit.models.vggish import AudioEncoder

SIZE = 64


def build(kind: str, num_classes: int = 1, layers: int = 2, **bavd) -> torch.nn.Module:
    """A small AVSAC (``bavd``: its BAVD settings) or AVSegFormer."""
    common = dict(
        visual=VisualBackbone(name="avsac_tiny_pvt"),
        audio=AudioEncoder(),
        num_classes=num_classes,
        num_queries=20,
        generator_layers=1,
        mlp_hidden=64,
    )
    if kind == "avsac":
        return AVSAC(decoder_layers=layers, **bavd, **common)
    return AVSegFormer(encoder_layers=layers, decoder_layers=layers, **common)


def batch_for(frames: int = 5, num_classes: int = 1, clips: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if num_classes == 1:
        masks = (torch.rand(clips, frames, SIZE, SIZE, generator=generator) > 0.7).float()
    else:
        masks = torch.randint(0, num_classes, (clips, frames, SIZE, SIZE), generator=generator)
    return {
        "frames": torch.randn(clips, frames, 3, SIZE, SIZE, generator=generator),
        "audio": torch.randn(clips, frames, 1, 96, 64, generator=generator),
        "masks": masks,
        "mask_valid": torch.ones(clips, frames, dtype=torch.bool),
        "frame_valid": torch.ones(clips, frames, dtype=torch.bool),
    }


@pytest.mark.parametrize("kind", ["avsac", "avsegformer"])
@pytest.mark.parametrize(("num_classes", "frames"), [(1, 5), (71, 10)])
def test_output_shapes(kind, num_classes, frames):
    model = build(kind, num_classes=num_classes).eval()
    batch = batch_for(frames, num_classes)
    with torch.no_grad():
        outputs = model(batch["frames"], batch["audio"])
    assert outputs["logits"].shape == (2, frames, num_classes, SIZE, SIZE)
    assert outputs["audio_queries"].shape == (2, frames, 20, 256)
    feature = outputs["agv" if kind == "avsac" else "mask_feature"]
    assert feature.shape == (2, frames, 256, SIZE // 4, SIZE // 4)


@pytest.mark.parametrize("kind", ["avsac", "avsegformer"])
def test_gradients_reach_every_trainable_parameter_and_no_frozen_one(kind):
    model = build(kind).train()
    # Deformable attention starts with zero weights on its query, which would leave the level
    # embedding with an exactly zero gradient at step 0; nudge them so every path carries one.
    for module in model.modules():
        if isinstance(module, MultiScaleDeformableAttention):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=1e-3)
            torch.nn.init.normal_(module.attention_weights.weight, std=1e-3)
    feature_key = "agv" if kind == "avsac" else "mask_feature"
    mix_weight = 0.1 if kind == "avsegformer" else 0.0
    criterion = AVSCriterion(feature_key=feature_key, mix_weight=mix_weight)
    batch = batch_for()
    criterion(model(batch["frames"], batch["audio"]), batch)["loss"].backward()
    frozen = {id(p) for p in [*model.visual.parameters(), *model.audio.vggish.parameters()]}
    for name, parameter in model.named_parameters():
        if id(parameter) in frozen:
            assert not parameter.requires_grad, name
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name


def perturbed_output(bavd: BAVD, hook_target: torch.nn.Module | None, visual, audio, tokens):
    """BAVD outputs, with the given submodule's output shifted by a constant."""
    handle = None
    if hook_target is not None:
        handle = hook_target.register_forward_hook(lambda _m, _i, out: out + 1.0)
    try:
        return bavd(visual, tokens["pos"], tokens["reference_points"], tokens["shapes"], audio)
    finally:
        if handle:
            handle.remove()


@pytest.mark.parametrize(
    ("bridge", "agv_reads_vga", "vga_reads_agv"),
    [
        ("bidirectional", True, True),
        ("audio_to_vision", True, False),
        ("vision_to_audio", False, True),
    ],
)
def test_each_bridge_changes_what_each_tower_reads(bridge, agv_reads_vga, vga_reads_agv):
    torch.manual_seed(0)
    bavd = BAVD(num_layers=2, bridge=bridge, dropout=0.0).eval()
    levels = [torch.randn(1, 256, s, s) for s in (4, 2, 1)]
    tokens = MultiScaleTokens()(levels)
    visual, audio = tokens["tokens"], torch.randn(1, 6, 256)
    with torch.no_grad():
        agv, vga = perturbed_output(bavd, None, visual, audio, tokens)
        # Shift the VGA tower's layer-1 state: only an audio-to-vision bridge carries it to AGV.
        agv_shift, _ = perturbed_output(bavd, bavd.vga_layers[0], visual, audio, tokens)
        # Shift the AGV tower's layer-1 output: only a vision-to-audio bridge carries it to VGA.
        _, vga_shift = perturbed_output(bavd, bavd.agv_layers[0], visual, audio, tokens)
    assert (not torch.allclose(agv, agv_shift)) == agv_reads_vga
    assert (not torch.allclose(vga, vga_shift)) == vga_reads_agv


def test_without_agca_the_vision_tower_never_hears():
    torch.manual_seed(0)
    bavd = BAVD(num_layers=2, agca=False, dropout=0.0).eval()
    tokens = MultiScaleTokens()([torch.randn(1, 256, s, s) for s in (4, 2, 1)])
    with torch.no_grad():
        agv, _ = perturbed_output(bavd, None, tokens["tokens"], torch.randn(1, 6, 256), tokens)
        other, _ = perturbed_output(bavd, None, tokens["tokens"], torch.randn(1, 6, 256), tokens)
    assert torch.allclose(agv, other)
    assert not hasattr(bavd.agv_layers[0], "cross_attn")


def test_avfs_equals_a_hand_computed_kl():
    # F_a pooled over its 2 queries is [0, 0]: P(F_a) = [1/2, 1/2] at every position.
    audio = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    # F_AGV at 2 positions: [0, 0] -> [1/2, 1/2] (KL 0); [ln 3, 0] -> [3/4, 1/4]
    # (KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)). Mean over positions: 1/4 ln(4/3).
    feature = torch.tensor([[[[0.0, math.log(3)]], [[0.0, 0.0]]]])
    assert avfs_loss(audio, feature).item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-6)
    # Over positions: channel 0 is [1/4, 3/4] against uniform (KL 1/2 ln(4/3)); channel 1 is
    # uniform (KL 0). Mean over channels: 1/4 ln(4/3).
    assert avfs_loss(audio, feature, "positions").item() == pytest.approx(0.25 * math.log(4 / 3))


def test_dice_hand_value_and_supervision_on_annotated_frames_only():
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # p = 1/2 everywhere: overlap 1/2, sum p^2 = 1, sum g^2 = 1 -> 1 - 1 / 2.002.
    assert dice_loss(torch.zeros(1, 2, 2), target).item() == pytest.approx(1 - 1 / 2.002)
    criterion = AVSCriterion(sync="none")
    batch = batch_for()
    batch["mask_valid"][:, 1:] = False  # S4 train: the first frame only
    logits = torch.zeros(2, 5, 1, SIZE, SIZE, requires_grad=True)
    criterion({"logits": logits}, batch)["loss"].backward()
    assert logits.grad[:, 0].abs().sum() > 0
    assert not logits.grad[:, 1:].any()


@pytest.mark.parametrize("sync", ["l2", "framewise_l2", "kl"])
def test_sync_variants_are_zero_when_features_agree_and_skip_padding(sync):
    criterion = AVSCriterion(sync=sync, seg="dice")
    batch = batch_for(frames=4)
    batch["frame_valid"][:, 3] = False
    audio = torch.randn(2, 4, 3, 8)
    feature = audio.mean(dim=2)[..., None, None].expand(2, 4, 8, 2, 2).clone()
    feature[:, 3] += 100.0  # padding frames must not count
    outputs = {"logits": torch.zeros(2, 4, 1, SIZE, SIZE), "audio_queries": audio, "agv": feature}
    sync_loss = criterion(outputs, batch)["sync"].item()
    if sync == "kl":  # equal features give equal distributions
        assert sync_loss == pytest.approx(0.0, abs=1e-6)
    else:
        assert sync_loss == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("sync", ["l2", "framewise_l2", "kl"])
def test_sync_detach_audio_stops_the_gradient_into_f_a_only(sync):
    batch = batch_for(frames=2)
    gradients = {}
    for detach in (True, False):
        audio = torch.randn(2, 2, 3, 8, generator=torch.Generator().manual_seed(0))
        feature = torch.randn(2, 2, 8, 2, 2, generator=torch.Generator().manual_seed(1))
        audio.requires_grad_(True)
        feature.requires_grad_(True)
        logits = torch.zeros(2, 2, 1, SIZE, SIZE)
        outputs = {"logits": logits, "audio_queries": audio, "agv": feature}
        criterion = AVSCriterion(sync=sync, seg="dice", sync_detach_audio=detach)
        criterion(outputs, batch)["loss"].backward()
        gradients[detach] = (audio.grad, feature.grad)
    assert gradients[True][0] is None  # the loss no longer reaches F_a
    assert gradients[False][0].abs().sum() > 0
    # F_AGV gets the same gradient either way: only the reference's side changes.
    assert torch.equal(gradients[True][1], gradients[False][1])


def test_avss_losses_are_cross_entropy_with_or_without_foreground_dice():
    batch = batch_for(frames=3, num_classes=5)
    batch["mask_valid"][:, 1:] = False  # only the first frame of each clip is annotated
    logits = torch.randn(2, 3, 5, SIZE, SIZE)
    outputs = {"logits": logits}
    labelled = logits[:, 0], batch["masks"][:, 0].long()
    cross_entropy = torch.nn.functional.cross_entropy(*labelled)
    official = AVSCriterion(num_classes=5, avss_seg="ce", sync="none")(outputs, batch)
    assert torch.allclose(official["seg"], cross_entropy)
    ours = AVSCriterion(num_classes=5, avss_seg="ce_dice", sync="none")(outputs, batch)
    foreground = torch.logit((1 - labelled[0].softmax(dim=1)[:, 0]).clamp(1e-6, 1 - 1e-6))
    assert torch.allclose(ours["seg"], cross_entropy + dice_loss(foreground, labelled[1] > 0))
    with pytest.raises(ValueError, match=r"model\.loss\.avss_seg='dice'"):
        AVSCriterion(avss_seg="dice")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"model\.net\.bridge='both'"):
        BAVD(bridge="both")
    with pytest.raises(ValueError, match=r"model\.loss\.sync='cosine'"):
        AVSCriterion(sync="cosine")
    with pytest.raises(ValueError, match=r"model\.loss\.seg='bce'"):
        AVSCriterion(seg="bce")


def test_parameter_budgets_with_pvt_v2_b5():
    """The paper: AVSAC-PVT 181M, AVSegFormer-PVT 186M, both counting the frozen encoders."""

    def total(model: torch.nn.Module) -> float:
        return sum(p.numel() for p in model.parameters()) / 1e6

    def encoders() -> dict:
        return dict(visual=VisualBackbone(name="pvt_v2_b5"), audio=AudioEncoder())

    assert 183.0 <= total(AVSegFormer(**encoders())) <= 187.0
    # The official AVSegFormer code counts 2.10M of head modules it never calls (head.fpn,
    # head.attn_fc); AVSAC, built on that code, is counted the same way for the paper's 181M.
    # With the VGA FFN (vga_ffn=true) the same count gives 185.8M.
    assert 179.0 <= total(AVSAC(**encoders())) + 2.10 <= 183.0


@pytest.mark.parametrize("kind", ["avsac", "avsegformer"])
def test_padding_frames_get_zero_logits_like_avsegformer(kind):
    model = build(kind, num_classes=71).eval()
    batch = batch_for(frames=10, num_classes=71, clips=1)
    batch["frame_valid"][:, 5:] = False
    with torch.no_grad():
        outputs = model(batch["frames"], batch["audio"], batch["frame_valid"])
    assert not outputs["logits"][:, 5:].any()
    assert outputs["logits"][:, :5].abs().sum() > 0


@pytest.mark.parametrize("kind", ["avsac", "avsegformer"])
def test_frames_of_a_clip_are_predicted_independently(kind):
    """avsac_lit.predict relies on it: a frame's prediction does not depend on the other frames of
    its window, so a shorter last window is a valid clip."""
    torch.manual_seed(0)
    model = build(kind).eval()
    batch = batch_for(frames=5, clips=1)
    with torch.no_grad():
        whole = model(batch["frames"], batch["audio"], batch["frame_valid"])["logits"]
        tail = model(batch["frames"][:, 3:], batch["audio"][:, 3:], batch["frame_valid"][:, 3:])
    torch.testing.assert_close(tail["logits"], whole[:, 3:], atol=1e-4, rtol=1e-4)
