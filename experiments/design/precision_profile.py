"""Where a training step's time goes in float32 and in bf16-mixed, operator by operator, for
docs/performance.md ("bfloat16 and compile").

    python experiments/design/precision_profile.py [+experiment=synthetic_ms3] [override ...]

Builds the config's module as ``avsac_lit.bench`` does (same random batch, same steps), warms
both paths up, then profiles ``--steps`` steps of each with torch.profiler, interleaved. Prints,
per path, the operators with the most self CPU time, and the time in three groups: the casts
autocast inserts (``aten::_to_copy`` and ``aten::copy_``), the matrix products and convolutions
(where bfloat16 can pay), and everything else.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from avsac_lit.profiling.steps import Stepper
from avsac_lit.run.assemble import compose_config

COMPUTE = ("conv", "mm", "addmm", "bmm", "linear", "matmul", "baddbmm")
CASTS = ("aten::_to_copy", "aten::copy_")


def group(name: str) -> str:
    if name in CASTS:
        return "casts"
    if any(part in name for part in COMPUTE):
        return "matmul/conv"
    return "other"


def profile_steps(stepper: Stepper, steps: int) -> dict[str, float]:
    """Self CPU seconds per operator over ``steps`` steps."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            stepper.step(record=True)
    totals: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        if event.key.startswith("aten::"):
            totals[event.key] += event.self_cpu_time_total / 1e6
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = args.overrides or ["+experiment=synthetic_ms3"]
    paths = {"float32": "trainer.precision=32-true", "bf16-mixed": "trainer.precision=bf16-mixed"}
    with tempfile.TemporaryDirectory() as scratch:
        steppers = {}
        for name, precision in paths.items():
            cfg = compose_config("bench", [*overrides, precision], Path(scratch) / name)
            torch.manual_seed(cfg.seed)
            steppers[name] = Stepper(cfg, Path(scratch) / f"cache_{name}", torch.device("cpu"))
        for _ in range(2):  # warm-up: the feature cache, the allocator, oneDNN's primitives
            for stepper in steppers.values():
                stepper.step(record=False)
        totals = {name: defaultdict(float) for name in steppers}
        for _ in range(args.steps):
            for name, stepper in steppers.items():
                for key, seconds in profile_steps(stepper, 1).items():
                    totals[name][key] += seconds
    for name, ops in totals.items():
        wall = sum(steppers[name].times["step"])
        print(f"\n{name}: {args.steps} steps, {wall / args.steps:.4f} s a step (profiled)")
        groups: dict[str, float] = defaultdict(float)
        for key, seconds in ops.items():
            groups[group(key)] += seconds
        total = sum(groups.values())
        for key, seconds in sorted(groups.items(), key=lambda item: -item[1]):
            print(f"  {key:<12} {seconds / args.steps:.4f} s a step ({100 * seconds / total:.0f}%)")
        print("  top operators by self CPU time (s a step)")
        for key, seconds in sorted(ops.items(), key=lambda item: -item[1])[: args.top]:
            print(f"    {key:<40} {seconds / args.steps:.4f}")


if __name__ == "__main__":
    main()
