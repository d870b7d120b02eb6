"""The paper-style table of a multirun: one row per setting (the recipe's ``report.row``, or the
overrides that vary), a column per task, each cell the runs' values over the seeds, the paper's
values beside (``report.paper``), the row the others are compared with, and on synthetic data the
vision-only reference from the data's manifest; then the table as Markdown.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from avsac_lit.analysis.quantities import PAIRED_ONLY, PAPER_METRICS, label_of, metric_value, scale
from avsac_lit.analysis.runs import Run
from avsac_lit.data.manifest import DamagedManifestError, reference_scores


class ReportError(RuntimeError):
    """A directory that cannot give a table."""


@dataclass
class Cell:
    """The values of one (row, column, metric) of the table, a run each."""

    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        """The mean of the cell's values."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """The sample standard deviation of the values; None for a single one."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def override_values(run: Run) -> dict[str, str]:
    """The run's command-line overrides, key -> value."""
    return dict(o.split("=", 1) for o in run.overrides if "=" in o)


def row_labels(runs: list[Run]) -> dict[Path, str]:
    """``report.row`` where the recipe sets it; otherwise the overrides that vary between runs of
    the same column, the seed left out (a row is what the seeds are averaged over)."""
    values = {run.path: override_values(run) for run in runs}
    keys = {key for v in values.values() for key in v if key.lstrip("+~") != "seed"}
    varying = []
    for key in sorted(keys):
        per_column: dict[str, set] = {}
        for run in runs:
            per_column.setdefault(run.column, set()).add(values[run.path].get(key))
        if any(len(seen) > 1 for seen in per_column.values()):
            varying.append(key)
    labels = {}
    for run in runs:
        row = run.select("report.row")
        if row is None:
            row = ", ".join(f"{k}={values[run.path].get(k, '-')}" for k in varying) or "all runs"
        labels[run.path] = str(row)
    return labels


@dataclass
class Table:
    title: str
    rows: list[str]
    columns: list[tuple[str, str]]  # (column label, task)
    metrics: list[str]
    cells: dict[tuple[str, str, str], Cell]  # (row, column, metric)
    paper: dict
    seeds: dict[str, set]
    references: list[str] = field(default_factory=list)  # rows that are no runs
    # (row, column, metric) -> {seed: value}: what paired comparisons read.
    by_seed: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    ours: str | None = None  # the row every other is compared with
    # (row, column) -> the finished runs its cells average.
    cell_runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def paper_value(self, row: str, task: str, metric: str) -> float | None:
        """The paper's value of a row for a task and one of the paper's metrics, if it gives one."""
        if metric not in PAPER_METRICS:
            return None
        short = metric.split("/", 1)[1]
        value = self.paper.get(row, {}).get(task, {}).get(short)
        return None if value is None else float(value)

    def layout(self) -> list[tuple[str, str, str, bool]]:
        """The value columns, left to right: (column, task, metric, with the paper's beside)."""
        return [
            (column, task, metric, self.has_paper(metric))
            for column, task in self.columns
            for metric in self.metrics
        ]

    def seed_list(self, row: str) -> list:
        """The seeds of the row's runs, sorted."""
        return sorted(s for s in self.seeds[row] if s is not None)

    def has_paper(self, metric: str) -> bool:
        """Whether the paper gives a value of ``metric`` for any cell of the table."""
        return any(
            self.paper_value(row, task, metric) is not None
            for row in self.rows
            for _, task in self.columns
        )


def build_table(runs: list[Run], metrics: Sequence[str], reference: str | None = None) -> Table:
    """The table of the finished ``runs`` for ``metrics``, its rows in the paper's order;
    ``reference`` names the row compared with the others (:func:`reference_row`)."""
    finished = [run for run in runs if run.problem is None]
    labels = row_labels(finished)
    rows: list[str] = []
    columns: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], Cell] = {}
    by_seed: dict[tuple[str, str, str], dict] = {}
    seeds: dict[str, set] = {}
    cell_runs: dict[tuple[str, str], list[Run]] = {}
    for run in finished:
        row = labels[run.path]
        if row not in rows:
            rows.append(row)
        if (run.column, run.task) not in columns:
            columns.append((run.column, run.task))
        seed = run.seed
        seeds.setdefault(row, set()).add(seed)
        cell_runs.setdefault((row, run.column), []).append(run)
        for metric in dict.fromkeys([*metrics, *PAIRED_ONLY]):
            value = metric_value(run.metrics, metric)
            if value is None:
                continue
            if metric in metrics:
                cells.setdefault((row, run.column, metric), Cell()).values.append(value)
            by_seed.setdefault((row, run.column, metric), {})[seed] = value
    first = finished[0]
    title = first.select("report.title") or first.select("group") or "Multirun"
    paper = first.select("report.paper") or {}
    # Runs are found in directory order, which a sweep extended later (a row added in a
    # sub-folder) scrambles; the paper's rows give the order a reader compares against.
    paper_order = {row: index for index, row in enumerate(paper)}
    rows.sort(key=lambda row: paper_order.get(row, len(paper_order)))
    table = Table(title=str(title), rows=rows, columns=columns, metrics=list(metrics),
                  cells=cells, paper=paper, seeds=seeds, by_seed=by_seed,
                  ours=reference_row(first, rows, reference), cell_runs=cell_runs)  # fmt: skip
    add_vision_only_reference(table, finished)
    return table


def reference_row(run: Run, rows: list[str], given: str | None = None) -> str | None:
    """The row the others are compared with: ``given`` (``--reference``), else the recipe's
    ``report.reference``, else the row marked "(ours)"."""
    named, source = (given, "--reference") if given is not None else (
        run.select("report.reference"), "report.reference")  # fmt: skip
    if named is not None:
        if named not in rows:
            raise ReportError(f"{source}={named!r} is no row of this table "
                              f"({', '.join(rows)}).")  # fmt: skip
        return str(named)
    ours = [row for row in rows if "(ours)" in row]
    return ours[0] if len(ours) == 1 else None


def add_vision_only_reference(table: Table, runs: list[Run]) -> None:
    """On synthetic data, the generator's score for segmenting every visible object (what a model
    that does not listen can reach) as a row of its own, from the data's manifest."""
    roots = {}
    for run in runs:
        root = run.select("data.root")
        if root is not None:
            roots.setdefault(run.column, Path(str(root)))
    row = "reference: every visible object (no audio)"
    for column, root in roots.items():
        try:
            vision_only = reference_scores(root).get("vision_only")
        except DamagedManifestError as error:
            raise ReportError(f"The data of column {column!r}: {error}") from error
        if not vision_only:
            continue
        for metric, key in (("test/f", "fscore"), ("test/miou", "miou")):
            if metric in table.metrics and key in vision_only:
                cell = Cell([vision_only[key] * scale(metric)])
                table.cells[(row, column, metric)] = cell
        if row not in table.rows:
            table.rows.append(row)
            table.references.append(row)
            table.seeds[row] = set()


def format_cell(cell: Cell | None, runs_per_row: int, digits: int = 2) -> str:
    """The cell as "mean ± std", with n where it holds fewer values than the row has runs."""
    if cell is None or not cell.values:
        return "–"
    text = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        text += f" ± {cell.std:.{digits}f}"
    if len(cell.values) != runs_per_row:
        text += f" (n={len(cell.values)})"
    return text


def markdown_table(table: Table, marks: dict[tuple[str, str], str] | None = None) -> str:
    """The table with measured and paper values side by side; a cell of (row, column) in
    ``marks`` carries its footnote mark."""
    marks = marks or {}
    header = ["Setting"]
    for column, task, metric, with_paper in table.layout():
        header.append(f"{column} {label_of(metric)}")
        if with_paper:
            header.append(f"paper {task.upper()} {label_of(metric)}")
    header.append("seeds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        seeds = table.seed_list(row)
        expected = 1 if row in table.references else len(seeds)
        line = [row]
        for column, task, metric, with_paper in table.layout():
            digits = 2 if scale(metric) != 1.0 else 3  # percentages, or fractions (audio share)
            cell = table.cells.get((row, column, metric))
            text = format_cell(cell, expected, digits)
            if cell is not None and (row, column) in marks:
                text += f" {marks[(row, column)]}"
            line.append(text)
            if with_paper:
                value = table.paper_value(row, task, metric)
                line.append("–" if value is None else f"{value:.2f}")
        line.append(", ".join(map(str, seeds)))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)
