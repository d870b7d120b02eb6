"""The code and library versions behind a cell or a paired difference: a cell that averages runs
of different commits (``+dirty`` or not), torch or Lightning versions (what each run's
``metrics.json`` records) carries a numbered mark, explained below the table; the claims mark their
paired differences the same way (:mod:`avsac_lit.analysis.claims`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from avsac_lit.analysis.runs import VERSION_FACTS, Run
from avsac_lit.analysis.table import Table


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


def mixed_cells_note(mixes: dict[tuple[str, str], str], marks: dict[str, str]) -> list[str]:
    """The note below the table on its marked cells (``mixes`` as :func:`mixed_cells` gives them,
    ``marks`` as :func:`numbered` numbers them); none without one."""
    if not mixes:
        return []
    return [
        "† The cell averages runs of different code or libraries (their `metrics.json`): its "
        "spread holds that change as well as the seeds'. Rerun the odd runs on one version "
        "to compare seeds alone.",
        "",
        *(f"- {marks[mix]} {row}, {column}: {mix}" for (row, column), mix in mixes.items()),
        "",
    ]
