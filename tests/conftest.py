"""Shared fixtures: small SynthAVS trees and a trained multirun, made once per pytest run (once
in all, when pytest-xdist runs the tests in several processes)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

# torch, Lightning and the suite are imported where a fixture needs them: pytest-xdist's
# controller loads this file too, and needs none of them (4 s of a 2-core machine's start).

# Small frames and few clips keep generation to a few seconds; the layout is the full one.
TINY = {"s4": 8, "ms3": 8, "avss": 12}
TINY_SIZE = 64

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Workers side by side on the same cores: each runs torch, and the runs and commands it
    # starts, on its share of them rather than on all.
    import torch

    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]):
    """``build(folder)`` run once per pytest run: under pytest-xdist the first worker to get
    here builds it in the run's shared temporary folder, the others wait and reuse it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' folders sit side by side in the run's folder
    folder = base / f"shared_{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed part way
            folder.mkdir()
            # Before any test's own cache folder is set: keep derived files out of the user's.
            previous = os.environ.get("AVSAC_CACHE_DIR")
            os.environ["AVSAC_CACHE_DIR"] = str(folder / "avsac_cache")
            try:
                build(folder)
            finally:
                if previous is None:
                    del os.environ["AVSAC_CACHE_DIR"]
                else:
                    os.environ["AVSAC_CACHE_DIR"] = previous
            (folder / ".built").touch()
    return folder


@pytest.fixture(autouse=True)
def _isolated_audio_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    # Never write derived files into the user's cache (or the working directory) from a test.
    monkeypatch.setenv("AVSAC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "avsac_cache"))


@pytest.fixture(scope="session")
def synth_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{task: root} of one tiny generated tree per task. Tests must not modify them."""
    from avsac_lit.data.synthetic import generate

    def build(folder: Path) -> None:
        for task, videos in TINY.items():
            generate(task=task, out=folder / task, videos=videos, seed=7, size=TINY_SIZE)

    folder = built_once(tmp_path_factory, "synth", build)
    return {task: folder / task for task in TINY}


@pytest.fixture
def synth_copy(synth_trees: dict[str, Path], tmp_path: Path):
    """A function returning a private copy of a task's tree, for tests that break files."""
    import shutil

    def copy(task: str) -> Path:
        destination = tmp_path / f"copy_{task}"
        shutil.copytree(synth_trees[task], destination)
        return destination

    return copy


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-seed multirun directory (``0/``, ``1/``) of the tiny AVSAC trained for two
    short epochs on a 20-clip SynthAVS-MS3 (3 validation clips, so the audio share has a pair to
    swap), each tested with true and shuffled audio. Also holds the data, in ``data/``. Tests
    must not modify it."""
    from avsac_lit.data.synthetic import generate
    from avsac_lit.train import train
    from tests.helpers import tiny_run

    def build(base: Path) -> None:
        data = base / "data"
        generate(task="ms3", out=data, videos=20, seed=3, size=TINY_SIZE)
        settings = "++data.synthetic={videos:20,seed:3,size:64}"
        for job, seed in enumerate((1, 2)):
            extra = [
                settings, f"seed={seed}", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                "test_audio=[matched,shuffled]", "callbacks.overlays.clips=2", "logger=csv",
            ]  # fmt: skip
            train(tiny_run("ms3", data, base / "multirun" / str(job), extra))

    return built_once(tmp_path_factory, "trained", build) / "multirun"
