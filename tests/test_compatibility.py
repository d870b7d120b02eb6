"""What version 0.7.1 wrote, before the package was laid out in layers, still works: its
checkpoints name its classes' old places (``avsac_lit.module.AVSLitModule``, ...), and they still
evaluate, predict and resume; a run directory it left stopped continues as if it had never been
stopped (tests/fixtures/v0_7_1/README.md: the fixture and how to remake it)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from avsac_lit.eval import evaluate
from avsac_lit.inference.trained import load_trained
from avsac_lit.predict import predict
from avsac_lit.train import train
from tests.helpers import eval_run, tiny_run
from tests.test_predict import encode, synthetic_video

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0_7_1" / "run"
# The fixture's run (tests/fixtures/v0_7_1/make.py) but its stop signal.
SETTINGS = [
    "backbone=tiny_pretrained",
    "seed=1",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "test=false",
    "logger=csv",
    "callbacks.overlays.clips=1",
]


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old_run"
    shutil.copytree(FIXTURE, run)
    return run


def test_the_fixture_is_what_0_7_1_wrote():
    config = OmegaConf.load(FIXTURE / "config.yaml")
    assert config.model._target_ == "avsac_lit.module.AVSLitModule"
    assert config.callbacks.model_checkpoint._target_ == "avsac_lit.callbacks.ResumableCheckpoint"
    checkpoint = torch.load(FIXTURE / "checkpoints" / "last.ckpt", weights_only=True)
    assert "version" not in checkpoint["avsac_lit"]  # 0.8.0 began recording it
    assert checkpoint["global_step"] == 4 and checkpoint["epoch"] == 1  # stopped mid-epoch


def test_a_0_7_1_checkpoint_evaluates_and_predicts(old_run, trained_runs, tmp_path):
    data = trained_runs.parent / "data"  # the fixture's data: 20 SynthAVS-MS3 clips, seed 3
    last = old_run / "checkpoints" / "last.ckpt"
    metrics = evaluate(eval_run(last, tmp_path / "eval", [f"data.root={data}"]))
    assert 0.0 <= metrics["test/miou"] <= 1.0 and math.isfinite(metrics["test/loss"])
    recorded = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert recorded["metrics"]["test/miou"] == metrics["test/miou"]

    model = load_trained(last)
    assert model.config.model._target_ == "avsac_lit.system.module.AVSLitModule"
    frames, audio = synthetic_video(data, seconds=5)
    video = encode(tmp_path / "clip.mp4", frames, audio)
    files = predict(last, video, tmp_path / "predicted")
    predictions = json.loads(files["json"].read_text())
    assert predictions["seconds"] == 5 and len(list(files["masks"].glob("frame_*.png"))) == 5


def read_rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_a_0_7_1_run_directory_resumes_and_ends_as_if_never_stopped(
    old_run, trained_runs, tmp_path
):
    """The same run, continued in its directory by this version from where 0.7.1 stopped it,
    ends with the weights and the log of the run trained here without a stop."""
    data = trained_runs.parent / "data"
    resumed = train(tiny_run("ms3", data, old_run, SETTINGS))
    whole = train(tiny_run("ms3", data, tmp_path / "whole", SETTINGS))
    assert resumed == whole
    state = torch.load(old_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state.keys() == expected["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(state[name], value), name
    assert read_rows(old_run) == read_rows(tmp_path / "whole")
