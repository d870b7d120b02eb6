"""The demo's pretrained tiny PVT: what avsac_lit.pretrain writes, what the package ships, and
which runs freeze it (the demo) or train theirs from scratch (the synthetic twins)."""

from __future__ import annotations

import pytest
import torch

from avsac_lit.data.scenes import CATEGORIES
from avsac_lit.models.backbone import TINY_PVT, VisualBackbone, tiny_pvt_weights
from avsac_lit.models.weights import load_checkpoint_file
from avsac_lit.pretrain import CategoryHead, category_frames, pixel_accuracy, pretrain, save
from avsac_lit.run.assemble import compose_config


def test_pretraining_writes_a_weights_file_the_backbone_loads(tmp_path):
    backbone, head, record = pretrain(clips=12, epochs=1, size=32, batch_size=10)
    path = tmp_path / "tiny.pth"
    save(path, backbone, head, record)
    loaded = VisualBackbone(name=TINY_PVT, weights=path, freeze=True)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, backbone[name]), name
    assert record["settings"]["held_out_clips"] == 5  # whole clips, never fewer than 5
    assert 0 <= record["history"][0]["held_out_pixel_accuracy"] <= 1
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.model.training


def test_the_packaged_backbone_names_the_objects_of_clips_it_never_saw():
    """The shipped weights, frozen as the demo freezes them, with the head they were trained with:
    the category of 4 of 5 object pixels, at least, on clips of another seed (chance: 1 in 10)."""
    backbone = VisualBackbone(name=TINY_PVT, pretrained=True, freeze=True)
    stored = torch.load(tiny_pvt_weights(), map_location="cpu", weights_only=True)
    head = CategoryHead(in_channels=backbone.channels, classes=len(CATEGORIES) + 1)
    head.load_state_dict(stored["head"])
    size = stored["pretraining"]["settings"]["size"]
    frames, labels = category_frames(clips=4, seed=3, size=size)
    with torch.no_grad():
        logits = head.eval()(backbone(frames), labels.shape[-2:])
    assert pixel_accuracy(logits, labels) >= 0.8
    assert stored["pretraining"]["settings"]["seed"] != 0  # not the trees' stream (data.synthetic)


def test_timm_pretrained_loads_the_packaged_file_and_only_as_a_backbone():
    import timm

    model = timm.create_model(TINY_PVT, pretrained=True, num_classes=0)
    expected = load_checkpoint_file(tiny_pvt_weights())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(ValueError, match="num_classes=0"):
        timm.create_model(TINY_PVT, pretrained=True)


@pytest.mark.parametrize(
    ("overrides", "pretrained"),
    [
        (["+experiment=synthetic_ms3"], True),  # the demo
        # The twins of Tables 2-5 freeze it too, as the paper freezes its PVT (issue 40).
        (["+table=synthetic_table2"], True),
        (["+table=synthetic_table5", "experiment=synthetic_ms3"], True),  # a twin's sweep point
        (["+table=synthetic_table1"], False),  # Table 1's twin trains the tiny PVT from scratch
        (["+experiment=synthetic_ms3", "backbone=tiny"], False),
    ],
)
def test_the_demo_and_the_twins_freeze_the_pretrained_backbone(overrides, pretrained, tmp_path):
    backbone = compose_config("train", overrides, tmp_path).backbone
    assert backbone.name == TINY_PVT
    assert backbone.pretrained is pretrained and backbone.freeze is pretrained
