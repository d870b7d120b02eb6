"""Stopping on a signal and resuming (avsac_lit/resume.py), on one machine: wherever the signal
lands, the run stops where it resumes exactly, and running the same command again in the same
directory ends with the metrics of the run that was never stopped. The same against a live
SLURM scheduler: tests/test_slurm.py."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from avsac_lit.run.stop import RunStopped, StopSignals
from avsac_lit.train import train
from tests import commands
from tests.helpers import TINY_RUN, tiny_run

# Two epochs of 6 one-clip batches, dropout on (a lost random state would show), a CSV log.
RUN = [
    "trainer.max_epochs=2", "data.train_batch_size=1", "model.net.dropout=0.1", "logger=csv",
    "~callbacks.overlays",
]  # fmt: skip


def signal_at(step: int, name: str = "SIGUSR2") -> list[str]:
    return [
        "+callbacks.signal_at._target_=tests.helpers.SignalAt",
        f"+callbacks.signal_at.step={step}",
        f"+callbacks.signal_at.signal={name}",
    ]


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """This module's own cache, filled by its first run: the frozen encoders' cached features of
    a tree can differ in their last float16 bit from what other tests' runs stored before
    (docs/design_log.md, 0.5.0), and these tests compare runs to every digit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVSAC_CACHE_DIR", str(tmp_path_factory.mktemp("resume_cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_audio_cache(module_cache) -> None:
    """Replaces the suite's per-session cache (conftest.py) with the module's."""


@pytest.fixture(scope="module")
def uninterrupted(synth_trees, tmp_path_factory, module_cache) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_run("ms3", synth_trees["ms3"], run_dir, RUN))
    return run_dir


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def stop_then_continue(tree: Path, run_dir: Path, step: int) -> RunStopped:
    """Stop a run with the requeue signal after training step ``step`` (-1: in its test), then
    run the same command again in the same directory."""
    with pytest.raises(RunStopped) as stopped:
        train(tiny_run("ms3", tree, run_dir, [*RUN, *signal_at(step)]))
    assert not (run_dir / "metrics.json").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if "partial" in p.name) == []
    train(tiny_run("ms3", tree, run_dir, RUN))
    return stopped.value


def assert_same_run(run_dir: Path, uninterrupted: Path) -> None:
    assert record(run_dir)["metrics"] == record(uninterrupted)["metrics"]
    assert csv_rows(run_dir) == csv_rows(uninterrupted)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    assert not list(run_dir.glob("hpc_ckpt*")) and not any("-v" in name for name in names)


def test_a_stop_mid_epoch_checkpoints_there_and_the_same_command_ends_as_if_never_stopped(
    synth_trees, uninterrupted, tmp_path, monkeypatch
):
    """Step 8 is the 2nd of epoch 1's 6 batches: last.ckpt is written there, with the random
    state and the epoch's training-metric sums; the second run continues that epoch."""
    run_dir = tmp_path / "run"
    stopped = stop_then_continue(synth_trees["ms3"], run_dir, step=8)
    assert stopped.code == 128 + signal.SIGUSR2
    assert str(stopped).startswith("Stopped by SIGUSR2 in epoch 1 after its batch 2 (step 8)")
    assert f"hydra.run.dir={run_dir}" in str(stopped)
    assert record(run_dir)["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert_same_run(run_dir, uninterrupted)
    # A finished run is never run again over its results; as a job of a multirun submitted
    # again into its sweep directory, it keeps them and the multirun goes on.
    with pytest.raises(FileExistsError, match="holds a finished run"):
        train(tiny_run("ms3", synth_trees["ms3"], run_dir, RUN))
    written = (run_dir / "metrics.json").stat().st_mtime_ns
    monkeypatch.setattr("avsac_lit.train.in_a_multirun", lambda: True)
    kept = train(tiny_run("ms3", synth_trees["ms3"], run_dir, RUN))
    assert kept == record(uninterrupted)["metrics"]
    assert (run_dir / "metrics.json").stat().st_mtime_ns == written


def test_a_stop_on_an_epochs_last_batch_waits_for_its_validation(
    synth_trees, uninterrupted, tmp_path
):
    """Step 6 ends epoch 0. A checkpoint before its validation would make the resumed run skip
    it, so the run validates, writes last.ckpt, and stops as epoch 1 starts."""
    run_dir = tmp_path / "run"
    stopped = stop_then_continue(synth_trees["ms3"], run_dir, step=6)
    assert str(stopped).startswith("Stopped by SIGUSR2 at the start of epoch 1")
    assert_same_run(run_dir, uninterrupted)


def test_a_stop_while_testing_tests_again_on_the_next_run(synth_trees, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    stopped = stop_then_continue(synth_trees["ms3"], run_dir, step=-1)
    assert "while testing" in str(stopped)
    assert_same_run(run_dir, uninterrupted)


def test_sigterm_ends_a_run_non_zero_with_one_line_and_its_checkpoint(synth_trees, tmp_path):
    """What scancel, a node drain or kill sends: the run checkpoints where it stands, says so in
    one line on standard error (no traceback) and exits with 128 + 15."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "avsac_lit.train", "+experiment=synthetic_ms3",
        f"data.root={synth_trees['ms3']}", *TINY_RUN, *RUN, *signal_at(8, "SIGTERM"),
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = commands.run(command, timeout=300, env=env)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("Stopped by")]
    assert len(lines) == 1 and "checkpointed to" in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert saved["global_step"] == 8
    assert not (run_dir / "metrics.json").exists()


def command_line(tree: Path, run_dir: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "avsac_lit.train", "+experiment=synthetic_ms3", f"data.root={tree}",
        *TINY_RUN, *extra, f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def test_ctrl_c_stops_a_run_as_sigterm_does(synth_trees, tmp_path):
    """SIGINT used to print two tracebacks (Lightning's and Hydra's) and save nothing where it
    came. Now it is SIGTERM's one line, a checkpoint where the run stands, and 128 + 2."""
    run_dir = tmp_path / "run"
    extra = [*RUN, "trainer.num_sanity_val_steps=0", *signal_at(2, "SIGINT")]
    command = command_line(synth_trees["ms3"], run_dir, extra)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = commands.run(command, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Received SIGINT: the run stops at the next point it can resume from exactly" in output
    assert "Press Ctrl-C again to stop at once, without a checkpoint." in output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Stopped by")]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith(
        "Stopped by SIGINT in epoch 0 after its batch 2 (step 2), "
        f"checkpointed to {run_dir / 'checkpoints' / 'last.ckpt'}"
    )
    assert "Traceback" not in output
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert saved["global_step"] == 2


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    with StopSignals("USR2", tmp_path) as signals:
        os.kill(os.getpid(), signal.SIGINT)  # noted: the run goes on to its checkpoint
        assert signals.received == signal.SIGINT
        with pytest.raises(RunStopped) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.code == 128 + signal.SIGINT
    assert str(stopped.value) == (
        "Stopped by SIGINT at once on a second Ctrl-C, without a new checkpoint; to resume, run "
        f"the same command with hydra.run.dir={tmp_path} (or continue in a new directory with "
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'})."
    )


def test_a_requeue_signal_after_the_run_has_ended_is_logged_and_the_job_ends_with_status_0(
    synth_trees, tmp_path
):
    """SLURM's signal before a time limit, come as a job that had finished shut down, used to
    kill it (status -12): SLURM recorded a failure for a run whose results were written."""
    run_dir = tmp_path / "run"
    extra = [
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0",
        "test=false", "~callbacks.overlays",
        "+callbacks.signal_at_exit._target_=tests.helpers.SignalAtExit",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = commands.run(command_line(synth_trees["ms3"], run_dir, extra), timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Received SIGUSR2 after the run had ended: nothing to stop or requeue" in output
    assert record(run_dir)["metrics"]["val/miou"] >= 0


@dataclass
class FineTune:
    """A fine-tune from A (a copy of a trained run) into B, stopped, then run again."""

    source: Path  # A
    start: Path  # A's last.ckpt, the fine-tune's ckpt_path
    run_dir: Path  # B
    overrides: list[str]
    source_files: dict[Path, bytes]  # A's files before
    metrics: dict[str, float]  # the second run's final metrics
    said: str  # what the second run logged about where it resumes


@pytest.fixture(scope="module")
def fine_tune(trained_runs, tmp_path_factory) -> FineTune:
    source = tmp_path_factory.mktemp("fine_tune") / "A"
    shutil.copytree(trained_runs / "0", source)
    files = {p: p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()}
    start = source / "checkpoints" / "last.ckpt"  # step 4, after 2 epochs of 2 batches
    tree, run_dir = trained_runs.parent / "data", source.parent / "B"
    overrides = [
        "++data.synthetic={videos:20,seed:3,size:64}", "seed=1", "trainer.max_epochs=3",
        "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0", "test=false",
        "logger=csv", "~callbacks.overlays", f"ckpt_path={start}",
    ]  # fmt: skip
    with pytest.raises(RunStopped):  # after the first batch of the fine-tune's epoch
        train(tiny_run("ms3", tree, run_dir, [*overrides, *signal_at(5)]))
    # Where the run resumes from (the run), and where in the epoch (the training sampler).
    logs = [logging.getLogger(f"avsac_lit.{name}") for name in ("run.resume", "data.samplers")]
    heard = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: heard.append(record.getMessage())
    levels = [log.level for log in logs]
    for log in logs:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        metrics = train(tiny_run("ms3", tree, run_dir, overrides))
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.removeHandler(handler)
            log.setLevel(level)
    return FineTune(source, start, run_dir, overrides, files, metrics, "\n".join(heard))


def test_a_fine_tune_stopped_then_run_again_continues_from_its_own_last_checkpoint(fine_tune):
    """Started with ckpt_path=A into a new directory B and stopped, the same command used to
    start from A again, over B's newer last.ckpt (under SLURM's requeue, forever). B's own
    last.ckpt wins, and A's files are untouched."""
    own = fine_tune.run_dir / "checkpoints" / "last.ckpt"
    assert (f"{fine_tune.run_dir} already holds checkpoints/last.ckpt: continuing that run, "
            f"which started from ckpt_path={fine_tune.start}") in fine_tune.said  # fmt: skip
    assert f"Resuming from {own}, written in the middle of epoch 2 after 1 of its 2" in (
        fine_tune.said
    )
    assert record(fine_tune.run_dir)["resumed_from"] == str(own)
    files = {p: p.read_bytes() for p in sorted(fine_tune.source.rglob("*")) if p.is_file()}
    assert files == fine_tune.source_files


@pytest.mark.slow
def test_a_fine_tune_stopped_and_continued_ends_as_the_uninterrupted_one(
    fine_tune, trained_runs, tmp_path
):
    """Slow: the continuation from its own mid-epoch checkpoint, whose best-checkpoint state
    came from A, is exact as each part is (the stop tests above, tests/test_train.py's resume
    into a new directory)."""
    tree = trained_runs.parent / "data"
    uninterrupted = train(tiny_run("ms3", tree, tmp_path / "whole", fine_tune.overrides))
    assert fine_tune.metrics == uninterrupted


def test_the_handler_only_notes_the_signal_and_gives_the_previous_ones_back():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR2, signal.SIGTERM)}
    with StopSignals("USR2") as signals:
        os.kill(os.getpid(), signal.SIGUSR2)  # handled at once, in this (the main) thread
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGUSR2  # the first one counts
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_an_unknown_requeue_signal_is_named(synth_trees, tmp_path):
    with pytest.raises(ValueError, match=r"requeue_signal='USR9' is not a signal"):
        train(tiny_run("ms3", synth_trees["ms3"], tmp_path, ["requeue_signal=USR9"]))


@pytest.mark.slow
def test_a_float64_run_resumes_in_float64(synth_trees, tmp_path):
    """Under trainer.precision=64-true the checkpoint's weights are loaded into a float64 module
    (Lightning converts it only after loading them, which rounded them through float32). Slow:
    the two-node SLURM test (make slurm-check) checks the same in float64 after two stops."""
    run = [*RUN, "trainer.precision=64-true", "test=false"]
    whole, run_dir = tmp_path / "whole", tmp_path / "run"
    expected = train(tiny_run("ms3", synth_trees["ms3"], whole, run))
    with pytest.raises(RunStopped):
        train(tiny_run("ms3", synth_trees["ms3"], run_dir, [*run, *signal_at(8)]))
    assert train(tiny_run("ms3", synth_trees["ms3"], run_dir, run)) == expected


@pytest.mark.slow
def test_ddp_sim_workers_stop_together_and_the_run_continues_exactly(tmp_path):
    """Under ddp_spawn the training processes are workers: they stop at the same step, and the
    main process ends with their signal's status. Slow: the two-node SLURM test stops and
    resumes a two-process run too."""
    from avsac_lit.data.synthetic import generate

    tree = tmp_path / "data"  # 20 clips: each process needs validation batches
    generate(task="ms3", out=tree, videos=20, seed=3, size=64)
    run = [*RUN, "trainer=ddp_sim", "test=false", "++data.synthetic={videos:20,seed:3,size:64}"]
    whole, run_dir = tmp_path / "whole", tmp_path / "run"
    expected = train(tiny_run("ms3", tree, whole, run))
    with pytest.raises(RunStopped) as stopped:
        train(tiny_run("ms3", tree, run_dir, [*run, *signal_at(9)]))
    assert stopped.value.code == 128 + signal.SIGUSR2
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9
    assert train(tiny_run("ms3", tree, run_dir, run)) == expected
