"""``avsac_lit.convert``: published AVSegFormer checkpoints become checkpoints of the suite whose
logits equal the official code's.

The expected logits come from the official code (vvvb-github/AVSegFormer at 7083cb6), run once
outside this repository; ``tests/fixtures/avsegformer_parity/README.md`` gives the recipe to
remake them. The fixture holds, per case, the official ``state_dict()`` layout (keys and
shapes, ``official_keys.json``) and the inputs and logits (``<case>.npz``); the weights are not
stored but regenerated from a seed by the rule in ``tests/avsegformer_official.py``. Both sides
run in float64, so the comparison measures the function each code computes rather than the
float32 rounding in which any two implementations differ (docs/model.md gives the float32
figures).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image

from avsac_lit.checkpoints.official import (
    DROPPED,
    ConversionError,
    official_to_suite,
    read_official,
    rename,
)
from avsac_lit.convert import convert
from avsac_lit.eval import evaluate
from avsac_lit.inference.trained import load_trained
from avsac_lit.predict import predict
from tests import commands
from tests.avsegformer_official import (
    CASES,
    FIXTURES,
    official_layout,
    official_state_dict,
)
from tests.helpers import compose_config, eval_run
from tests.test_notebooks import execute, outputs
from tests.test_predict import FPS, encode, tone

TOLERANCE = 1e-4  # max abs logit difference (the fixture's float32 storage alone gives ~2e-6)
# "Train mode with dropout off": the official side had its transformer dropout and PVT's drop
# path set to 0; our converted model gets the same through its config.
NO_DROPOUT = ["model.net.dropout=0", "backbone.drop_path_rate=0"]


def convert_command(case_name: str, source: Path, output: Path, *extra: str) -> list[str]:
    case = CASES[case_name]
    return [
        f"+experiment={case.experiment}", f"backbone={case.backbone}",
        f"source={source}", f"output={output}", *extra,
    ]  # fmt: skip


def convert_config(case_name: str, source: Path, output: Path, folder: Path, *extra: str):
    """The converter's config, composed as its command line composes it (setting last)."""
    overrides = [*convert_command(case_name, source, output, *extra), "+setting=avsegformer"]
    return compose_config("convert", overrides, folder)


def run_converter(case_name: str, folder: Path, *extra: str) -> Path:
    """The documented command, in a subprocess, on a file in the official layout and with the
    rule's weights; returns the converted checkpoint. The source file is deleted after."""
    source = folder / "official.pth"
    torch.save(official_state_dict(official_layout(case_name)), source)
    output = folder / "converted.ckpt"
    arguments = convert_command(case_name, source, output, *extra)
    command = [sys.executable, "-m", "avsac_lit.convert", *arguments, f"hydra.run.dir={folder}"]
    result = commands.run(command, cwd=folder)
    source.unlink()
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def parity_inputs(case_name: str) -> dict[str, torch.Tensor]:
    fixture = np.load(FIXTURES / f"{case_name}.npz")
    return {name: torch.from_numpy(fixture[name]) for name in fixture.files}


def assert_official_logits(checkpoint: Path, case_name: str) -> None:
    """Eval mode, and train mode with dropout off: logits within TOLERANCE of the official
    ones; AVSS padding frames exactly zero."""
    fixture = parity_inputs(case_name)
    net = load_trained(checkpoint).net.double()
    inputs = (fixture["frames"][None].double(), fixture["audio"][None].double(),
              fixture["frame_valid"][None])  # fmt: skip
    for mode in ("eval", "train"):
        net.train(mode == "train")
        with torch.set_grad_enabled(mode == "train"):
            logits = net(*inputs)["logits"][0].detach()
        expected = fixture[f"logits_{mode}"].double()
        assert logits.shape == expected.shape
        difference = (logits - expected).abs().max().item()
        print(f"{case_name} {mode}: max |logit difference| {difference:.3g}")
        assert difference <= TOLERANCE, (case_name, mode, difference)
        assert logits[~fixture["frame_valid"]].eq(0).all()


@pytest.fixture(scope="module")
def converted_r50(tmp_path_factory) -> Path:
    """The S4 ResNet-50 case converted by the documented command, shared by the tests that
    need a converted checkpoint (eval, predict, the notebook); at 64 px, which its config
    records, so that they run in seconds."""
    folder = tmp_path_factory.mktemp("converted_r50")
    return run_converter("s4_r50", folder, *NO_DROPOUT, "data.img_size=64")


def test_resnet50_s4_logits_equal_the_official_code(converted_r50):
    assert_official_logits(converted_r50, "s4_r50")


# S4 with PVT-v2-b5 only combines what the other two cases check (the PVT backbone: AVSS; the
# S4 head and loss: ResNet-50), at 25 s: make test-full runs it.
@pytest.mark.parametrize("case_name", [pytest.param("s4_pvt", marks=pytest.mark.slow), "avss_pvt"])
def test_pvt_logits_equal_the_official_code(case_name, tmp_path):
    checkpoint = run_converter(case_name, tmp_path, *NO_DROPOUT)
    try:
        assert_official_logits(checkpoint, case_name)
    finally:
        checkpoint.unlink()


def test_the_converted_checkpoint_carries_its_model_recipe_and_origin(converted_r50):
    checkpoint = torch.load(converted_r50, map_location="cpu", weights_only=True, mmap=True)
    saved = checkpoint["avsac_lit"]
    config = saved["config"]
    assert config["model"]["name"] == "avsegformer" and config["backbone"]["name"] == "resnet50"
    assert config["model"]["num_classes"] == 1 and config["data"]["task"] == "s4"
    # The official recipe for S4: batch 2, backbone trained from epoch 5, train mode while frozen.
    assert config["data"]["train_batch_size"] == 2
    assert config["callbacks"]["unfreeze_backbone"]["epochs"] == 5
    assert config["backbone"]["eval_when_frozen"] is False
    assert config["weights"] == {"visual": None, "audio": None}
    origin = saved["converted_from"]
    assert len(origin["sha256"]) == 64 and origin["file"].endswith("official.pth")
    # ResNet's unused second branch (layer3_2, layer4_2) and the head's fpn and attn_fc.
    layout = official_layout("s4_r50")
    assert origin["dropped_keys"] == sum(rename(key) is None for key, _ in layout) > 0
    # The model's weights, and the training system's best validation score (none yet).
    assert {key for key in checkpoint["state_dict"] if not key.startswith("net.")} == {
        "val_miou_best.max_value"
    }


# Refusals and the layout table, on shapes only: meta tensors take no memory.


def meta_layout(case_name: str) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in official_layout(case_name)}


def model_shapes(case_name: str) -> dict[str, torch.Size]:
    case = CASES[case_name]
    classes = 71 if case.experiment == "avss" else 1
    cfg = convert_config(case_name, Path("x"), Path("y"), Path("run"))
    with open_dict(cfg):
        cfg.model.num_classes = classes
        cfg.weights.visual = cfg.weights.audio = None
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    return {key: value.shape for key, value in net.state_dict().items()}


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_every_official_key_is_renamed_or_deliberately_dropped(case_name):
    layout = meta_layout(case_name)
    shapes = model_shapes(case_name)
    mapped = official_to_suite(layout, shapes, source="layout")
    assert set(mapped) == set(shapes)
    dropped = {key for key in layout if rename(key) is None}
    assert {key.split(".")[1] for key in dropped} == (
        {"fpn", "attn_fc", "layer3_2", "layer4_2"}
        if CASES[case_name].backbone == "resnet50"
        else {"fpn", "attn_fc"}
    )
    assert all(any(key.startswith(p.replace("\\", "")) for p in DROPPED) for key in dropped)


@pytest.fixture
def r50_source(tmp_path):
    """Write a state dict (meta tensors) to a file; returns a function of the dict -> path."""

    def write(state_dict: dict, name: str = "official.pth") -> Path:
        path = tmp_path / name
        torch.save(state_dict, path)
        return path

    return write


def convert_s4_r50(source: Path, tmp_path: Path, *extra: str) -> Path:
    return convert(convert_config("s4_r50", source, tmp_path / "out.ckpt", tmp_path, *extra))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("remove", "head.out_conv.0.bias"),
        ("reshape", "head.transformer.decoder.layers.3.linear1.weight"),
        ("add", "head.extra_conv.weight"),
    ],
)
def test_a_key_removed_reshaped_or_unknown_is_refused_by_name(change, named, r50_source, tmp_path):
    state_dict = meta_layout("s4_r50")
    if change == "remove":
        del state_dict[named]
    elif change == "reshape":
        state_dict[named] = torch.empty(1024, 256, device="meta")
    else:
        state_dict[named] = torch.empty(3, 3, device="meta")
    source = r50_source(state_dict)
    with pytest.raises(ConversionError) as error:
        convert_s4_r50(source, tmp_path)
    message = str(error.value)
    assert str(source) in message and named in message
    if change == "remove":
        assert "model keys the file does not fill" in message
        assert "mask_feature.out_conv.0.bias" in message
    elif change == "reshape":
        assert "file [1024, 256], model [2048, 256]" in message
    else:
        assert "no counterpart" in message
    assert not (tmp_path / "out.ckpt").exists()


def test_wrong_backbone_task_or_file_is_refused_with_the_fix(r50_source, tmp_path):
    source = r50_source(meta_layout("s4_r50"))
    with pytest.raises(ConversionError, match=r"holds a resnet50 backbone.*pass backbone=resnet50"):
        convert_s4_r50(source, tmp_path, "backbone=pvt_v2_b5")
    avss = r50_source(meta_layout("avss_pvt"), "avss.pth")
    with pytest.raises(ConversionError, match=r"predicts 71 classes, which is not a s4 model"):
        convert(convert_config("s4_pvt", avss, tmp_path / "out.ckpt", tmp_path))
    ours = r50_source({"net.head.to_mask.4.weight": torch.empty(1, 32, 1, 1, device="meta")})
    with pytest.raises(ConversionError, match="not an AVSegFormer checkpoint of the official"):
        convert_s4_r50(ours, tmp_path)


def test_dataparallel_prefix_and_state_dict_wrapper_are_accepted(r50_source):
    layout = meta_layout("s4_r50")
    plain = read_official(r50_source(layout, "plain.pth"))
    prefixed = read_official(r50_source({f"module.{k}": v for k, v in layout.items()}, "dp.pth"))
    wrapped = read_official(r50_source({"state_dict": layout, "epoch": 3}, "wrapped.pth"))
    assert list(plain) == list(prefixed) == list(wrapped) == list(layout)


# The converted checkpoint in the suite's tools.


@pytest.fixture(scope="module")
def evaluated_r50(converted_r50, synth_trees, tmp_path_factory) -> tuple[Path, list[str]]:
    """An ``avsac_lit.eval`` run of the converted checkpoint on the tiny SynthAVS-S4 tree:
    (its run directory, its overrides)."""
    overrides = [f"data.root={synth_trees['s4']}"]
    run_dir = tmp_path_factory.mktemp("eval_r50")
    evaluate(eval_run(converted_r50, run_dir, overrides))
    return run_dir, overrides


def test_eval_scores_a_converted_checkpoint_as_the_model_it_holds(evaluated_r50, converted_r50):
    run_dir, _ = evaluated_r50
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["model"] == "avsegformer" and record["backbone"] == "resnet50"
    assert Path(record["checkpoint"]) == converted_r50.resolve()
    assert 0.0 <= record["metrics"]["test/miou"] <= 1.0


def test_predict_segments_a_video_with_a_converted_checkpoint(converted_r50, tmp_path):
    frames = [np.full((48, 64, 3), 30 * (k // FPS) + 60, np.uint8) for k in range(2 * FPS)]
    video = encode(tmp_path / "clip.mp4", frames, tone(2.0))
    files = predict(converted_r50, video, tmp_path / "out", task="s4")
    masks = sorted(files["masks"].glob("*.png"))
    assert [m.name for m in masks] == ["frame_0001.png", "frame_0002.png"]
    with Image.open(masks[0]) as mask:
        assert mask.size == (64, 48) and set(np.unique(np.asarray(mask))) <= {0, 255}
    record = json.loads(files["json"].read_text())
    assert record["task"] == "s4" and record["seconds"] == 2


def test_results_notebook_reads_an_eval_run_of_a_converted_checkpoint(evaluated_r50):
    run_dir, _ = evaluated_r50
    notebook = execute("results.ipynb", {"AVSAC_RUN_DIR": str(run_dir)})
    markdown = "\n".join(outputs(notebook, "text/markdown"))
    assert "**avsegformer** on **s4**" in markdown and "evaluation" in markdown
    assert "`test/miou`" in markdown
    printed = "".join(outputs(notebook, "stream"))
    assert "no csv logger" in printed and "converted.ckpt: avsegformer" in printed
    assert "1 test clip is too few" in printed  # the tiny tree's test split has one clip
    assert len(outputs(notebook, "image/png")) == 1  # that clip; no training curve
