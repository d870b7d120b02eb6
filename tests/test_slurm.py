"""Against a live SLURM scheduler: the two-node test cluster of ``.ci/slurm/cluster`` (one host,
nodes n1 and n2 of one CPU each), which ``make slurm-check`` starts, runs these tests against and
stops. Without it they are skipped, saying so.

Each test submits as a user would (``python -m avsac_lit.train -m hydra/launcher=slurm ...``),
signals the jobs as SLURM does, and compares what the jobs wrote with the same run made in this
process: a table sweep, a run that survives time limits, a preempted and requeued run, and one
run over both nodes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avsac_lit.report import report
from avsac_lit.train import train
from tests.helpers import TINY_RUN, assert_trains_as_one_process, compose_config

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / ".ci" / "slurm" / "cluster"
# One CPU and a little memory per job, on the test cluster's partition; CPU runs.
LAUNCHER = [
    "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=10",
]  # fmt: skip
# What every test run shares: the tiny model on the tiny tree, one CPU process, a CSV log. No
# feature cache: the jobs and the local runs would fill one cache at the same time, and which
# of them computed an entry can change its last float16 bit (docs/design_log.md, 0.5.0).
RUN = ["trainer=cpu", "logger=csv", "~callbacks.overlays", "model.feature_cache.enabled=false"]


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """The environment in which the SLURM commands reach the test cluster."""
    if not CLUSTER.is_file():
        pytest.skip(f"No {CLUSTER.relative_to(REPO)}: run the SLURM tests from a checkout.")
    status = subprocess.run(["bash", CLUSTER, "status"], capture_output=True, text=True)
    if status.returncode != 0:
        reason = (status.stdout + status.stderr).strip().splitlines()[-1:] or ["not up"]
        pytest.skip(
            f"No SLURM test cluster is up ({reason[0]}). `make slurm-check` starts one (as "
            "root), runs these tests against it and stops it."
        )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    lines = subprocess.run(["bash", CLUSTER, "env"], capture_output=True, text=True, check=True)
    for key, value in re.findall(r"^export (\w+)=(.*)$", lines.stdout, re.MULTILINE):
        env[key] = value.strip("'\"")
    return env


def submit(env: dict, sweep: Path, overrides: list[str]) -> subprocess.Popen:
    """``python -m avsac_lit.train -m`` through the SLURM launcher; it returns when the jobs end."""
    command = [
        sys.executable, "-m", "avsac_lit.train", "-m", *LAUNCHER, *overrides,
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    log = (sweep.parent / f"{sweep.name}.submit.log").open("w")
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=sweep.parent
    )


def finish(process: subprocess.Popen, sweep: Path, timeout: float = 240) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
    output = (sweep.parent / f"{sweep.name}.submit.log").read_text()
    logs = "".join(p.read_text()[-2000:] for p in sorted(sweep.glob(".submitit/*/*.out")))
    assert process.returncode == 0, output[-3000:] + logs


def slurm_command(env: dict, *args: str) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout


def job_ids(sweep: Path) -> list[str]:
    """The sweep's SLURM jobs (array tasks as ARRAY_TASK), from submitit's folders."""
    folder = sweep / ".submitit"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Waited {timeout:.0f} s for {what}.")
        time.sleep(0.5)


def checkpoint_step(run_dir: Path) -> int:
    """The training step of the run's last.ckpt (-1 before there is one)."""
    path = run_dir / "checkpoints" / "last.ckpt"
    try:
        return torch.load(path, weights_only=True, mmap=True)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def local_run(run_dir: Path, overrides: list[str]) -> dict:
    """The same run, made in this process with the job's one thread (float32 sums split over
    threads round otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config("train", [*RUN, *overrides], run_dir))
    finally:
        torch.set_num_threads(threads)
    return record(run_dir)


def assert_clean(run_dir: Path) -> None:
    """One best and last.ckpt, and nothing a stop or a requeue leaves behind."""
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names, names
    assert not any("-v" in name or "partial" in name for name in names), names
    assert not list(run_dir.glob("hpc_ckpt*")) and not (run_dir / "fit_metrics.json").exists()


def test_a_table_sweep_runs_as_slurm_jobs_equal_to_local_runs(slurm, synth_trees, tmp_path):
    """Two rows of Table 2's twin, one SLURM job each, on the two nodes at once: each job's
    metrics equal the same run's made here, the report makes the table from the sweep
    directory, and the CPU jobs ask SLURM for no GPU."""
    sweep = tmp_path / "table2"
    table = ["+table=synthetic_table2", "seed=1", f"data.root={synth_trees['ms3']}", *TINY_RUN]
    table.append("trainer.max_epochs=1")
    job = submit(slurm, sweep, [*table, *RUN, "setting=bavd,avsac"])
    local = {
        setting: local_run(
            tmp_path / setting, [*table, "experiment=synthetic_ms3", f"setting={setting}"]
        )
        for setting in ("bavd", "avsac")
    }
    finish(job, sweep)
    for number, setting in enumerate(("bavd", "avsac")):
        remote = record(sweep / str(number))
        assert remote["metrics"] == local[setting]["metrics"], setting
        assert remote["slurm"]["job_id"] and remote["slurm"]["tasks"] == 1
        assert remote["world_size"] == 1
    scripts = [p.read_text() for p in sweep.glob(".submitit/*/*_submission.sh")]
    assert scripts and all("--signal=USR2@120" in s and "--requeue" in s for s in scripts)
    assert not any("gpu" in s.lower() for s in scripts)
    written = report(sweep)
    table = written["markdown"].read_text()
    assert "BAVD only" in table and "AVSAC (ours)" in table and "Runs without results" not in table


def test_a_run_longer_than_its_time_limit_requeues_itself_until_it_finishes(
    slurm, synth_trees, tmp_path
):
    """A two-minute time limit, USR2 due 60 s before it. SLURM sends the signal at the first of
    its 30 s checks that comes within 30 s of the due time (measured on this cluster), so here
    30-60 s into each attempt; with a one-minute limit and the launcher's 120 s it came 0-30 s
    in, at times before the job's handlers were in place (Python still loading the job), and
    the job died unrequeued. The run checkpoints where it stands and requeues itself, and each
    attempt continues from last.ckpt until the run ends, with the metrics of the run that was
    never stopped."""
    sweep = tmp_path / "sweep"
    overrides = [
        f"data.root={synth_trees['ms3']}", "+experiment=synthetic_ms3", *TINY_RUN,
        "data.train_batch_size=1", "model.net.dropout=0.1", "trainer.max_epochs=70",
    ]  # fmt: skip
    # About 70 s of training on the job's one CPU when nothing else runs (40 epochs took 40 s
    # and once ended before the signal came, 60 s in): more than the first attempt has before
    # the signal, whenever it comes. The local run takes the other CPU meanwhile.
    limit = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60"]
    job = submit(slurm, sweep, [*RUN, *overrides, *limit])
    uninterrupted = local_run(tmp_path / "local", overrides)
    finish(job, sweep, timeout=300)
    run_dir = sweep / "0"
    remote = record(run_dir)
    assert remote["metrics"] == uninterrupted["metrics"]
    text = (run_dir / "train.log").read_text()
    stops = text.count("Stopped by SIGUSR2")
    assert stops >= 1 and text.count("SLURM requeued the job") == stops
    assert remote["slurm"]["restarts"] == stops
    assert_clean(run_dir)


@pytest.fixture(scope="module")
def twenty_clips(tmp_path_factory) -> Path:
    """A 20-clip SynthAVS-MS3 (the DDP tests' tree): enough batches to split over processes."""
    from avsac_lit.data.synthetic import generate

    root = tmp_path_factory.mktemp("twenty_clips")
    generate(task="ms3", out=root, videos=20, seed=3, size=64)
    return root


def test_one_run_over_two_nodes_equals_one_process_after_two_stops(slurm, twenty_clips, tmp_path):
    """trainer=ddp_slurm over n1 and n2 (one process each, gloo). Preempted once
    (``scancel --signal=USR2``: it checkpoints and requeues itself) and requeued once by hand
    (``scontrol requeue``: SIGTERM, it checkpoints and SLURM requeues it), it resumes on both
    nodes each time. In float64 with dropout off, its first step's loss and gradients equal
    trainer=cpu's with the summed batch to 1e-10, and its final metrics equal that run's.
    (trainer=ddp_sim, two processes on one machine, equals that run too: make test's
    test_ddp_on_two_processes_trains_and_scores_as_one_process; repeating it here cost a fifth
    of the test.) metrics.json names the job, its nodes and processes."""
    common = [
        f"data.root={twenty_clips}", "+experiment=synthetic_ms3", *TINY_RUN,
        "++data.synthetic={videos:20,seed:3,size:64}", "trainer.max_epochs=2",
        "model.net.dropout=0.0", "trainer.precision=64-true", "test_audio=[matched]",
        "+callbacks.first_step._target_=avsac_lit.run.callbacks.FirstStepRecorder",
        # The cache back on (it saves a fifth of the test's time): the local run fills it before
        # the job starts, so both runs read the same entries.
        "model.feature_cache.enabled=true",
    ]  # fmt: skip
    one_process = [
        "trainer=cpu", "data.train_batch_size=4", f"+callbacks.first_step.path={tmp_path}/cpu.pt",
    ]  # fmt: skip
    local = local_run(tmp_path / "cpu", [*common, *one_process])
    sweep, run_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    two_nodes = [
        "trainer=ddp_slurm", "trainer.accelerator=cpu", "trainer.num_nodes=2",
        "trainer.devices=1", "data.train_batch_size=2",
        f"+callbacks.first_step.path={tmp_path}/slurm.pt",
    ]  # fmt: skip
    job = submit(slurm, sweep, [*RUN, *common, *two_nodes])
    wait_for(lambda: checkpoint_step(run_dir) >= 3, "the first epoch's checkpoint")
    (job_id,) = job_ids(sweep)
    slurm_command(slurm, "scancel", "--signal=USR2", job_id)
    # As soon as both processes of the requeued job continue the run (their handlers are in
    # place): SIGTERM stops them as training starts, within KillWait.
    wait_for(lambda: log_count(run_dir, "continuing that run") >= 2, "the requeued job (2 ranks)")
    slurm_command(slurm, "scontrol", "requeue", job_id)
    finish(job, sweep)
    remote = record(run_dir)
    assert remote["slurm"]["restarts"] == 2 and remote["resumed_from"]
    assert remote["world_size"] == 2 and remote["nodes"] == 2
    assert remote["slurm"]["tasks"] == 2 and remote["slurm"]["nodes"] == "n[1-2]"
    assert remote["strategy"] == "DDPStrategy"
    assert log_count(run_dir, "Stopped by SIGUSR2") and log_count(run_dir, "Stopped by SIGTERM")
    assert_trains_as_one_process(
        tmp_path / "slurm.pt", tmp_path / "cpu.pt", remote["metrics"], local["metrics"]
    )
    assert_clean(run_dir)


def log_count(run_dir: Path, text: str) -> int:
    path = run_dir / "train.log"
    return path.read_text().count(text) if path.is_file() else 0
