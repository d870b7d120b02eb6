"""Never write into a user's data or over an earlier run; never end a run on a non-finite result
(docs/bad_inputs.md rows 47-52)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from avsac_lit.checkpoints.io import read_checkpoint
from avsac_lit.data.synthetic import generate
from avsac_lit.eval import evaluate
from avsac_lit.export import main as export_main
from avsac_lit.run.assemble import build_run, compose_config
from avsac_lit.run.directories import check_run_directory
from avsac_lit.run.job import this_command
from avsac_lit.run.lock import (
    LOCK,
    Holder,
    RunDirectoryInUse,
    hold_run_directory,
    process_start,
    run_directory_held,
)
from avsac_lit.run.record import write_metrics
from avsac_lit.run.resume import csv_history, resume_point
from avsac_lit.storage.atomic import OutputExists, atomic_path
from avsac_lit.system.guards import NonFiniteError
from avsac_lit.train import train
from tests import commands
from tests.helpers import CONF, TINY_RUN, eval_run, tiny_run

REPO = Path(__file__).resolve().parents[1]


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
    from avsac_lit.checkpoints.io import read_checkpoint
    from avsac_lit.storage.checksums import write_checkpoint

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


def test_export_and_convert_never_write_over_an_existing_file(trained_runs, tmp_path, capsys):
    """`export` and `convert` used to replace an existing output without a word (once the run's
    best checkpoint). Refused before any work, and again as the file is put in place."""
    taken = tmp_path / "epoch_041.ckpt"
    taken.write_bytes(b"the run's best checkpoint")
    last = trained_runs / "0" / "checkpoints" / "last.ckpt"
    assert export_main([str(last), str(taken)]) == 2
    refused = (f"{taken} exists already: nothing was written, and it is as it was. Write to a new "
               f"file name, or move {taken} away first if it is no longer needed.")  # fmt: skip
    assert capsys.readouterr().err == f"avsac_lit.export: {refused}\n"
    command = [
        sys.executable, "-m", "avsac_lit.convert", "+experiment=s4", "backbone=resnet50",
        f"source={tmp_path / 'official.pth'}", f"output={taken}",
        f"hydra.run.dir={tmp_path / 'convert'}",
    ]  # fmt: skip
    result = commands.run(command, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"avsac_lit.convert: output={refused}"
    assert taken.read_bytes() == b"the run's best checkpoint"
    # A file that appears while the new one is written is not replaced either.
    late = tmp_path / "late.ckpt"

    def export_while_another_writes() -> None:
        with atomic_path(late, new=True) as partial:
            partial.write_bytes(b"exported")
            late.write_bytes(b"written meanwhile by another process")

    with pytest.raises(OutputExists):
        export_while_another_writes()
    assert late.read_bytes() == b"written meanwhile by another process"
    assert not list(tmp_path.glob("*.partial"))


class SecondProcess(Callback):
    """At the first training step, runs :attr:`command` (the test's own training command, in
    the same run directory) and keeps its result and the run directory's files before and
    after it. Does nothing where :attr:`command` is not set (in that command's process)."""

    command: ClassVar[list[str] | None] = None
    seen: ClassVar[dict] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.command is None or self.seen:
            return
        run_dir = Path(trainer.default_root_dir)
        before = snapshot(run_dir)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = commands.run(self.command, timeout=300, env=env)
        self.seen.update(result=result, before=before, after=snapshot(run_dir))


def test_a_second_process_in_a_live_runs_directory_is_refused_naming_the_holder(
    synth_trees, tmp_path, monkeypatch
):
    """Two identical trainings started together both passed the directory check and wrote into
    each other's CSV (the same command again then exited 0 with no train or validation
    metrics). The second, started while the first trains, is refused naming it."""
    run_dir = tmp_path / "run"
    overrides = [
        "+experiment=synthetic_ms3", f"data.root={synth_trees['ms3']}", *TINY_RUN,
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0",
        "test=false", "logger=csv", "~callbacks.overlays",
        "+callbacks.second._target_=tests.test_run_dirs.SecondProcess",
    ]  # fmt: skip
    overrides.remove("~logger")
    # The first as the command line starts it: Hydra's record of its overrides is there.
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- '{o}'\n" for o in overrides))
    second = [sys.executable, "-m", "avsac_lit.train", *overrides, f"hydra.run.dir={run_dir}"]
    monkeypatch.setattr(SecondProcess, "command", second)
    monkeypatch.setattr(SecondProcess, "seen", {})
    train(compose_config("train", overrides, run_dir))
    seen = SecondProcess.seen
    assert seen["result"].returncode == 1, seen["result"].stderr[-3000:]
    holder = f"{this_command()} (host {socket.gethostname()}, process {os.getpid()}, since "
    assert seen["result"].stderr.startswith(f"Refused: {run_dir} is in use by a live run: {holder}")
    assert "so this one stops before writing anything" in seen["result"].stderr
    assert seen["after"] == seen["before"]
    with (run_dir / "csv" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert any(row["train/miou"] for row in rows) and any(row["val/miou"] for row in rows)
    assert (run_dir / "metrics.json").is_file() and not (run_dir / LOCK).exists()


def test_a_lock_whose_holder_has_ended_is_taken_over_and_a_live_one_kept(
    tmp_path, monkeypatch, caplog
):
    """A holder killed (kill -9, out of memory) leaves its lock: taken over with a log line when
    its process is gone or its number is another process's now, or when it was an earlier
    attempt of this SLURM job; a live one on this host, or one on another host, is kept."""
    lock = tmp_path / LOCK

    def held_by(**fields) -> None:
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": None,
            "command": "python -m avsac_lit.train seed=1",
            "since": "2025-01-02 03:04:05",
        }
        lock.write_text(Holder(**{**holder, **fields}).text())

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    caplog.set_level("WARNING", logger="avsac_lit.run.lock")
    for fields, why in (
        ({"pid": ended.pid}, "its process is gone"),
        ({"pid": os.getppid(), "started": -1}, "its process number now belongs to another process"),
    ):
        held_by(**fields)
        with run_directory_held(tmp_path, "this test"):
            assert Holder.parse(lock.read_text()).command == "this test"
        assert f"Took over {lock} from python -m avsac_lit.train seed=1 (host" in caplog.text
        assert f"since 2025-01-02 03:04:05): {why}." in caplog.text
        assert not lock.exists()
    held_by(pid=os.getppid(), started=process_start(os.getppid()))  # alive
    with pytest.raises(RunDirectoryInUse, match=rf"process {os.getppid()}, since"):
        hold_run_directory(tmp_path, "this test")
    # On another host it cannot be probed: refused, unless it was an earlier attempt of this
    # SLURM job (requeued onto another node).
    held_by(host="n1", pid=4321, slurm_job="77")
    with pytest.raises(RunDirectoryInUse) as refused:
        hold_run_directory(tmp_path, "this test")
    assert str(refused.value).startswith(
        f"{tmp_path} is in use by a live run: python -m avsac_lit.train seed=1 (host n1, process "
        "4321, since 2025-01-02 03:04:05, SLURM job 77)."
    )
    assert f"if it has ended (its machine went down), delete {lock}" in str(refused.value)
    monkeypatch.setenv("RANK", "1")  # another process of the live run: it takes no lock
    assert not hold_run_directory(tmp_path, "rank 1")
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with run_directory_held(tmp_path, "this test"):
        assert Holder.parse(lock.read_text()).slurm_restarts == 1
    assert "it was an earlier attempt of this SLURM job, which SLURM requeued" in caplog.text


def test_an_empty_checkpoints_folder_or_link_is_no_earlier_run_and_a_link_is_followed(
    trained_runs, tmp_path
):
    """Users link checkpoints/ to scratch storage before a run: it was refused as "an earlier
    run", and a run resumed through the link lost its CSV history (looked for beside the link's
    target)."""
    command = "python -m avsac_lit.train"
    linked, scratch = tmp_path / "linked", tmp_path / "scratch"
    (scratch / "empty").mkdir(parents=True)
    linked.mkdir()
    (linked / "checkpoints").symlink_to(scratch / "empty")
    (tmp_path / "plain" / "checkpoints").mkdir(parents=True)
    for run_dir in (linked, tmp_path / "plain"):
        check_run_directory(run_dir, ["seed=2"], resumes=True, command=command)
    # A stopped run whose checkpoints/ is a link resumes from its last.ckpt with its history.
    run_dir = tmp_path / "stopped"
    shutil.copytree(trained_runs / "0", run_dir)
    (run_dir / "metrics.json").unlink()
    shutil.move(run_dir / "checkpoints", scratch / "stopped")
    (run_dir / "checkpoints").symlink_to(scratch / "stopped")
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "checkpoints").symlink_to(scratch / "stopped")  # not empty
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        check_run_directory(tmp_path / "again", ["seed=2"], resumes=True, command=command)
    overrides = [
        "++data.synthetic={videos:20,seed:3,size:64}", "seed=1", "trainer.max_epochs=3",
        "trainer.limit_train_batches=2", "test_audio=[matched,shuffled]",
        "callbacks.overlays.clips=2", "logger=csv",
    ]  # fmt: skip
    start = resume_point(tiny_run("ms3", trained_runs.parent / "data", run_dir, overrides))
    assert start.ckpt_path == str(run_dir / "checkpoints" / "last.ckpt")
    last = trained_runs / "0" / "checkpoints" / "last.ckpt"
    expected = csv_history(last, read_checkpoint(last, mmap=True))
    assert expected and start.history == expected
