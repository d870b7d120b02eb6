"""The report's charts: a bar chart per metric (the seeds' spread as error bars, each seed a dot,
the paper's values as markers, the reference rows as lines), and the claims chart (each paired
difference with its interval, coloured by verdict, the paper's difference beside). Matplotlib is
imported when a chart is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

from avsac_lit.analysis.claims import Comparison
from avsac_lit.analysis.paired import CONTRADICTED, SUPPORTED, UNRESOLVED
from avsac_lit.analysis.quantities import label_of, scale
from avsac_lit.analysis.table import Table
from avsac_lit.storage.atomic import atomic_path


def plot_metric(table: Table, metric: str, path: Path) -> None:
    """The bar chart of ``metric``: a bar per row and column (mean ± std), each seed a dot, the
    reference rows as dashed lines, the paper's values as diamonds."""
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
