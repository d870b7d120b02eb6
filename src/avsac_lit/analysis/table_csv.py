"""``report.csv``: the table one column per number, each row's paired differences from the
reference row beside, and which code or library versions the runs behind each differ in.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from avsac_lit.analysis.claims import Comparison
from avsac_lit.analysis.quantities import PAIRED_ONLY, PAPER_METRICS, label_of
from avsac_lit.analysis.table import Table
from avsac_lit.analysis.versions import mixed_cells, version_mix
from avsac_lit.storage.atomic import atomic_path


def write_csv(table: Table, path: Path, found: Sequence[Comparison] = ()) -> None:
    """The table, one column per number; with a reference row, each row's paired difference
    from it (mean, 95 % interval, n and, for the paper's metrics, the verdict). A column per
    task, and per paired difference, says how the runs it holds differ in code or libraries
    (:func:`version_mix`; empty when they do not)."""
    mixes = mixed_cells(table)
    paired = {(c.row, c.column, c.metric): c for c in found}
    compared = sorted(
        {(c.column, c.metric) for c in found},
        key=lambda key: (key[0], [*PAPER_METRICS, *PAIRED_ONLY].index(key[1])),
    )
    header = ["setting"]
    for column, task, metric, with_paper in table.layout():
        name = f"{column} {label_of(metric)}"
        header += [f"{name} mean", f"{name} std", f"{name} n"]
        if with_paper:
            header.append(f"paper {task.upper()} {label_of(metric)}")
    for column, metric in compared:
        name = f"{column} {label_of(metric)}: {table.ours} - row"
        header += [f"{name} mean", f"{name} ci low", f"{name} ci high", f"{name} n"]
        if metric in PAPER_METRICS:
            header += [f"{name} paper", f"{name} verdict"]
        header.append(f"{name} runs differ in")
    header += [f"{column} runs differ in" for column, _ in table.columns]
    header.append("seeds")
    with atomic_path(path) as partial, partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in table.rows:
            line: list = [row]
            for column, task, metric, with_paper in table.layout():
                cell = table.cells.get((row, column, metric))
                if cell is None:
                    line += ["", "", 0]
                else:
                    std = "" if cell.std is None else round(cell.std, 4)
                    line += [round(cell.mean, 4), std, len(cell.values)]
                if with_paper:
                    value = table.paper_value(row, task, metric)
                    line.append("" if value is None else value)
            for column, metric in compared:
                c = paired.get((row, column, metric))
                if c is None:
                    line += ["", "", "", 0] + (["", ""] if metric in PAPER_METRICS else []) + [""]
                    continue
                d = c.difference
                bounds = ["", ""] if d.low is None else [round(d.low, 4), round(d.high, 4)]
                line += [round(d.mean, 4), *bounds, d.n]
                if metric in PAPER_METRICS:
                    paper = "" if c.paper_difference is None else round(c.paper_difference, 4)
                    line += [paper, c.verdict or ""]
                line.append(plain(version_mix(c.runs)))
            line += [plain(mixes.get((row, column))) for column, _ in table.columns]
            line.append(" ".join(map(str, table.seed_list(row))))
            writer.writerow(line)


def plain(text: str | None) -> str:
    """Markdown's code quotes left out, for the CSV."""
    return (text or "").replace("`", "")
