"""The GPU acceptance check (``make gpu-check``): without CUDA one line and status 0; on the CPU
(``--device cpu --small``) the same code measures and writes its tables."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from avsac_lit import gpu_check
from tests import commands


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_the_check_says_so_in_one_line_and_exits_0(tmp_path):
    result = commands.run(
        [sys.executable, "-m", "avsac_lit.gpu_check", "--out", str(tmp_path / "out")],
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith("GPU check: no CUDA device here")
    assert "make gpu-check" in result.stdout and not (tmp_path / "out").exists()


def test_on_the_cpu_the_check_measures_parity_and_training_steps_and_writes_both_files(tmp_path):
    status = gpu_check.main(["--device", "cpu", "--small", "--steps", "1",
                             "--skip", "compile", "ddp", "--out", str(tmp_path)])  # fmt: skip
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert status == 0 and report["passed"] and report["skipped"] == ["compile", "ddp"]
    # The CPU against itself: the same weights and inputs give the same outputs to the bit.
    assert [row["max_abs_difference"] for row in report["parity"]] == [0.0, 0.0]
    assert all(row["outputs"] >= 1 for row in report["parity"])
    rows = report["training_steps"]
    assert len(rows) == 2 * 2 * 3  # models x (cache, computed) x precisions
    for row in rows:
        # Both rounded in the report: step_s to 4 decimals, clips_per_s to 2.
        expected = pytest.approx(2 / row["step_s"], rel=0.01, abs=0.01)
        assert row["step_s"] > 0 and row["clips_per_s"] == expected
        if row["precision"] == "32-true":
            assert row["first_loss_difference"] == 0.0
        else:  # lower precision, the same weights and batch: close
            assert row["first_loss_difference"] < 1e-2
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| AVSAC (tiny), MS3 | feature cache | bf16-mixed |" in table
    assert "not run: compile, ddp" in table and "Not run (--skip)." in table


@pytest.mark.slow
def test_on_the_cpu_the_ddp_comparison_finds_two_processes_equal_to_one(tmp_path):
    """The DDP part on the CPU: trainer=ddp_sim (2 processes, gloo) against trainer=cpu with the
    summed batch, as on GPUs trainer=ddp (NCCL) against trainer=gpu. The comparison itself is
    make test's (test_ddp_on_two_processes_trains_and_scores_as_one_process, which also scores
    the test conditions); this one repeats it through the check's commands: make test-full."""
    result = gpu_check.ddp("cpu", tmp_path)
    assert result["passed"] and result["world_size"] == 2
    assert result["first_loss_difference"] < 1e-10 and result["max_gradient_difference"] < 1e-10
    assert max(result["metric_differences"].values()) < 1e-6
    assert result["sync_batchnorm"] is False  # torch's SyncBatchNorm refuses CPU tensors


@pytest.mark.slow
def test_on_the_cpu_the_compile_comparison_runs(tmp_path):
    """torch.compile on the CPU (inductor) takes minutes for the two tiny models: make test-full."""
    report = gpu_check.check("cpu", True, tmp_path, 1, skip=("parity", "training_steps", "ddp"))
    for row in report["compile"]:
        assert row["compiled_step_s"] > 0 and row["first_loss_difference"] < 1e-4
