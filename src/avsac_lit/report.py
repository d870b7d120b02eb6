"""Tables from a multirun: ``python -m avsac_lit.report DIR [--metrics KEY ...]``.

Reads what every run of a multirun leaves in its directory, with no logger needed: ``metrics.json``
(the final metrics and the run's facts), ``config.yaml`` (the config as run) and
``.hydra/overrides.yaml``. Writes beside them, in DIR:

* ``report.md``: the table in the paper's layout (one row per setting, a column pair per task),
  each measured value the mean ± sample standard deviation over the seeds, the paper's value beside
  it where the row is a paper setting, the runs that failed or never ran, and the provenance
  (commands, commits, hardware, wall time);
* ``report.csv``: the same table, one column per number;
* ``report_<metric>.png``: a bar chart per metric, with the seeds' spread as error bars and the
  paper's values as markers;
* with a row to compare against ("(ours)", or the recipe's ``report.reference``): a "Claims"
  section in ``report.md``, each other row paired with it seed by seed
  (:mod:`avsac_lit.analysis.paired`: mean difference, 95 % interval, n, and the verdict on
  the order the paper's numbers claim),
  the same per row in ``report.csv``, and ``report_claims.png``.

A cell that averages runs of different code or libraries (the commit, ``+dirty`` or not, the
torch and Lightning versions their ``metrics.json`` records) carries a mark (``†1``), explained
below the table with the versions and their runs; a paired difference over such runs carries one
in the claims (``‡1``); ``report.csv`` says the same in a "runs differ in" column.

Rows are labelled by the recipe (``report.row`` in the config, set by the settings,
``avsac_lit/conf/setting/*.yaml``, and the table recipes); a multirun without one gets labels from
the overrides that vary across its runs. The paper's values come from the recipe's
``report.paper``. A row averages over seeds.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from avsac_lit.analysis.paired import (
    CONTRADICTED,
    SUPPORTED,
    UNRESOLVED,
    PairedDifference,
    paired_difference,
    verdict,
)
from avsac_lit.data.manifest import DamagedManifestError, reference_scores
from avsac_lit.storage.atomic import atomic_path

# The paper's columns, in percent, and the suite's own when the runs have them.
PAPER_METRICS = {"test/f": "F", "test/miou": "mIoU"}
EXTRA_METRICS = {
    "test_shuffled/miou": "mIoU, shuffled audio",
    "test_silent/miou": "mIoU, silent audio",
    "test/audio_share": "audio share",
    "val/audio_share": "audio share (val, last epoch)",
}
PERCENT_SUFFIXES = ("/f", "/miou", "/f_pooled", "/miou_best")
# Compared pairwise between rows, though not columns of the table: how much a row listens.
LISTENING_GAP = "gap/miou"
PAIRED_ONLY = {LISTENING_GAP: "listening gap (mIoU, true - shuffled audio)",
               "test/audio_share": "audio share"}  # fmt: skip
ERROR_LINE = re.compile(r"\b\w*(Error|Exception|Interrupt)\b.*")
# What a run's numbers depend on besides its config (metrics.json's keys, as a reader names them):
# runs averaged or paired across a change of one are marked. A commit with uncommitted changes
# ("+dirty") is another version than the clean commit.
VERSION_FACTS = {"commit": "commit", "torch": "torch", "lightning": "Lightning"}
NOT_RECORDED = "not recorded"


@dataclass
class Run:
    """One job of the multirun, finished or not."""

    path: Path
    overrides: list[str]
    config: DictConfig | None
    record: dict | None  # metrics.json
    problem: str | None = None
    name: str = ""  # the run's directory under the multirun's

    @property
    def versions(self) -> dict[str, str]:
        """The code and library versions the run recorded (:data:`VERSION_FACTS`)."""
        record = self.record or {}
        return {key: str(record.get(key) or NOT_RECORDED) for key in VERSION_FACTS}

    @property
    def seed(self):
        return self.select("seed", (self.record or {}).get("seed"))

    @property
    def metrics(self) -> dict[str, float]:
        return (self.record or {}).get("metrics", {})

    def select(self, key: str, default=None):
        if self.config is None:
            return default
        try:
            value = OmegaConf.select(self.config, key, default=default)
        except Exception:  # an interpolation that only resolves inside Hydra
            return default
        return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value

    @property
    def task(self) -> str:
        return str((self.record or {}).get("task") or self.select("data.task", "?"))

    @property
    def column(self) -> str:
        task = self.task.upper()
        return f"SynthAVS-{task}" if self.select("data.synthetic") else task


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


class ReportError(RuntimeError):
    """A directory that cannot give a table."""


def scale(metric: str) -> float:
    return 100.0 if metric.endswith(PERCENT_SUFFIXES) else 1.0


def label_of(metric: str) -> str:
    return (PAPER_METRICS.get(metric) or EXTRA_METRICS.get(metric) or PAIRED_ONLY.get(metric)
            or metric)  # fmt: skip


def read_run(path: Path) -> Run:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
    config = None
    for name in ("config.yaml", ".hydra/config.yaml"):
        if (path / name).exists():
            config = OmegaConf.load(path / name)
            break
    record, problem = None, None
    metrics_file = path / "metrics.json"
    if metrics_file.exists():
        try:
            record = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as error:
            problem = f"unreadable metrics.json ({error})"
    else:
        problem = "no metrics.json (failed or unfinished)" + last_error(path)
    return Run(path=path, overrides=list(overrides or []), config=config, record=record,
               problem=problem)  # fmt: skip


def last_error(path: Path) -> str:
    """The last exception line in the run's log files, to say why a run has no metrics."""
    for log_file in sorted(path.glob("*.log")):
        lines = [m.group(0) for m in map(ERROR_LINE.search, log_file.read_text().splitlines()) if m]
        if lines:
            return f": {lines[-1][:200]}"
    return ""


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path) -> list[Run]:
    """Every job directory under ``root``: where Hydra wrote ``.hydra/`` or a run wrote metrics."""
    paths = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    paths |= {p.parent for p in root.rglob("metrics.json")}
    runs = [read_run(p) for p in sorted(paths, key=natural_key)]
    for run in runs:
        run.name = run.path.relative_to(root).as_posix()
    return runs


def multiruns(root: Path) -> list[Path]:
    """Every sweep's ``multirun.yaml`` under ``root``: a table completed by a second sweep in a
    sub-folder has one per sweep."""
    return sorted(root.rglob("multirun.yaml"), key=lambda path: natural_key(path.parent))


def expected_jobs(root: Path) -> list[list[str]]:
    """The jobs the multiruns were asked for, from their ``multirun.yaml``: the sweep of
    ``hydra.sweeper.params`` and the command line, combined as Hydra's basic sweeper does."""
    jobs = []
    for multirun in multiruns(root):
        cfg = OmegaConf.load(multirun)
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        arguments = [f"{key}={value}" for key, value in params.items()]
        arguments += list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
        jobs += sweep_jobs(arguments)
    return jobs


def sweep_jobs(arguments: Sequence[str]) -> list[list[str]]:
    """The jobs of a basic-sweeper multirun: the product of every swept key's values, a key given
    again (on the command line, after the recipe's params) replacing its earlier values in place."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        if override.is_sweep_override():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*values.values())]


def check_runs(root: Path, runs: list[Run], metrics: Sequence[str]) -> list[str]:
    """Mark finished runs that lack a wanted metric; return the jobs that never ran."""
    for run in runs:
        if run.problem is None:
            absent = [m for m in metrics if m in PAPER_METRICS and m not in run.metrics]
            if absent:
                run.problem = f"metrics.json has no {', '.join(absent)}"
    ran = [sorted(run.overrides) for run in runs]
    return [" ".join(job) for job in expected_jobs(root) if sorted(job) not in ran]


def override_values(run: Run) -> dict[str, str]:
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
        return sorted(s for s in self.seeds[row] if s is not None)

    def has_paper(self, metric: str) -> bool:
        return any(
            self.paper_value(row, task, metric) is not None
            for row in self.rows
            for _, task in self.columns
        )


def build_table(runs: list[Run], metrics: Sequence[str], reference: str | None = None) -> Table:
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


def metric_value(metrics: dict[str, float], metric: str) -> float | None:
    """A run's value of ``metric`` on the report's scale (percent for F and mIoU); the listening
    gap is computed from the true and shuffled mIoU."""
    if metric == LISTENING_GAP:
        true, shuffled = metrics.get("test/miou"), metrics.get("test_shuffled/miou")
        return None if true is None or shuffled is None else 100.0 * (true - shuffled)
    value = metrics.get(metric)
    return None if value is None else value * scale(metric)


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


@dataclass
class Comparison:
    """A row against the table's own (``Table.ours``) in one column and metric, paired by seed;
    ``paper_difference``: ours - row in the paper's numbers (None: no claim)."""

    row: str
    column: str
    task: str
    metric: str
    difference: PairedDifference
    paper_difference: float | None
    runs: list[Run] = field(default_factory=list)  # both rows' runs of the seeds paired

    @property
    def verdict(self) -> str | None:
        if self.paper_difference is None:
            return None
        return verdict(self.difference, self.paper_difference)

    def claim(self, ours: str) -> str:
        order = ">" if (self.paper_difference or 0) > 0 else "<" if self.paper_difference else "="
        return f"{ours} {order} {self.row}"


def comparisons(table: Table) -> list[Comparison]:
    """Every row against the table's own, for the paper's metrics (with the paper's sign as the
    claim) and for the listening gap and the audio share (no claim)."""
    if table.ours is None:
        return []
    found = []
    for row in table.rows:
        if row == table.ours or row in table.references:
            continue
        for (column, task), metric in itertools.product(table.columns, [*PAPER_METRICS,
                                                                        *PAIRED_ONLY]):  # fmt: skip
            ours = table.by_seed.get((table.ours, column, metric)) or {}
            other = table.by_seed.get((row, column, metric)) or {}
            difference = paired_difference(ours, other)
            if difference is None:
                continue
            paper = None
            if metric in PAPER_METRICS:
                mine, theirs = (table.paper_value(r, task, metric) for r in (table.ours, row))
                paper = None if mine is None or theirs is None else mine - theirs
            paired = [
                run
                for key in ((table.ours, column), (row, column))
                for run in table.cell_runs.get(key, [])
                if run.seed in ours.keys() & other.keys()
            ]
            found.append(Comparison(row, column, task, metric, difference, paper, paired))
    return found


def version_mix(runs: Sequence[Run]) -> str | None:
    """How ``runs`` differ in :data:`VERSION_FACTS`, e.g. "commit `a1b2` (runs `0`, `2`),
    `c3d4+dirty` (run `1`)"; None when they share every one."""
    parts = []
    for key, name in VERSION_FACTS.items():
        groups: dict[str, list[str]] = {}
        for run in runs:
            groups.setdefault(run.versions[key], []).append(f"`{run.name}`")
        if len(groups) > 1:
            values = (f"`{value}` (run{'s' * (len(names) > 1)} {', '.join(names)})"
                      for value, names in groups.items())  # fmt: skip
            parts.append(f"{name} {', '.join(values)}")
    return "; ".join(parts) or None


def mixed_cells(table: Table) -> dict[tuple[str, str], str]:
    """(row, column) -> how the runs its cells average differ (:func:`version_mix`), for the
    cells whose runs do."""
    mixes = {}
    for row, (column, _) in itertools.product(table.rows, table.columns):
        mix = version_mix(table.cell_runs.get((row, column), []))
        if mix:
            mixes[(row, column)] = mix
    return mixes


def numbered(symbol: str, texts: Sequence[str]) -> dict[str, str]:
    """Footnote marks (``†1``, ``†2``, ...) for the distinct ``texts``, in order."""
    marks: dict[str, str] = {}
    for text in texts:
        marks.setdefault(text, f"{symbol}{len(marks) + 1}")
    return marks


def interval(difference: PairedDifference, digits: int) -> str:
    if difference.low is None:
        return "– (n=1)"
    return f"[{difference.low:+.{digits}f}, {difference.high:+.{digits}f}]"


def claims_section(table: Table, found: list[Comparison]) -> list[str]:
    """The report's "Claims" section: each claim of the paper with its verdict, then the paired
    differences that have no paper value."""
    ours = table.ours
    text = [
        "## Claims",
        "",
        f"Each row against **{ours}**, paired over the seeds both have: the mean of the per-seed "
        f"differences ({ours} - row), its 95 % confidence interval (t distribution, n - 1 degrees "
        "of freedom) and n. The claim is the sign of the paper's own difference. *Supported*: the "
        "interval lies wholly on the paper's side of 0; *contradicted*: wholly on the other side; "
        "*unresolved*: it spans 0, and its half-width is the smallest difference these seeds "
        "could have resolved.",
        "",
    ]
    mixes = {id(c): version_mix(c.runs) for c in found}
    marks = numbered("‡", [mix for mix in mixes.values() if mix])

    def mark(c: Comparison) -> str:
        mix = mixes[id(c)]
        return f" {marks[mix]}" if mix else ""

    claims = [c for c in found if c.paper_difference is not None]
    if claims:
        text += [
            "| claim (paper) | column | metric | paper difference | measured difference | "
            "95 % CI | n | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in claims:
            result = c.verdict
            if result == UNRESOLVED and c.difference.half_width is not None:
                result += f" (resolvable: ±{c.difference.half_width:.2f})"
            text.append(
                f"| {c.claim(ours)} | {c.column} | {label_of(c.metric)} | "
                f"{c.paper_difference:+.2f} | {c.difference.mean:+.2f} | "
                f"{interval(c.difference, 2)} | {c.difference.n} | {result}{mark(c)} |"
            )
        text.append("")
    others = [c for c in found if c.paper_difference is None]
    if others:
        text += [
            "Without a paper value (how much each row listens):",
            "",
            f"| row | column | quantity | {ours} - row | 95 % CI | n |",
            "|---|---|---|---|---|---|",
        ]
        for c in others:
            digits = 2 if c.metric == LISTENING_GAP else 3
            text.append(
                f"| {c.row} | {c.column} | {label_of(c.metric)} | "
                f"{c.difference.mean:+.{digits}f}{mark(c)} | {interval(c.difference, digits)} | "
                f"{c.difference.n} |"
            )
        text.append("")
    if marks:
        text += [
            "‡ The paired runs ran different code or libraries (their `metrics.json`): the "
            "difference holds that change as well as the rows'. Rerun one side on the other's "
            "version before reading it as the rows' difference.",
            "",
        ]
        pairs = {}
        for c in found:
            if mixes[id(c)]:
                pairs.setdefault(marks[mixes[id(c)]], f"{ours} and {c.row}, {c.column}")
        text += [f"- {m} {pairs[m]}: {mix}" for mix, m in marks.items()]
        text.append("")
    return text


def plot_claims(table: Table, claims: list[Comparison], path: Path) -> None:
    """One line per claim: the measured paired difference with its 95 % interval, coloured by
    verdict, and the paper's difference beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {SUPPORTED: "tab:green", CONTRADICTED: "tab:red", UNRESOLVED: "tab:grey"}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(claims)))
    for y, c in enumerate(reversed(claims)):
        d = c.difference
        error = [[d.mean - d.low], [d.high - d.mean]] if d.low is not None else None
        ax.errorbar(d.mean, y, xerr=error, fmt="o", capsize=4, color=colours[c.verdict],
                    label=c.verdict)  # fmt: skip
        ax.scatter(c.paper_difference, y, marker="D", facecolors="none", edgecolors="black",
                   zorder=3, label="paper")  # fmt: skip
    ax.axvline(0.0, color="black", linewidth=0.8)
    labels = [f"{c.claim(table.ours)} ({c.column} {label_of(c.metric)})" for c in reversed(claims)]
    ax.set_yticks(range(len(claims)), labels, fontsize=8)
    ax.set_xlabel(f"{table.ours} - row (points, paired over seeds, 95 % CI)")
    ax.set_title(f"{table.title}: the paper's claims", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, dpi=120, format="png")
    plt.close(fig)


def format_cell(cell: Cell | None, runs_per_row: int, digits: int = 2) -> str:
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


def plot(table: Table, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in table.rows if row not in table.references]
    width = 0.8 / max(len(table.columns), 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(rows) + 1.5), 4.8))
    for index, (column, task) in enumerate(table.columns):
        cells = [table.cells.get((row, column, metric)) for row in rows]
        x = [i + (index - (len(table.columns) - 1) / 2) * width for i in range(len(rows))]
        means = [c.mean if c else math.nan for c in cells]
        errors = [(c.std or 0.0) if c else 0.0 for c in cells]
        bars = ax.bar(x, means, width, yerr=errors, capsize=4, label=f"{column} (mean ± std)")
        seeds_x = [xi for xi, c in zip(x, cells, strict=True) if c for _ in c.values]
        seeds_y = [v for c in cells if c for v in c.values]
        ax.scatter(seeds_x, seeds_y, s=9, color="black", alpha=0.6, zorder=4,
                   label="one seed" if index == 0 else None)  # fmt: skip
        for reference in table.references:
            cell = table.cells.get((reference, column, metric))
            if cell is not None:
                ax.axhline(cell.mean, linestyle="--", color=bars.patches[0].get_facecolor(),
                           label=f"{column}: {reference}")  # fmt: skip
        paper = [table.paper_value(row, task, metric) for row in rows]
        if any(v is not None for v in paper):
            ax.scatter(x, [math.nan if v is None else v for v in paper], marker="D",
                       facecolors="none", edgecolors="black", zorder=3,
                       label=f"paper, AVSBench {task.upper()}")  # fmt: skip
    ax.set_xticks(range(len(rows)), rows, rotation=15, ha="right")
    ax.set_ylabel(label_of(metric) + (" (%)" if scale(metric) == 100.0 else ""))
    ax.set_title(f"{table.title}: {label_of(metric)}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, dpi=120, format=path.suffix.lstrip("."))
    plt.close(fig)


def provenance(root: Path, runs: list[Run]) -> list[str]:
    """Where the numbers come from: the command, the code, the machine, the time spent."""
    lines = []
    for multirun in multiruns(root):
        task = OmegaConf.select(OmegaConf.load(multirun), "hydra.overrides.task") or []
        where = multirun.parent.relative_to(root).as_posix()
        suffix = "" if where == "." else f" (runs under `{where}/`)"
        lines.append(f"- Command: `python -m avsac_lit.train -m {' '.join(task)}`{suffix}")
    records = [run.record for run in runs if run.record]
    facts = (("commit", "Commit"), ("hardware", "Hardware"), ("torch", "torch"),
             ("lightning", "Lightning"))  # fmt: skip
    for key, name in facts:
        seen = sorted({str(r.get(key)) for r in records if r.get(key)})
        if seen:
            lines.append(f"- {name}: {', '.join(f'`{s}`' for s in seen)}")
    dirty = [run.name for run in runs if str((run.record or {}).get("commit")).endswith("+dirty")]
    if dirty:
        lines.append(
            f"- {len(dirty)} of the runs ran with uncommitted changes (`+dirty`: "
            f"{', '.join(f'`{name}`' for name in dirty)}): their commit does not name their code, "
            "and runs that record the same `+dirty` commit may still have run different code."
        )
    walls = [r["wall_time_s"] for r in records if isinstance(r.get("wall_time_s"), int | float)]
    if walls:
        total = sum(walls)
        lines.append(
            f"- Wall time: {total / 60:.1f} min over {len(walls)} runs "
            f"({statistics.fmean(walls):.0f} s per run, one after another)"
        )
    return lines


def report(
    root: Path, metrics: Sequence[str] | None = None, reference: str | None = None
) -> dict[str, Path]:
    """Write the report files into ``root``; returns them by kind. ``reference`` names the row
    the claims compare the others with, over the runs' ``report.reference``. Raises
    :class:`ReportError` when there is no finished run to tabulate."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory. Pass a multirun directory, e.g. "
                          "logs/train/multiruns/<date>_<time>.")  # fmt: skip
    runs = find_runs(root)
    wanted = list(metrics or PAPER_METRICS)
    missing = check_runs(root, runs, wanted)
    finished = [run for run in runs if run.problem is None]
    if not finished:
        problems = "".join(f"\n  {run.path}: {run.problem}" for run in runs)
        raise ReportError(
            f"{root}: no finished runs to report (a finished run has a metrics.json with "
            f"{', '.join(PAPER_METRICS)}). Found {len(runs)} run directories{problems or '.'}"
            + (f"\n  {len(missing)} jobs never started." if missing else "")
            + "\nPass the directory of a multirun whose jobs finished (logs/train/multiruns/...)."
        )
    if metrics is None:
        wanted += [m for m in EXTRA_METRICS if all(m in run.metrics for run in finished)]
        if "test/audio_share" in wanted and "val/audio_share" in wanted:
            wanted.remove("val/audio_share")  # the tested model's, rather than the last epoch's
    table = build_table(runs, wanted, reference)
    mixes = mixed_cells(table)
    marks = numbered("†", list(mixes.values()))

    failed = [run for run in runs if run.problem is not None]
    text = [f"# {table.title}", ""]
    text += [
        "Measured: mean ± sample standard deviation over seeds, in percent for F and mIoU"
        + (", the audio share from 0 to 1" if any("audio_share" in m for m in wanted) else "")
        + f" ({len(finished)} finished runs under `{root.name}/`).",
        "",
        markdown_table(table, {key: marks[mix] for key, mix in mixes.items()}),
        "",
    ]
    if mixes:
        text += [
            "† The cell averages runs of different code or libraries (their `metrics.json`): its "
            "spread holds that change as well as the seeds'. Rerun the odd runs on one version "
            "to compare seeds alone.",
            "",
            *(f"- {marks[mix]} {row}, {column}: {mix}" for (row, column), mix in mixes.items()),
            "",
        ]
    if any(table.has_paper(m) for m in wanted):
        text.append("Paper values: AVSBench with the paper's backbone, from the table named above.")
        if any(column.startswith("SynthAVS") for column, _ in table.columns):
            text.append(
                "The measured values are on synthetic data: compare orderings, not magnitudes."
            )
        text.append("")
    found = comparisons(table)
    if found:
        text += claims_section(table, found)
    if failed or missing:
        text += ["## Runs without results", ""]
        text += [f"- `{run.path.relative_to(root)}`: {run.problem}" for run in failed]
        text += [f"- never started: `{job}`" for job in missing]
        text.append("")
    text += ["## Provenance", "", *provenance(root, runs), ""]

    files = {"markdown": root / "report.md", "csv": root / "report.csv"}
    with atomic_path(files["markdown"]) as partial:
        partial.write_text("\n".join(text))
    write_csv(table, files["csv"], found)
    claims = [c for c in found if c.paper_difference is not None]
    if claims:
        files["claims"] = root / "report_claims.png"
        plot_claims(table, claims, files["claims"])
    for metric in wanted:
        if any(key[2] == metric for key in table.cells):
            files[metric] = root / f"report_{metric.replace('/', '_')}.png"
            plot(table, metric, files[metric])
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avsac_lit.report",
        description="Tabulate a multirun (mean ± std over seeds, the paper's values beside).",
    )
    parser.add_argument("directory", type=Path, help="a multirun directory")
    parser.add_argument(
        "--metrics", nargs="+", metavar="KEY",
        help="metrics.json keys to tabulate (default: test/f test/miou, and the suite's "
        "counterfactual and audio-share metrics when every run has them)",
    )  # fmt: skip
    parser.add_argument(
        "--reference", metavar="ROW",
        help="the row the claims compare the others with (default: the recipe's "
        "report.reference, else the row marked (ours)); for multiruns whose config names none",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        files = report(args.directory, args.metrics, args.reference)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(files["markdown"].read_text())
    print("Written: " + ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
