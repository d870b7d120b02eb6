"""Copy what a results folder keeps of a multirun: what ``avsac_lit.report`` reads, without the
checkpoints and overlays.

    python experiments/design/collect_runs.py SWEEP_DIR DEST_DIR

Copies ``multirun.yaml`` and, for every job directory below ``SWEEP_DIR`` (nested sweeps too, such
as Table 2's ``avfs/``), its ``config.yaml``, ``.hydra/overrides.yaml``, ``metrics.json``,
``csv/metrics.csv``, ``train.log`` and ``demo_results.md``. Refuses a ``DEST_DIR`` that exists:
results already kept are never written over.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

KEPT = ("config.yaml", ".hydra/overrides.yaml", "metrics.json", "csv/metrics.csv", "train.log",
        "demo_results.md")  # fmt: skip


def collect(sweep: Path, dest: Path) -> int:
    if dest.exists():
        raise SystemExit(f"{dest} exists: nothing was copied. Choose a new folder.")
    copied = 0
    for record in sorted(sweep.rglob("multirun.yaml")):
        target = dest / record.parent.relative_to(sweep)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record, target / record.name)
    for job in sorted(p.parent for p in sweep.rglob("metrics.json")):
        for name in KEPT:
            source = job / name
            if source.is_file():
                out = dest / job.relative_to(sweep) / name
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, out)
                copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    print(f"{collect(args.sweep, args.dest)} files copied to {args.dest}")


if __name__ == "__main__":
    main()
