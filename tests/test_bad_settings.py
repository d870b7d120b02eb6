"""Settings and files a user gets wrong, each refused with a message that names the setting or
the file, says what was expected and how to fix it: eval's data root (never mistaken for a
missing encoder weight file), the optimiser's and the data's numbers (checked before anything is
built), and a checkpoint that is a bare state dict or carries no config."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from avsac_lit.data import DatasetLayoutError
from avsac_lit.eval import evaluate
from avsac_lit.eval import main as eval_main
from avsac_lit.run.assemble import build_run
from avsac_lit.train import train
from tests.helpers import eval_run, tiny_run

ENCODER_ADVICE = "does not store its frozen encoders"


@pytest.fixture
def last_ckpt(trained_runs: Path) -> Path:
    """A checkpoint of the tiny MS3 run; it leaves out the frozen VGGish (rebuilt on loading)."""
    return trained_runs / "0" / "checkpoints" / "last.ckpt"


def edited_checkpoint(source: Path, destination: Path, edit) -> Path:
    """A copy of ``source`` with ``edit`` applied to its contents (tensors left as they are)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, destination)
    return destination


# 1. eval's data root


@pytest.fixture
def real_data_ckpt(last_ckpt: Path, tmp_path: Path) -> Path:
    """The checkpoint as if trained on a copy of AVSBench: its data config names no synthetic
    generator, so a data root is checked, never generated."""

    def on_real_data(checkpoint: dict) -> None:
        checkpoint["avsac_lit"]["config"]["data"]["synthetic"] = None

    return edited_checkpoint(last_ckpt, tmp_path / "real.ckpt", on_real_data)


@pytest.mark.parametrize("kind", ["missing", "empty", "unrelated", "another_task"])
def test_eval_on_a_data_root_that_is_not_the_tasks_says_so_not_that_encoders_are_missing(
    kind, real_data_ckpt, synth_trees, tmp_path
):
    root = tmp_path / kind
    if kind == "empty":
        root.mkdir()
    elif kind == "unrelated":
        (root / "holiday").mkdir(parents=True)
        (root / "holiday" / "notes.txt").write_text("not a data set")
    elif kind == "another_task":
        root = synth_trees["s4"]
    saved = torch.load(real_data_ckpt, weights_only=True)["avsac_lit"]
    assert "net.audio.vggish" in saved["rebuilt_encoders"]  # where the wrong advice came from
    with pytest.raises(DatasetLayoutError) as raised:
        evaluate(eval_run(real_data_ckpt, tmp_path / "eval", [f"data.root={root}"]))
    message = str(raised.value)
    assert message.startswith(f"data.root={root}: ")
    if kind == "another_task":
        assert "holds AVSBench S4" in message and "Point data.root at a copy of MS3" in message
    else:
        assert "Expected layout:" in message and "ms3_meta_data.csv" in message
    assert ENCODER_ADVICE not in message and "avsac_lit.export" not in message


def test_eval_still_names_a_missing_encoder_weight_file(last_ckpt, tmp_path):
    # A guard for the fix above: the encoder advice stays for the case it is meant for.
    gone = tmp_path / "weights" / "vggish-10086976.pth"

    def weight_file_moved(checkpoint: dict) -> None:
        checkpoint["avsac_lit"]["config"]["model"]["net"]["audio"]["weights"] = str(gone)

    moved = edited_checkpoint(last_ckpt, tmp_path / "moved.ckpt", weight_file_moved)
    with pytest.raises(FileNotFoundError, match=rf"{ENCODER_ADVICE}.*{re.escape(str(gone))}"):
        evaluate(eval_run(moved, tmp_path / "eval"))


# 2. Numbers of the optimiser and the data, checked before anything is built


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.optimizer.lr=abc", r"model\.optimizer\.lr='abc': expected a positive number, "
                                   r"e\.g\. model\.optimizer\.lr=2e-5\."),
        ("model.optimizer.lr=-1", r"model\.optimizer\.lr=-1: expected a positive number"),
        ("model.optimizer.weight_decay=-0.1",
         r"model\.optimizer\.weight_decay=-0\.1: expected a number >= 0, "
         r"e\.g\. model\.optimizer\.weight_decay=0\.01\."),
        ("+model.optimizer.betas=[0.9,1.5]",
         r"model\.optimizer\.betas=\[0\.9, 1\.5\]: expected two numbers in \[0, 1\), "
         r"e\.g\. model\.optimizer\.betas=\[0\.9,0\.999\]\."),
        ("model.warmup_steps=abc", r"model\.warmup_steps='abc': expected a whole number >= 0"),
        ("model.scheduler.T_max=abc", r"model\.scheduler\.T_max='abc': expected a whole number "
                                      r">= 1, e\.g\. model\.scheduler\.T_max=30\."),
        ("data.img_size=abc", r"data\.img_size='abc': expected a multiple of 4, at least 32 "
                              r"\(pixels: .*\), e\.g\. data\.img_size=224\."),
        ("data.img_size=0", r"data\.img_size=0: expected a multiple of 4, at least 32"),
        ("data.img_size=96.5", r"data\.img_size=96\.5: expected a multiple of 4"),
        # The masks come out 4 * ceil(63 / 4) = 64 px: a bare size mismatch in the loss.
        ("data.img_size=63", r"data\.img_size=63: expected a multiple of 4, at least 32 "
                             r"\(pixels: the masks are predicted at a quarter of it and upsampled "
                             r"4x, and the PVT backbones need 8 x 8 of that quarter\), "
                             r"e\.g\. data\.img_size=224\."),
        # PVT's first stage: "Kernel size can't be greater than actual input size".
        ("data.img_size=28", r"data\.img_size=28: expected a multiple of 4, at least 32"),
        # seed_everything: "-1 is not in bounds, numpy accepts from 0 to 4294967295".
        ("seed=-1", r"seed=-1: expected a whole number from 0 to 4294967295 \(NumPy's seeds\), "
                    r"or null for no seeding, e\.g\. seed=123\."),
        ("seed=4294967296", r"seed=4294967296: expected a whole number from 0 to 4294967295"),
        ("seed=abc", r"seed='abc': expected a whole number from 0 to 4294967295"),
        ("data.train_batch_size=abc", r"data\.train_batch_size='abc': expected a whole number "
                                      r">= 1 \(clips\), e\.g\. data\.train_batch_size=4\."),
        ("data.eval_batch_size=0", r"data\.eval_batch_size=0: expected a whole number >= 1"),
        ("data.num_workers=-1", r"data\.num_workers=-1: expected a whole number >= 0 \(worker "
                                r"processes; 0 loads in the main process\), e\.g\. "
                                r"data\.num_workers=4\."),
    ],
)  # fmt: skip
def test_a_bad_number_is_named_before_anything_is_built(override, expected, synth_trees, tmp_path):
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, [override])
    with pytest.raises(ValueError, match=expected):
        build_run(cfg)
    assert not (tmp_path / "config.yaml").exists()  # nothing was built or written


def test_a_scheduler_number_from_an_interpolation_says_where_it_comes_from(synth_trees, tmp_path):
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, ["trainer.max_epochs=-1"])
    with pytest.raises(ValueError, match=r"model\.scheduler\.T_max=-1 \(from "
                       r"\$\{trainer\.max_epochs\}\): expected a whole number >= 1"):  # fmt: skip
        build_run(cfg)


def test_train_stops_on_a_learning_rate_that_is_not_a_number(synth_trees, tmp_path):
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, ["model.optimizer.lr=abc"])
    with pytest.raises(ValueError, match=r"model\.optimizer\.lr='abc': expected a positive"):
        train(cfg)
    assert not (tmp_path / "config.yaml").exists()


def test_eval_names_a_bad_test_time_batch_size(last_ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"data\.eval_batch_size='two': expected a whole number"):
        evaluate(eval_run(last_ckpt, tmp_path / "eval", ["data.eval_batch_size=two"]))


# 3. A bare state dict, and a checkpoint without its config


def test_eval_of_a_bare_state_dict_advises_a_command_that_works(last_ckpt, tmp_path):
    net_only = {k: v for k, v in torch.load(last_ckpt, weights_only=True)["state_dict"].items()}
    bare = tmp_path / "weights.ckpt"
    torch.save(net_only, bare)
    with pytest.raises(ValueError) as raised:
        evaluate(eval_run(bare, tmp_path / "eval"))
    message = str(raised.value)
    assert f"ckpt_path={bare} holds only tensors" in message
    assert "logs/train/runs/<time>/checkpoints/last.ckpt" in message
    assert "config=" not in message  # eval could not use it: no advice to pass one
    # Passing a config anyway changes nothing: the file is still no checkpoint to test.
    with pytest.raises(ValueError, match=r"holds only tensors"):
        evaluate(eval_run(bare, tmp_path / "eval", [f"++config={last_ckpt.parents[1]}/x.yaml"]))


def test_eval_of_a_published_avsegformer_state_dict_advises_converting_it(tmp_path):
    official = {
        "module.backbone.block1.0.norm1.weight": torch.ones(4),
        "module.vggish.features.0.weight": torch.ones(4),
        "module.head.fc.4.weight": torch.ones(1, 32, 1, 1),
    }
    bare = tmp_path / "AVSegFormer_pvt2_ms3.pth"
    torch.save(official, bare)
    with pytest.raises(ValueError) as raised:
        evaluate(eval_run(bare, tmp_path / "eval"))
    message = str(raised.value)
    converted = tmp_path / "AVSegFormer_pvt2_ms3_converted.ckpt"
    assert "published AVSegFormer checkpoint" in message
    assert (
        f"python -m avsac_lit.convert +experiment=<s4|ms3> backbone=pvt_v2_b5 source={bare} "
        f"output={converted}" in message
    )
    assert f"python -m avsac_lit.eval ckpt_path={converted}" in message
    assert "config=" not in message


def test_eval_takes_the_config_it_advises_for_a_checkpoint_without_one(
    last_ckpt, tmp_path, monkeypatch
):
    def without_config(checkpoint: dict) -> None:
        del checkpoint["avsac_lit"]["config"]

    old = edited_checkpoint(last_ckpt, tmp_path / "old.ckpt", without_config)
    with pytest.raises(FileNotFoundError, match=r"carries no config.*config=logs/train/runs/"):
        evaluate(eval_run(old, tmp_path / "advised"))

    # The command as advised: config= on eval's command line.
    config = last_ckpt.parents[1] / "config.yaml"
    arguments = [
        f"ckpt_path={old}", f"config={config}", "data.num_workers=0", "extras.print_config=false",
        "~logger", f"hydra.run.dir={tmp_path / 'eval'}",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["avsac_lit.eval", *arguments])
    eval_main()
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert "test/miou" in (tmp_path / "eval" / "metrics.json").read_text()


def test_eval_refuses_a_config_for_a_checkpoint_that_carries_its_own(last_ckpt, tmp_path):
    config = last_ckpt.parents[1] / "config.yaml"
    with pytest.raises(ValueError, match=rf"config={re.escape(str(config))}: .* carries the "
                       "config of the run that wrote it.*Leave config= out"):  # fmt: skip
        evaluate(eval_run(last_ckpt, tmp_path / "eval", [f"++config={config}"]))
