"""The model configs compose into the models, and the model-cost tool reports on them."""

from __future__ import annotations

import json
import sys

import pytest
from hydra.utils import instantiate

from avsac_lit.models.avsac import AVSAC
from avsac_lit.models.avsegformer import AVSegFormer
from avsac_lit.models.losses import AVSCriterion
from avsac_lit.run.assemble import compose_config
from tests import commands


def compose_summary(overrides: list[str]):
    return compose_config("model_cost", overrides)


@pytest.mark.parametrize("model", ["avsac", "avsegformer"])
@pytest.mark.parametrize("backbone", ["pvt_v2_b5", "resnet50", "tiny"])
def test_every_model_and_backbone_composes(model, backbone):
    cfg = compose_summary([f"model={model}", f"backbone={backbone}"])
    assert cfg.model.net.visual.name == {"tiny": "avsac_tiny_pvt"}.get(backbone, backbone)
    assert cfg.model.net.audio.weights is None


def test_override_names_reach_the_built_modules():
    cfg = compose_summary(
        [
            "backbone=tiny",
            "model.net.bridge=audio_to_vision",
            "model.net.agca=false",
            "model.net.decoder_layers=2",
            "model.loss.sync=framewise_l2",
            "model.loss.seg=dice",
            "model.num_classes=3",
        ]
    )
    net = instantiate(cfg.model.net)
    criterion = instantiate(cfg.model.loss)
    assert isinstance(net, AVSAC)
    assert net.bavd.bridge == "audio_to_vision"
    assert len(net.bavd.agv_layers) == 2
    assert net.bavd.agv_layers[0].agca == "none"
    assert net.num_classes == 3
    assert isinstance(criterion, AVSCriterion)
    assert (criterion.sync, criterion.seg, criterion.num_classes) == ("framewise_l2", "dice", 3)


def test_avsegformer_config_builds_the_baseline_with_its_loss():
    cfg = compose_summary(["model=avsegformer", "backbone=tiny", "model.num_classes=1"])
    assert isinstance(instantiate(cfg.model.net), AVSegFormer)
    criterion = instantiate(cfg.model.loss)
    assert (criterion.seg, criterion.sync, criterion.mix_weight) == ("dice", "none", 0.1)


def test_summary_prints_counts_and_ends_with_json():
    command = [
        sys.executable,
        "-m",
        "avsac_lit.model_cost",
        "backbone=tiny",
        "task=avss",
        "img_size=64",
    ]
    result = commands.run(command, timeout=300, check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 10
    assert summary["total_params"] == summary["trainable_params"] + summary["frozen_params"]
    assert summary["frozen_params"] == 72_141_184  # VGGish; the tiny backbone trains
    assert summary["flops"] > 0
    assert "bavd" in result.stdout
