"""A multirun's jobs side by side on one machine, one GPU each (hydra/launcher=local_gpus)."""

from __future__ import annotations

import json
import multiprocessing
import platform
import sys

from avsac_lit.run.devices import claim_gpu
from avsac_lit.system import memory
from tests import commands
from tests.helpers import TINY_RUN


def _claim(pool, gpus, queue) -> None:
    try:
        queue.put(claim_gpu(pool, gpus))
    except RuntimeError as error:
        queue.put(str(error))


def _hold(pool, queue) -> None:
    import time

    first = claim_gpu(pool, 2)
    queue.put(first if claim_gpu(pool, 2) == first else "another GPU for the next job")
    time.sleep(60)


def test_each_process_takes_a_free_gpu_and_a_full_pool_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    context = multiprocessing.get_context("fork")
    queue, holders = context.Queue(), []
    for _ in range(2):  # two workers that stay alive, as the launcher's do
        holder = context.Process(target=_hold, args=(tmp_path, queue))
        holder.start()
        holders.append(holder)
    claimed = sorted(queue.get(timeout=30) for _ in range(2))
    assert claimed == ["0", "1"]
    third = context.Process(target=_claim, args=(tmp_path, 2, queue))
    third.start()
    third.join(timeout=30)
    assert "All 2 GPUs of the pool" in queue.get(timeout=30)
    for holder in holders:
        holder.terminate()


def test_a_multirun_runs_its_jobs_side_by_side_on_their_own_gpus(synth_trees, tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "avsac_lit.train", "-m", "hydra/launcher=local_gpus", "gpus=2",
        "seed=1,2", "+experiment=synthetic_ms3", f"data.root={synth_trees['ms3']}", *TINY_RUN,
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "test=false",
        "~callbacks.overlays", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    commands.run(command, check=True, timeout=600)
    records = [json.loads((sweep / str(job) / "metrics.json").read_text()) for job in (0, 1)]
    assert sorted(r["cuda_visible_devices"] for r in records) == ["0", "1"]
    assert sorted(r["seed"] for r in records) == [1, 2]


def test_freed_memory_stays_in_the_process_unless_turned_off(monkeypatch):
    """glibc (this suite's CI): the setting takes, so that a step's large blocks are reused
    rather than returned and faulted in again; AVSAC_KEEP_FREED_MEMORY=0 leaves malloc alone."""
    monkeypatch.setenv("AVSAC_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("AVSAC_KEEP_FREED_MEMORY")
    assert memory.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
