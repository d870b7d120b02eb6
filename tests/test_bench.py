"""avsac_lit.bench: the figures it prints describe the step it times."""

from __future__ import annotations

import json
import sys

from avsac_lit.profiling.steps import PARTS, time_steps
from avsac_lit.run.assemble import compose_config
from tests import commands
from tests.helpers import TINY_RUN

# The tiny AVSegFormer on S4-shaped batches, its audio BatchNorm off so that frames are
# independent and the unlabelled ones can be skipped.
TINY = [o for o in TINY_RUN if not o.startswith(("data.", "~", "extras"))]
S4 = ["+experiment=synthetic_s4", "+setting=avsegformer_small", "data.img_size=32",
      "model.net.audio.normalize=false", "bench.steps=1", "bench.warmup=1", *TINY]  # fmt: skip


def test_skipping_unread_frames_shows_as_a_fifth_of_the_flops_with_the_same_loss(tmp_path):
    skipping = compose_config("bench", S4, tmp_path)
    every_frame = compose_config("bench", [*S4, "model.skip_unread_frames=false"], tmp_path)
    results = time_steps(skipping, every_frame)
    for name in ("A", "B"):
        assert set(results[name]["seconds"]) == {*PARTS, "step"}
        assert all(seconds >= 0 for seconds in results[name]["seconds"].values())
        assert results[name]["peak_memory_gb"] > 0
        assert len(results[name]["losses"]) == 2  # the warm-up step's and the timed one's
        # The warm-up step is timed apart (compile=true compiles in it).
        assert len(results[name]["warmup_seconds"]) == 1
        assert results[name]["warmup_seconds"][0] > 0
    # 1 of 5 frames: the FLOPs of everything per frame (the optimiser's are not counted).
    assert 4 < results["B"]["gflop"] / results["A"]["gflop"] <= 5
    assert results["first_loss_difference"] < 1e-5
    # B / A is reported; which is faster is a timing, and tests do not assert timings.
    assert results["ratio_b_over_a"]["step"] > 0
    assert results["matmul_peak_gflop_per_s"] > 0


def test_the_command_line_compares_two_configs_and_writes_bench_json(tmp_path):
    compare = 'bench.compare="model.net.mask_head_chunk=1 model.net.activation_checkpointing=true"'
    command = [sys.executable, "-m", "avsac_lit.bench", *S4, "bench.flops=false",
               f"hydra.run.dir={tmp_path}", compare]  # fmt: skip
    finished = commands.run(command, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results == json.loads(finished.stdout.strip().splitlines()[-1])
    assert "B / A" in finished.stdout and "first-step loss" in finished.stdout
    assert "first step (untimed)" in finished.stdout
    # The same model and weights, computed in pieces: the same first loss.
    assert results["first_loss_difference"] < 1e-6


def test_a_configs_resident_bytes_are_its_weights_buffers_batch_and_optimiser_state(tmp_path):
    """What the CUDA peak of a step adds back for the config itself (the other configs stepped in
    the same process are left out): counted here on the CPU, by hand."""
    import torch

    from avsac_lit.profiling.steps import Stepper

    stepper = Stepper(
        compose_config("bench", S4, tmp_path), tmp_path / "cache", torch.device("cpu")
    )

    def size(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    module = stepper.module
    batch = [v for v in stepper.batch.values() if isinstance(v, torch.Tensor)]
    weights = size([*module.parameters(), *module.buffers()]) + size(batch)
    assert stepper.resident_bytes() == weights
    stepper.step(record=False)  # AdamW makes its two moments (and a step count) per parameter
    moments = size(v for s in stepper.optimizer.state.values() for v in s.values())
    assert moments > 0 and stepper.resident_bytes() == weights + moments
