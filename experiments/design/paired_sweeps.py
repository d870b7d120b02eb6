"""Two multiruns of the same rows under one changed setting, paired by seed: for
docs/performance.md ("bf16 on the twin").

    python experiments/design/paired_sweeps.py SWEEP_A SWEEP_B [--metrics test/miou ...]

Reads each job's ``metrics.json`` (its seed from the job's ``config.yaml``) and prints, per
metric, every seed's values, B - A paired over the seeds both have, its mean, 95 % confidence
interval (t distribution, n - 1 degrees of freedom) and n, and each sweep's mean wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from avsac_lit.analysis.paired import paired_difference


def runs(sweep: Path) -> dict[int, dict]:
    found = {}
    for metrics in sorted(sweep.glob("*/metrics.json")):
        seed = int(OmegaConf.load(metrics.parent / "config.yaml").seed)
        found[seed] = json.loads(metrics.read_text())
    if not found:
        raise SystemExit(f"{sweep} holds no finished run (*/metrics.json).")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--metrics", nargs="+", default=["test/miou", "test/f"])
    args = parser.parse_args()
    a, b = runs(args.a), runs(args.b)
    for metric in args.metrics:
        values_a = {seed: 100 * run["metrics"][metric] for seed, run in a.items()}
        values_b = {seed: 100 * run["metrics"][metric] for seed, run in b.items()}
        difference = paired_difference(values_b, values_a)
        seeds = ", ".join(
            f"seed {s}: {values_a[s]:.2f} -> {values_b[s]:.2f}"
            for s in sorted(set(values_a) & set(values_b))
        )
        interval = (
            "" if difference.low is None else f" [{difference.low:+.2f}, {difference.high:+.2f}]"
        )
        print(f"{metric} (x100): {seeds}; B - A {difference.mean:+.2f}{interval}, n {difference.n}")
    for name, found in (("A", a), ("B", b)):
        wall = statistics.fmean(run["wall_time_s"] for run in found.values())
        print(f"{name}: mean wall time {wall:.1f} s a run over {len(found)} runs")


if __name__ == "__main__":
    main()
