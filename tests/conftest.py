"""Shared fixtures: small SynthAVS trees, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from avsac_lit.data.synthetic import generate
from avsac_lit.train import train
from tests.helpers import tiny_run

# Small frames and few clips keep generation to a few seconds; the layout is the full one.
TINY = {"s4": 8, "ms3": 8, "avss": 12}
TINY_SIZE = 64


@pytest.fixture(autouse=True)
def _isolated_audio_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    # Never write derived files into the user's cache (or the working directory) from a test.
    monkeypatch.setenv("AVSAC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "avsac_cache"))


@pytest.fixture(scope="session")
def synth_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{task: root} of one tiny generated tree per task. Tests must not modify them."""
    roots = {}
    for task, videos in TINY.items():
        root = tmp_path_factory.mktemp(f"synth_{task}")
        generate(task=task, out=root, videos=videos, seed=7, size=TINY_SIZE)
        roots[task] = root
    return roots


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
    base = tmp_path_factory.mktemp("trained")
    data = base / "data"
    generate(task="ms3", out=data, videos=20, seed=3, size=TINY_SIZE)
    settings = "++data.synthetic={videos:20,seed:3,size:64}"
    for job, seed in enumerate((1, 2)):
        extra = [
            settings, f"seed={seed}", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
            "test_audio=[matched,shuffled]", "callbacks.overlays.clips=2", "logger=csv",
        ]  # fmt: skip
        train(tiny_run("ms3", data, base / "multirun" / str(job), extra))
    return base / "multirun"
