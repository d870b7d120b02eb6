"""Runs that torchrun (TorchElastic) starts: two agents on this host stand for two machines (gloo
on the CPUs), one run over both, an elastic restart after one agent's process is killed; and what
a command under torchrun refuses before it writes anything.

The two-agent test is marked ``multiprocess`` and runs in CI as ``make multiprocess-check`` (it
starts four fresh interpreters and trains twice: about a minute); the refusals run in
``make test``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import pytest

from avsac_lit.run.lock import Holder
from avsac_lit.train import train
from tests import commands
from tests.helpers import TINY_RUN, assert_trains_as_one_process, compose_config

REPO = Path(__file__).resolve().parents[1]

# What the run compared shares with trainer=cpu's: the tiny model on 20 clips, float64,
# dropout off, a CSV log; no feature cache (which process computed an entry can change its last
# float16 bit: docs/design_log.md, 0.5.0).
COMMON = [
    "+experiment=synthetic_ms3", *(o for o in TINY_RUN if o != "~logger"),
    "++data.synthetic={videos:20,seed:3,size:64}",
    "trainer.max_epochs=2", "model.net.dropout=0.0", "trainer.precision=64-true",
    "test_audio=[matched]", "logger=csv", "~callbacks.overlays",
    "model.feature_cache.enabled=false",
    "+callbacks.first_step._target_=avsac_lit.run.callbacks.FirstStepRecorder",
]  # fmt: skip
TWO_MACHINES = ["trainer=torchrun", "trainer.accelerator=cpu", "trainer.num_nodes=2",
                "trainer.devices=1", "data.train_batch_size=2"]  # fmt: skip


@pytest.fixture(scope="module")
def twenty_clips(tmp_path_factory) -> Path:
    from avsac_lit.data.synthetic import generate

    root = tmp_path_factory.mktemp("twenty_clips")
    generate(task="ms3", out=root, videos=20, seed=3, size=64)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def torchrun_agents(arguments: list[str], run_dir: Path, *, max_restarts: int) -> list[str]:
    """Two torchrun agents on this host, as on two machines: ``--nnodes=2 --nproc-per-node=1``,
    one c10d rendezvous. Returns their logs once both have exited (status 0 asserted)."""
    endpoint = f"localhost:{free_port()}"
    # A fresh rendezvous store for every restart (the run refuses --max-restarts without it).
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-machines",
        f"--max-restarts={max_restarts}", "-m", "avsac_lit.train", *arguments,
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    logs = [run_dir.parent / f"agent{n}.log" for n in range(2)]
    # Each agent leads a process group of its own with its workers: a worker whose agent was
    # killed would otherwise outlive the test, hung in its collectives.
    agents = [
        subprocess.Popen(
            command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        for log in logs
    ]
    try:
        for agent in agents:
            agent.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for agent in agents:
            with suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    for agent, log in zip(agents, logs, strict=True):
        assert agent.returncode == 0, log.read_text()[-4000:]
    return [log.read_text() for log in logs]


@pytest.mark.multiprocess
def test_two_torchrun_agents_train_one_run_equal_to_one_process_through_an_elastic_restart(
    twenty_clips, tmp_path
):
    """One run over two torchrun agents (standing for two machines). Rank 1's process is killed
    (SIGKILL) in the second epoch; with ``--max-restarts=1`` torchrun starts both processes again,
    which continue from ``last.ckpt``. In float64 the first step's loss and gradients equal
    trainer=cpu's with the summed batch to 1e-10, and so do the final metrics. (trainer=ddp_sim
    equals that run too: make test's test_ddp_on_two_processes_trains_and_scores_as_one_process;
    a ddp_sim reference here cost a fifth of the test.) metrics.json says torchrun started it, on
    2 nodes, 2 processes."""
    data = [f"data.root={twenty_clips}", *COMMON]
    reference = tmp_path / "cpu"
    train(compose_config("train", [*data, "trainer=cpu", "data.train_batch_size=4",
                                   f"+callbacks.first_step.path={tmp_path}/cpu.pt"],
                         reference))  # fmt: skip
    run_dir = tmp_path / "torchrun"
    kill = ["+callbacks.kill._target_=tests.crash.KillAtStep", "+callbacks.kill.step=5",
            "+callbacks.kill.rank=1"]  # fmt: skip
    step_file = f"+callbacks.first_step.path={tmp_path}/torchrun.pt"
    torchrun_agents([*data, *TWO_MACHINES, step_file, *kill], run_dir, max_restarts=1)

    log = (run_dir / "train.log").read_text()
    assert log.count("continuing that run") == 2  # both ranks, once each, after the restart
    record = json.loads((run_dir / "metrics.json").read_text())
    other = json.loads((reference / "metrics.json").read_text())
    assert record["launcher"] == "torchrun" and other["launcher"] == "local"
    assert (record["world_size"], record["nodes"], record["processes_per_node"]) == (2, 2, 1)
    assert record["torchrun"]["run_id"] == "two-machines"
    assert record["torchrun"]["max_restarts"] == 1 and record["torchrun"]["nodes"] == 2
    assert record["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert record["epochs_trained"] == other["epochs_trained"] == 2
    assert_trains_as_one_process(
        tmp_path / "torchrun.pt", tmp_path / "cpu.pt", record["metrics"], other["metrics"]
    )
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["epoch_000.ckpt", "last.ckpt"] or (len(names) == 2 and "last.ckpt" in names)
    assert not (run_dir / ".avsac_lit.lock").exists()


def under_torchrun(world: int, local: int) -> dict[str, str]:
    """The variables torchrun gives each process it starts (rank 0 of ``world``)."""
    return dict(os.environ, TORCHELASTIC_RUN_ID="run-a", LOCAL_WORLD_SIZE=str(local),
                WORLD_SIZE=str(world), RANK="0", LOCAL_RANK="0", GROUP_RANK="0",
                TORCHELASTIC_RESTART_COUNT="0", TORCHELASTIC_MAX_RESTARTS="0",
                MASTER_ADDR="localhost", MASTER_PORT="29500")  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (
            ["trainer=torchrun", "trainer.num_nodes=2"],
            "each would make its own run directory from the time it started (hydra.run.dir is "
            "${paths.log_dir}/${task_name}/runs/${now:%Y-%m-%d}_${now:%H-%M-%S}). Name one on the "
            "command line, the same for every machine",
        ),
        (
            ["trainer=torchrun", "hydra.run.dir=RUN"],
            "torchrun started 2 process(es), 1 per machine (--nnodes=2 --nproc-per-node=1), "
            "but the trainer asks for trainer.num_nodes=1 x trainer.devices=1. Set them to what "
            "torchrun starts: trainer.num_nodes=2 trainer.devices=1.",
        ),
        (
            ["trainer=ddp_sim", "hydra.run.dir=RUN"],
            "but trainer.strategy=ddp_spawn does not run on processes started for it. Use "
            "trainer=torchrun",
        ),
        (
            ["-m", "trainer=torchrun", "trainer.num_nodes=2", "seed=1,2", "hydra.sweep.dir=RUN"],
            "for a multirun (-m): under torchrun a command is one run.",
        ),
        (
            ["trainer=torchrun", "trainer.num_nodes=2", "hydra.run.dir=RUN", "RESTARTS"],
            "with --max-restarts=1, sharing its rendezvous store with them: after a restart the "
            "new processes read there the addresses of the processes they replace",
        ),
    ],
    ids=[
        "time-stamped directory",
        "other world size",
        "spawned processes",
        "multirun",
        "restarts with a shared store",
    ],
)
def test_under_torchrun_a_run_that_cannot_be_one_is_refused_before_anything_is_written(
    arguments, said, tmp_path
):
    run_dir = tmp_path / "run"
    env = under_torchrun(world=2, local=1)
    if "RESTARTS" in arguments:  # torchrun --max-restarts=1, its store shared (its default)
        arguments.remove("RESTARTS")
        env |= {"TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    arguments = [a.replace("RUN", str(run_dir)) for a in arguments]
    result = commands.run(
        [sys.executable, "-m", "avsac_lit.train", *arguments, "+experiment=synthetic_ms3",
         f"paths.log_dir={tmp_path}/logs"],
        env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("Refused: torchrun started 2 process(es)"), result.stderr[-2000:]
    assert said in message
    assert not run_dir.exists() and not (tmp_path / "logs").exists()


def test_a_lock_of_an_earlier_attempt_of_the_same_torchrun_run_on_another_machine_is_taken_over(
    monkeypatch,
):
    """torchrun starts a run's processes again only after it has stopped them all, and its rank 0
    may then be on another machine: the lock the earlier rank 0 left there has ended. Without a
    ``--rdzv-id`` (torchrun's default, ``none``) nothing tells two runs apart: it may still run."""
    for name, value in under_torchrun(world=2, local=1).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-a")
    earlier = Holder(host="machine-b", pid=1, started=None, command="train", since="",
                     torchrun_run="run-a")  # fmt: skip
    assert "earlier attempt of this torchrun run" in earlier.ended()
    assert Holder(**{**earlier.__dict__, "torchrun_run": "run-b"}).ended() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert Holder(**{**earlier.__dict__, "torchrun_run": None}).ended() is None
