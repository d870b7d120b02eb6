"""How many epochs do the twins need? Validation mIoU per epoch of the slowest and the fastest
learner, and the schedule a rule written down before the curves were seen picks from them.

    python experiments/design/budget_study.py run DIR [--seeds 1 2] [--epochs 30]
    python experiments/design/budget_study.py chart DIR --slowest-epoch-minutes M
    python experiments/design/budget_study.py budget TIMES --wanted E [--hours 5] --out FILE
    python experiments/design/budget_study.py chart DIR --budget FILE

``run`` trains, side by side (one thread each), the 6-layer AVSAC (Table 5's deepest row: the
slowest learner of the twins) and the 2-layer BAVD without AVFS (Table 2's row 2: the fastest),
on the twins' SynthAVS-MS3 at the demo's 96 px, validating after every epoch, with the cosine
schedule over ``--epochs``; each run goes to ``DIR/<name>-seed<seed>/``. ``chart`` reads their
``csv/metrics.csv``, applies :func:`schedule` and draws the curves (``DIR/budget_study.png``, the
figures in ``DIR/budget_study.json``).

``budget`` applies issue 40's budget clause (docs/design_log.md, "Issue 40: the frozen-encoder
twin"): from the wall times of runs of each row alone on 2 threads, of 2 and 3 epochs and more
(``TIMES``: lines ``row epochs seconds``, as ``experiments/design/measure_cost.sh`` writes them;
the line through each row's runs gives its minutes per epoch and per run), the minutes
of the planned runs (1)-(3) at ``--wanted`` epochs; if they exceed ``--hours``, the largest
multiple of 5 epochs that fits. ``chart --budget FILE`` then draws that schedule instead of the
per-table budget of issue 28.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LEARNERS = {
    "avsac-6-layers": ["+table=synthetic_table5", "model.net.decoder_layers=6"],
    "bavd-2-layers": ["+table=synthetic_table2", "setting=bavd"],
}
COMMON = [
    "data.img_size=96", "trainer.check_val_every_n_epoch=1", "logger=csv", "test=false",
    "~callbacks.overlays", "model.audio_share_batches=0", "data.num_workers=0",
]  # fmt: skip

# The rule, fixed before any curve was seen (docs/design_log.md, "The twins' budget"):
WITHIN_POINTS = 1.0  # a run has plateaued at the first epoch within 1 point of its best
ROUND_TO = 5  # the schedule is the latest plateau epoch over the runs, rounded up to this


def plateau_epoch(curve: list[float]) -> int:
    """The first epoch (1-based) whose validation mIoU (points) is within WITHIN_POINTS of the
    run's best."""
    best = max(curve)
    return next(
        epoch for epoch, value in enumerate(curve, start=1) if value >= best - WITHIN_POINTS
    )


def schedule(
    curves: dict[str, list[float]],
    slowest_epoch_minutes: float,
    runs_per_table: int = 9,
    minutes_per_table: float = 90.0,
) -> dict:
    """The epochs every row of a twin trains for: the latest plateau over the runs, rounded up
    to a multiple of ROUND_TO; lowered to the largest multiple that keeps a table
    (``runs_per_table`` runs one after another, each at the slowest learner's minutes per epoch
    on 2 threads) within ``minutes_per_table``, and then marked as bound by the budget."""
    plateaus = {name: plateau_epoch(curve) for name, curve in curves.items()}
    wanted = ROUND_TO * math.ceil(max(plateaus.values()) / ROUND_TO)
    epochs_in_budget = minutes_per_table / (runs_per_table * slowest_epoch_minutes)
    affordable = ROUND_TO * math.floor(epochs_in_budget / ROUND_TO)
    return {
        "plateau_epochs": plateaus,
        "wanted_epochs": wanted,
        "affordable_epochs": affordable,
        "epochs": min(wanted, affordable),
        "budget_bound": affordable < wanted,
        "slowest_epoch_minutes": slowest_epoch_minutes,
    }


def run(directory: Path, seeds: list[int], epochs: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    jobs = []
    for name, overrides in LEARNERS.items():
        for seed in seeds:
            out = directory / f"{name}-seed{seed}"
            settings = [f"seed={seed}", f"trainer.max_epochs={epochs}", f"hydra.run.dir={out}"]
            command = [sys.executable, "-m", "avsac_lit.train", *overrides, *COMMON, *settings]
            log = (directory / f"{name}-seed{seed}.log").open("w")
            jobs.append((out, subprocess.Popen(command, env=env, stdout=log, stderr=log)))
            print("started", " ".join(command), flush=True)
    started = time.time()
    for out, job in jobs:
        print(
            out.name,
            "exit",
            job.wait(),
            f"after {(time.time() - started) / 60:.1f} min",
            flush=True,
        )


def read_curve(run_dir: Path) -> list[float]:
    """Validation mIoU (points) per epoch."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/miou")]
    by_epoch = {int(float(row["epoch"])): 100 * float(row["val/miou"]) for row in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]


def chart(
    directory: Path,
    slowest_epoch_minutes: float | None,
    minutes_per_table: float,
    budget_file: Path | None = None,
) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(p for p in directory.iterdir() if (p / "csv" / "metrics.csv").is_file())
    curves = {run_dir.name: read_curve(run_dir) for run_dir in runs}
    if budget_file is None:
        # Tables 2 and 5: 3 rows x 3 seeds each; the 6-layer AVSAC is their slowest row.
        result = schedule(curves, slowest_epoch_minutes, minutes_per_table=minutes_per_table)
    else:
        result = {"plateau_epochs": {name: plateau_epoch(c) for name, c in curves.items()}}
        result |= json.loads(budget_file.read_text())
    result["curves"] = curves
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, curve in curves.items():
        line = ax.plot(range(1, len(curve) + 1), curve, marker=".", label=name)[0]
        plateau = result["plateau_epochs"][name]
        ax.scatter([plateau], [curve[plateau - 1]], marker="o", s=60, facecolors="none",
                   edgecolors=line.get_color(), zorder=3)  # fmt: skip
    label = f"schedule: {result['epochs']} epochs"
    if result["budget_bound"]:
        label += f" (the budget's; the plateau wanted {result['wanted_epochs']})"
    ax.axvline(result["epochs"], color="black", linestyle="--", label=label)
    ax.set_xlabel("epoch (cosine schedule over the whole run)")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title("SynthAVS-MS3, 96 px: when do the slowest and fastest learners flatten?\n"
                 f"(circles: first epoch within {WITHIN_POINTS:g} point of the run's best)",
                 fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "budget_study.png", dpi=120)
    (directory / "budget_study.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=2))
    return result


# Issue 40's plan, in its order of priority: (group, row measured for its cost, runs), as the
# rules counted them: Table 3's AVSAC row under cross-attention is Table 2's (seeds 1-3), and
# Table 3's other rows and Table 4's cost at most what AVSAC with 2 layers costs.
PLAN = [
    ("(1) Table 2", "avsegformer", 5), ("(1) Table 2", "bavd-2", 5), ("(1) Table 2", "avsac-2", 5),
    ("(1) Table 5", "avsac-2", 5), ("(1) Table 5", "avsac-4", 5), ("(1) Table 5", "avsac-6", 5),
    ("(2) Table 3", "avsac-2", 9), ("(2) Table 3, channel gate", "avsac-2-gate", 12),
    ("(3) AVFS readings", "avsac-2", 15),
    ("(4) Table 4", "avsac-2", 15),
]  # fmt: skip


def row_costs(times: Path) -> dict[str, dict[str, float]]:
    """Per row, minutes per epoch and the minutes every run spends besides its epochs (start,
    caches, the tests with matched and shuffled audio): the least-squares line through its runs'
    wall times against their epochs (two runs give the line through both)."""
    seconds: dict[str, list[tuple[int, float]]] = {}
    for line in times.read_text().splitlines():
        row, epochs, wall = line.split()
        seconds.setdefault(row, []).append((int(epochs), float(wall) / 60))
    costs = {}
    for row, points in seconds.items():
        mean_e = sum(e for e, _ in points) / len(points)
        mean_m = sum(m for _, m in points) / len(points)
        epoch = sum((e - mean_e) * (m - mean_m) for e, m in points) / sum(
            (e - mean_e) ** 2 for e, _ in points
        )
        costs[row] = {"epoch_minutes": epoch, "fixed_minutes": mean_m - epoch * mean_e}
    return costs


def budget(times: Path, wanted: int, hours: float, out: Path) -> dict:
    costs = row_costs(times)

    def minutes(keep: Callable[[str], bool], epochs: int) -> float:
        """Minutes of the planned runs whose group ``keep`` keeps, at ``epochs``."""
        return sum(
            runs * (costs[row]["fixed_minutes"] + epochs * costs[row]["epoch_minutes"])
            for group, row, runs in PLAN
            if keep(group)
        )

    def planned(group: str) -> bool:
        return group.startswith(("(1)", "(2)", "(3)"))

    epochs = wanted
    while epochs > ROUND_TO and minutes(planned, epochs) > 60 * hours:
        epochs -= ROUND_TO
    result = {
        "row_costs": costs,
        "wanted_epochs": wanted,
        "minutes_1_to_3_at_wanted": minutes(planned, wanted),
        "epochs": epochs,
        "budget_bound": epochs < wanted,
        "minutes_1_to_3": minutes(planned, epochs),
        "minutes_4": minutes(lambda group: group.startswith("(4)"), epochs),
        "minutes_per_group": {
            group: minutes(lambda g, group=group: g == group, epochs)
            for group in dict.fromkeys(g for g, _, _ in PLAN)
        },
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("directory", type=Path)
    runner.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    runner.add_argument("--epochs", type=int, default=30)
    drawer = commands.add_parser("chart")
    drawer.add_argument("directory", type=Path)
    drawer.add_argument(
        "--slowest-epoch-minutes", type=float,
        help="minutes per epoch of the 6-layer AVSAC alone on 2 threads (a short run's wall time)",
    )  # fmt: skip
    drawer.add_argument("--budget", type=Path, help="the schedule `budget` wrote (issue 40)")
    drawer.add_argument("--minutes-per-table", type=float, default=90.0)
    budgeter = commands.add_parser("budget")
    budgeter.add_argument("times", type=Path)
    budgeter.add_argument("--wanted", type=int, required=True, help="the plateau rule's epochs")
    budgeter.add_argument("--hours", type=float, default=5.0)
    budgeter.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run(args.directory, args.seeds, args.epochs)
    elif args.command == "budget":
        budget(args.times, args.wanted, args.hours, args.out)
    elif args.budget is None and args.slowest_epoch_minutes is None:
        parser.error("chart needs --slowest-epoch-minutes (issue 28's rule) or --budget FILE")
    else:
        chart(args.directory, args.slowest_epoch_minutes, args.minutes_per_table, args.budget)


if __name__ == "__main__":
    main()
