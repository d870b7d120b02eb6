"""The paper's claims, tested on the runs: every row of the table paired seed by seed with the
table's own (:mod:`avsac_lit.analysis.paired`: the mean difference, its 95 % interval, n), the
verdict on the order the paper's numbers give, and the report's "Claims" section.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from avsac_lit.analysis.paired import UNRESOLVED, PairedDifference, paired_difference, verdict
from avsac_lit.analysis.quantities import (
    LISTENING_GAP,
    PAIRED_ONLY,
    PAPER_METRICS,
    label_of,
    scale,
)
from avsac_lit.analysis.runs import Run
from avsac_lit.analysis.table import Table
from avsac_lit.analysis.versions import numbered, version_mix


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
        """Supported, contradicted or unresolved (:func:`~avsac_lit.analysis.paired.verdict`);
        None where the paper makes no claim."""
        if self.paper_difference is None:
            return None
        return verdict(self.difference, self.paper_difference)

    def claim(self, ours: str) -> str:
        """The order the paper's numbers give, e.g. "AVSAC (ours) > baseline"."""
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


def interval(difference: PairedDifference, digits: int) -> str:
    """The 95 % interval as "[low, high]"; "– (n=1)" for a single pair."""
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
            "Without a paper value (how much each row listens, and the scores of rows the paper "
            "does not give):",
            "",
            f"| row | column | quantity | {ours} - row | 95 % CI | n |",
            "|---|---|---|---|---|---|",
        ]
        for c in others:
            digits = 2 if c.metric == LISTENING_GAP or scale(c.metric) != 1.0 else 3
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
