"""Is a slow training step the host's or the code's? For docs/performance.md ("bfloat16 and
compile").

    python experiments/design/host_check.py [+experiment=synthetic_ms3] [override ...]

Prints what the step runs on (CPU model and flags that matter, torch's threads and its parallel
backend), the matmul peak in float32 and bfloat16, and the step of the config (built as
``avsac_lit.bench`` builds it) timed in turn with denormals flushed to zero and not, so that a
step slowed by denormal arithmetic would show as a ratio well below 1.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

from avsac_lit.bench import Stepper, matmul_peak
from avsac_lit.run.assemble import compose_config


def cpu_facts() -> str:
    model, flags = "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{model}; " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def main(overrides: list[str]) -> None:
    overrides = overrides or ["+experiment=synthetic_ms3"]
    print(cpu_facts())
    parallel = [
        line.strip()
        for line in torch.__config__.parallel_info().splitlines()
        if "threads" in line or "backend" in line
    ]
    print(f"torch {torch.__version__}: " + "; ".join(parallel))
    device = torch.device("cpu")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"matmul peak, {dtype}: {matmul_peak(device, dtype):.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose_config("bench", overrides, Path(scratch) / "run")
        torch.manual_seed(cfg.seed)
        stepper = Stepper(cfg, Path(scratch) / "cache", device)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(2):
            stepper.step(record=False)
        for _ in range(cfg.bench.steps):
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                stepper.step(record=True)
                times[flush].append(stepper.times["step"][-1])
        torch.set_flush_denormal(False)
    plain, flushed = (statistics.median(times[f]) for f in (False, True))
    print(
        f"step, median of {cfg.bench.steps}: {plain:.4f} s as run, {flushed:.4f} s with "
        f"denormals flushed to zero (ratio {flushed / plain:.3f})"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
