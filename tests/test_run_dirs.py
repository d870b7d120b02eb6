"""Never write into a user's data or over an earlier run; never end a run on a non-finite result
(docs/bad_inputs.md rows 47-52)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from avsac_lit.build import build_run
from avsac_lit.data.synthetic import generate
from avsac_lit.eval import evaluate
from avsac_lit.module import NonFiniteError
from avsac_lit.resume import check_run_directory
from avsac_lit.run_record import write_metrics
from avsac_lit.train import train
from tests import commands
from tests.helpers import CONF, eval_run, tiny_run


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_the_generator_never_writes_into_a_users_dataset(synth_copy, tmp_path):
    """`+experiment=synthetic_ms3 data.root=<a real MS3 copy>` used to overwrite its
    ms3_meta_data.csv, add 73 synthetic files and train on them, exiting 0."""
    real = synth_copy("ms3")
    (real / "manifest.json").unlink()  # a user's copy: the generator's manifest is not there
    before = snapshot(real)
    cfg = tiny_run("ms3", real, tmp_path / "run", ["++data.synthetic={videos:8,seed:1,size:64}"])
    with pytest.raises(FileExistsError, match=rf"Refusing to generate SynthAVS into {real}: it "
                       r"is not empty \(ms3_data, ms3_meta_data.csv"):  # fmt: skip
        build_run(cfg)  # before any model is built
    with pytest.raises(FileExistsError, match=r"Nothing was written\. Choose a new or empty"):
        generate("ms3", real, videos=8, size=64)
    assert snapshot(real) == before


def test_the_generator_writes_into_an_empty_directory_or_over_its_own_tree(tmp_path):
    """A killed generation leaves its first manifest (marked incomplete): generated again over,
    and never taken for a complete tree."""
    out = tmp_path / "tree"
    out.mkdir()
    generate("s4", out, videos=3, size=32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    manifest.pop("splits")
    manifest["complete"] = False  # as a kill midway leaves it
    (out / "manifest.json").write_text(json.dumps(manifest))
    from avsac_lit.data.datamodule import _has_synthetic_tree

    assert not _has_synthetic_tree(out, "s4", manifest["settings"])
    generate("s4", out, videos=3, size=32)
    assert _has_synthetic_tree(out, "s4", manifest["settings"])


def earlier_run(run_dir: Path, overrides: list[str], finished: bool, checkpoint: bool) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run_dir / "config.yaml").write_text("seed: 1\n")
    if finished:
        (run_dir / "metrics.json").write_text('{"metrics": {"test/miou": 0.5}}\n')
    if checkpoint:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")


def test_a_run_directory_of_another_command_is_refused_with_both_ways_on(tmp_path):
    """A run started in a used directory used to overwrite its metrics.json, metrics.csv,
    config.yaml and train.log, and write last-v1.ckpt beside the old last.ckpt."""
    command = "python -m avsac_lit.train"
    run = tmp_path / "stopped"
    earlier_run(run, ["seed=1"], finished=False, checkpoint=True)
    with pytest.raises(FileExistsError) as refused:
        check_run_directory(run, ["seed=2"], resumes=True, command=command)
    message = str(refused.value)
    assert f"{run} holds an earlier run ({command} seed=1), which this command (seed=2)" in message
    assert f"To resume it, run its own command again: {command} seed=1 hydra.run.dir={run}" in (
        message
    )
    assert "choose a new directory: hydra.run.dir=NEW_DIR" in message
    check_run_directory(run, ["seed=1"], resumes=True, command=command)  # the same: it resumes
    finished = tmp_path / "finished"
    earlier_run(finished, ["seed=1"], finished=True, checkpoint=True)
    with pytest.raises(FileExistsError, match="It has finished: its results stay as they are"):
        check_run_directory(finished, ["seed=2"], resumes=True, command=command)
    with pytest.raises(FileExistsError, match="It has finished"):  # eval never resumes
        check_run_directory(finished, ["seed=1"], resumes=False, command="python -m x")
    check_run_directory(tmp_path / "new", ["seed=2"], resumes=True, command=command)


def test_the_command_line_refuses_a_used_run_directory_before_writing_anything(tmp_path):
    run = tmp_path / "run"
    earlier_run(run, ["+experiment=synthetic_ms3", "seed=1"], finished=True, checkpoint=True)
    before = snapshot(run)
    result = commands.run(
        [sys.executable, "-m", "avsac_lit.train", "+experiment=synthetic_ms3", "seed=2",
         f"hydra.run.dir={run}", f"data.root={tmp_path / 'data'}"],
        timeout=300, env=os.environ | {"AVSAC_ROOT": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert f"Refused: {run} holds an earlier run" in result.stderr
    assert snapshot(run) == before  # Hydra's own record included
    assert not (tmp_path / "data").exists()


def test_checkpoints_are_never_versioned():
    """No `last-v1.ckpt`: a name that exists belongs to the run that resumes there."""
    text = (CONF / "callbacks" / "model_checkpoint.yaml").read_text()
    assert "enable_version_counter: false" in text


class PoisonWeights(Callback):
    """Turns the mask head's weights into NaN as validation starts (a diverged or damaged
    model), after the sanity check."""

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            with torch.no_grad():
                for parameter in pl_module.net.head.parameters():
                    parameter.fill_(float("nan"))


def test_a_non_finite_validation_stops_the_run_naming_split_epoch_and_clips(synth_trees, tmp_path):
    """val/loss, val/seg and val/sync used to be written as null, with exit 0."""
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path / "run",
                   ["trainer.max_epochs=1", "+callbacks.poison._target_="
                    "tests.test_run_dirs.PoisonWeights"])  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"Stopped in val at epoch 0: the outputs are not "
                       r"finite on the batch of clips \S+"):  # fmt: skip
        train(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_non_finite_test_stops_eval_naming_split_and_clips(trained_runs, tmp_path):
    """A checkpoint whose weights are NaN (diverged, written with valid checksums): eval used to
    write test/miou 0.0 and test/loss null, with exit 0."""
    from avsac_lit.checkpoint import read_checkpoint
    from avsac_lit.integrity import write_checkpoint

    checkpoint = read_checkpoint(trained_runs / "0" / "checkpoints" / "last.ckpt")
    head = [k for k in checkpoint["state_dict"] if k.startswith("net.head.")]
    for key in head:
        checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], math.nan)
    write_checkpoint(checkpoint, tmp_path / "nan.ckpt")
    with pytest.raises(NonFiniteError, match=r"Stopped in test at epoch \d+: the outputs are not "
                       r"finite on the batch of clips"):  # fmt: skip
        evaluate(eval_run(tmp_path / "nan.ckpt", tmp_path / "eval"))
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_metrics_json_never_holds_a_non_number(tmp_path):
    with pytest.raises(ValueError, match=r"test/loss is not a finite number"):
        write_metrics(tmp_path / "metrics.json", {"test/miou": 0.5, "test/loss": math.nan})
    with pytest.raises(ValueError, match=r"val/loss is not a finite number"):
        write_metrics(tmp_path / "metrics.json", {"val/loss": None})
    assert not (tmp_path / "metrics.json").exists()
