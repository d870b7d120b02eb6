"""Tables from a multirun: ``python -m avsac_lit.report DIR [--metrics KEY ...]``.

Reads what every run of a multirun leaves in its directory, with no logger needed: ``metrics.json``
(the final metrics and the run's facts), ``config.yaml`` (the config as run) and
``.hydra/overrides.yaml``. Writes beside them, in DIR (or in ``--out``):

* ``report.md``: the table in the paper's layout (one row per setting, a column pair per task),
  each measured value the mean ± sample standard deviation over the seeds, the paper's value beside
  it where the row is a paper setting, the runs that failed or never ran, and the provenance
  (commands, commits, hardware, wall time);
* ``report.csv``: the same table, one column per number;
* ``report_<metric>.png``: a bar chart per metric, with the seeds' spread as error bars and the
  paper's values as markers;
* with a row to compare against ("(ours)", or the recipe's ``report.reference``): a "Claims"
  section in ``report.md``, each other row paired with it seed by seed
  (:mod:`avsac_lit.analysis.claims`: mean difference, 95 % interval, n, and the verdict on
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

The command finds the runs, tabulates them and writes the files; what each part is comes from
:mod:`avsac_lit.analysis`: the runs (``runs``), the table and its Markdown (``table``), the paired
claims (``claims``), the version marks (``versions``), the CSV (``table_csv``) and the charts
(``plots``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avsac_lit.analysis.claims import claims_section, comparisons
from avsac_lit.analysis.plots import plot_claims, plot_metric
from avsac_lit.analysis.quantities import PAPER_METRICS, default_metrics
from avsac_lit.analysis.runs import check_runs, find_runs, provenance, runs_without_results
from avsac_lit.analysis.table import ReportError, build_table, markdown_table
from avsac_lit.analysis.table_csv import write_csv
from avsac_lit.analysis.versions import mixed_cells, mixed_cells_note, numbered
from avsac_lit.storage.atomic import atomic_path


def report(
    root: Path,
    metrics: Sequence[str] | None = None,
    reference: str | None = None,
    out: Path | None = None,
) -> dict[str, Path]:
    """Write the report files into ``out`` (default ``root``); returns them by kind.
    ``reference`` names the row the claims compare the others with, over the runs'
    ``report.reference``. Raises :class:`ReportError` when there is no finished run to
    tabulate."""
    root = Path(root)
    out = Path(out) if out is not None else root
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
        wanted = default_metrics(finished)
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
    text += mixed_cells_note(mixes, marks)
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
    text += runs_without_results(root, failed, missing)
    text += ["## Provenance", "", *provenance(root, runs), ""]

    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "report.md", "csv": out / "report.csv"}
    with atomic_path(files["markdown"]) as partial:
        partial.write_text("\n".join(text))
    write_csv(table, files["csv"], found)
    claims = [c for c in found if c.paper_difference is not None]
    if claims:
        files["claims"] = out / "report_claims.png"
        plot_claims(table, claims, files["claims"])
    for metric in wanted:
        if any(key[2] == metric for key in table.cells):
            files[metric] = out / f"report_{metric.replace('/', '_')}.png"
            plot_metric(table, metric, files[metric])
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
    parser.add_argument(
        "--out", type=Path, metavar="DIR",
        help="write the report files into DIR (default: the multirun directory), e.g. a second "
        "report of the same runs against another --reference",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        files = report(args.directory, args.metrics, args.reference, args.out)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(files["markdown"].read_text())
    print("Written: " + ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
