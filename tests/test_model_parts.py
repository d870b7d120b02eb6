"""Encoders and shared parts: published weight layouts, freezing, deformable attention."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_sampling,
    reference_points_for,
)
from avsac_lit.models.position_encoding import SinePositionalEncoding
from avsac_lit.models.query_generator import AudioQueryGenerator
from avsac_lit.models.vggish import AudioEncoder, VGGish, random_vggish
from avsac_lit.models.weights import ENCODER_INIT_SEED, state_digest

TORCHVGGISH_KEYS = [
    f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")
] + [f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]


def test_vggish_matches_the_published_architecture():
    model = VGGish()
    assert sorted(model.state_dict()) == sorted(TORCHVGGISH_KEYS)
    assert sum(p.numel() for p in model.parameters()) == 72_141_184
    embedding = model(torch.randn(3, 1, 96, 64))
    assert embedding.shape == (3, 128)
    assert (embedding >= 0).all()  # the final ReLU the AVS repositories keep


def test_vggish_weights_in_torchvggish_layout_load_and_agree(tmp_path):
    torch.manual_seed(0)
    source = VGGish().eval()
    torch.save(source.state_dict(), tmp_path / "vggish-10086976.pth")
    encoder = AudioEncoder(weights=tmp_path / "vggish-10086976.pth").eval()
    loaded = encoder.vggish.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in source.state_dict().items())
    # The encoder runs its convolutions channels-last (faster on a CPU): the same network, the
    # same values up to float32 rounding.
    assert encoder.vggish.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    examples = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.vggish(examples), source(examples), rtol=1e-5, atol=1e-6)


def test_audio_encoder_is_frozen_but_its_projection_learns():
    encoder = AudioEncoder(dim=256).train()
    assert not encoder.vggish.training
    encoder(torch.randn(2, 1, 96, 64)).sum().backward()
    assert all(p.grad is None for p in encoder.vggish.parameters())
    assert encoder.proj.weight.grad is not None


def test_wrong_weights_file_lists_missing_and_unexpected_keys(tmp_path):
    state = VGGish().state_dict()
    state["features.99.weight"] = state.pop("features.0.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys: features\.0\.weight") as error:
        AudioEncoder(weights=tmp_path / "bad.pth")
    assert "unexpected keys: features.99.weight" in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth does not exist"):
        AudioEncoder(weights=tmp_path / "nowhere.pth")


def to_pvt_release_layout(timm_state: dict) -> dict:
    """timm's PVT-v2 names -> the names of the PVT release (``pvt_v2_b5.pth``), with a head."""
    released = {}
    for key, value in timm_state.items():
        key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", key)
        key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
        key = re.sub(
            r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}.", key
        )
        key = re.sub(r"^stages\.(\d+)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", key)
        released[key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")] = value
    released["head.weight"] = torch.zeros(1000, timm_state["stages.3.norm.weight"].shape[0])
    released["head.bias"] = torch.zeros(1000)
    return released


def test_pvt_release_checkpoint_loads_and_agrees(tmp_path):
    torch.manual_seed(1)
    source = VisualBackbone(name="avsac_tiny_pvt")
    released = to_pvt_release_layout(source.model.state_dict())
    assert "block1.0.attn.q.weight" in released and "patch_embed2.proj.weight" in released
    torch.save(released, tmp_path / "pvt_v2.pth")
    loaded = VisualBackbone(name="avsac_tiny_pvt", weights=tmp_path / "pvt_v2.pth")
    images = torch.randn(1, 3, 64, 64)
    for ours, theirs in zip(loaded(images), source(images), strict=True):
        assert torch.equal(ours, theirs)


def test_torchvision_resnet50_checkpoint_loads_and_agrees(tmp_path):
    torch.manual_seed(2)
    source = VisualBackbone(name="resnet50")
    state = dict(source.model.state_dict())  # timm's ResNet shares torchvision's names
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet50-19c8e357.pth")
    loaded = VisualBackbone(name="resnet50", weights=tmp_path / "resnet50-19c8e357.pth")
    images = torch.randn(1, 3, 64, 64)
    features = loaded(images)
    assert [f.shape[1] for f in features] == [256, 512, 1024, 2048]
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(features, source(images), strict=True))


def test_frozen_backbone_keeps_norms_in_eval_and_can_be_unfrozen():
    backbone = VisualBackbone(name="resnet50").train()
    assert not backbone.model.bn1.training
    running_mean = backbone.model.bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert torch.equal(backbone.model.bn1.running_mean, running_mean)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.set_frozen(False)
    assert backbone.model.bn1.training
    assert all(p.requires_grad for p in backbone.parameters())


def test_frozen_backbone_in_train_mode_as_the_official_avsegformer():
    """eval_when_frozen=false: no gradients, but BatchNorm uses and updates batch statistics and
    drop path stays on, as the official code's "frozen" backbone before its freeze_epochs."""
    backbone = VisualBackbone(name="resnet50", eval_when_frozen=False).train()
    assert backbone.model.bn1.training
    running_mean = backbone.model.bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert not torch.equal(backbone.model.bn1.running_mean, running_mean)
    assert not any(p.requires_grad for p in backbone.parameters())
    images = torch.randn(2, 3, 64, 64)
    for eval_when_frozen, stochastic in ((False, True), (True, False)):
        pvt = VisualBackbone(
            name="avsac_tiny_pvt",
            freeze=True,
            drop_path_rate=0.5,
            eval_when_frozen=eval_when_frozen,
        ).train()
        torch.manual_seed(0)
        first = pvt(images)[-1]
        torch.manual_seed(1)
        assert torch.equal(first, pvt(images)[-1]) != stochastic


def test_backbone_refuses_unknown_names_and_double_sources(tmp_path):
    with pytest.raises(ValueError, match="Unknown timm backbone 'pvt_v9'"):
        VisualBackbone(name="pvt_v9")
    with pytest.raises(ValueError, match=r"either weights\.visual=PATH or pretrained=true"):
        VisualBackbone(name="resnet50", weights=tmp_path / "x.pth", pretrained=True)


def slow_bilinear(feature: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Bilinear sample of [D, H, W] at normalised (x, y), zero outside, align_corners=False."""
    _, height, width = feature.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = torch.zeros(feature.shape[0])
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < width and 0 <= yi < height:
                total += weight * feature[:, yi, xi]
    return total


def test_deformable_sampling_equals_a_per_point_bilinear_reference():
    torch.manual_seed(3)
    shapes = [(6, 5), (3, 3), (2, 1)]
    batch, queries, heads, head_dim, points = 2, 4, 2, 3, 2
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim)
    # Some locations fall outside [0, 1] to exercise the zero padding.
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points)
    ours = multi_scale_deformable_sampling(value, shapes, locations, weights)
    starts = [0, 30, 39]
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                expected = torch.zeros(head_dim)
                for level, (height, width) in enumerate(shapes):
                    level_value = value[b, starts[level] : starts[level] + height * width, m]
                    feature = level_value.T.reshape(head_dim, height, width)
                    for p in range(points):
                        x, y = locations[b, q, m, level, p].tolist()
                        sample = slow_bilinear(feature, x, y)
                        expected += weights[b, q, m, level, p] * sample
                got = ours[b, q, m * head_dim : (m + 1) * head_dim]
                assert torch.allclose(got, expected, atol=1e-5)


def test_deformable_attention_starts_on_a_radial_grid_with_uniform_weights():
    attention = MultiScaleDeformableAttention(dim=16, levels=2, heads=4, points=2)
    offsets = attention.sampling_offsets.bias.view(4, 2, 2, 2)
    assert torch.allclose(offsets[0, 0, 0], torch.tensor([1.0, 0.0]))  # head 0: +x, 1 pixel
    assert torch.allclose(offsets[1, 1, 1], torch.tensor([0.0, 2.0]), atol=1e-6)  # head 1: +y
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(1, 20, 16)
    out = attention(value, reference_points_for(shapes, 1), value, shapes)
    assert out.shape == (1, 20, 16)


def test_sine_encoding_hand_values():
    encoding = SinePositionalEncoding(num_feats=4)(batch=2, height=2, width=3)
    assert encoding.shape == (2, 8, 2, 3)
    # Row index 1 at the top-left; features: sin(1), cos(1), sin(1/100), cos(1/100) for F = 4
    # (wavelengths 10000 ** (2 * (i // 2) / 4) = 1, 1, 100, 100).
    assert torch.allclose(
        encoding[0, :4, 0, 0],
        torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]),
    )
    # Column features come after the row features: column 3 (index 2) at the right edge.
    assert encoding[1, 4, 1, 2].item() == pytest.approx(math.sin(3))


def test_query_generator_parameter_count_and_shapes():
    generator = AudioQueryGenerator()
    assert sum(p.numel() for p in generator.parameters()) == 6_385_152  # AVSegFormer's 6.39M
    assert generator(torch.randn(3, 1, 256)).shape == (3, 300, 256)


def test_random_vggish_embeddings_differ_between_clips_and_normalize_standardises_them():
    torch.manual_seed(0)
    encoder = AudioEncoder(dim=8, normalize=True).train()
    examples = torch.randn(16, 1, 96, 64)
    with torch.no_grad():
        embeddings = encoder.vggish(examples)  # He-initialised: varies from clip to clip
        spread = embeddings.std(dim=0)[embeddings.std(dim=0) > 0]
        assert (spread / embeddings.mean().clamp_min(1e-6)).mean() > 0.1
        standardised = encoder.norm(embeddings)
    live = embeddings.std(dim=0) > 0.05  # variance far above BatchNorm's eps (1e-5)
    assert torch.allclose(
        standardised[:, live].mean(dim=0), torch.zeros(int(live.sum())), atol=1e-5
    )
    assert torch.allclose(
        standardised[:, live].std(dim=0, unbiased=False), torch.ones(int(live.sum())), atol=1e-2
    )
    assert isinstance(AudioEncoder(dim=8).norm, torch.nn.Identity)  # the paper's encoder


def test_the_random_vggish_is_the_same_tensors_on_every_build_and_leaves_the_run_seed_alone():
    torch.manual_seed(ENCODER_INIT_SEED)
    expected = VGGish()
    expected.reset_parameters()
    torch.manual_seed(7)
    draw = torch.rand(3)
    torch.manual_seed(7)
    builds = [random_vggish() for _ in range(3)]  # the third one is cloned from the kept copy
    assert torch.equal(torch.rand(3), draw)
    for vggish in builds:
        for name, tensor in expected.state_dict().items():
            assert torch.equal(vggish.state_dict()[name], tensor), name
    with torch.no_grad():
        builds[2].features[0].weight.add_(1.0)  # a build owns its tensors: the others keep theirs
    assert torch.equal(builds[1].features[0].weight, expected.features[0].weight)
    assert torch.equal(random_vggish().features[0].weight, expected.features[0].weight)


def test_a_vggish_built_for_its_shapes_on_meta_keeps_nothing(monkeypatch):
    """A second build in a process keeps a copy to clone from; one on the meta device (a model
    built for its shapes) once kept meta tensors there, and failed taking their digest."""
    from avsac_lit.models import vggish as module

    for name in ("_RANDOM_VGGISH_BUILDS", "_RANDOM_VGGISH_STATE", "_RANDOM_VGGISH_DIGEST"):
        monkeypatch.setattr(module, name, getattr(module, name))
    module._RANDOM_VGGISH_BUILDS, module._RANDOM_VGGISH_STATE = 1, None
    with torch.device("meta"):
        shapes = [random_vggish() for _ in range(2)]
    assert all(t.is_meta for build in shapes for t in build.state_dict().values())
    assert module._RANDOM_VGGISH_STATE is None
    torch.manual_seed(ENCODER_INIT_SEED)
    expected = VGGish()
    expected.reset_parameters()
    assert torch.equal(random_vggish().features[0].weight, expected.features[0].weight)


def test_a_kept_digest_follows_every_change_made_through_torch():
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    first = state_digest(module)
    assert state_digest(module) == first
    with torch.no_grad():
        module[0].weight[0, 0] += 1.0
    changed = state_digest(module)
    assert changed != first
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()})
    assert state_digest(module) == changed  # the same values again, so the same digest
    module[0].weight.data = module[0].weight.data.clone()
    module[0].weight.data[0, 0] -= 1.0  # a replaced tensor: its address is new
    assert state_digest(module) == first
    module.train()(torch.randn(5, 4))  # BatchNorm's running statistics change in place
    assert state_digest(module) != first
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fresh.load_state_dict(module.state_dict())
    assert state_digest(fresh) == state_digest(module)
    assert state_digest(module.double()) != state_digest(fresh)


def test_a_float64_copy_has_the_float32_digest_in_the_dtype_it_was_built_in():
    """64-true converts the frozen encoders to float64 (exact): compared in float32 they are
    still what their config builds, so checkpoints leave them out; a value float32 cannot hold
    gives another digest."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    built = state_digest(module)
    assert state_digest(module, torch.float32) == built
    wide = copy.deepcopy(module).double()
    assert state_digest(wide) != built
    assert state_digest(wide, torch.float32) == built
    with torch.no_grad():
        wide[0].weight[0, 0] += 1e-12  # below float32's resolution, but another tensor
    assert state_digest(wide, torch.float32) != built
