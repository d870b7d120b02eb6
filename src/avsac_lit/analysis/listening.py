"""Does the model listen? The table of a run's test metrics under each audio condition (true audio,
another clip's, silence), beside the references the synthetic data records (``demo_results.md``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from avsac_lit.data.conditions import CONDITION_LABELS, metric_prefix
from avsac_lit.data.manifest import reference_scores
from avsac_lit.storage.atomic import atomic_path

log = logging.getLogger(__name__)


def report_listening(
    metrics: dict[str, float], conditions: list[str], root: str | Path, output_dir: Path
) -> None:
    """``demo_results.md`` in the run directory, also printed."""
    table = listening_table(metrics, conditions, reference_scores(root))
    heading = "# Does the model listen? One model, its test split, several audio inputs\n\n"
    path = output_dir / "demo_results.md"
    with atomic_path(path) as partial:
        partial.write_text(heading + table)
    Console().print(Markdown(table))
    log.info("Table saved to %s", path)


def listening_table(
    metrics: dict[str, float],
    conditions: list[str],
    references: dict[str, dict[str, float]] | None = None,
) -> str:
    """A Markdown table: test mIoU and F per audio condition, the gain of the true audio over each
    counterfactual, and the vision-only reference if given; then the audio share if measured."""
    lines = [
        "| test input | mIoU | F | mIoU gain of the true audio |",
        "|---|---|---|---|",
    ]
    matched = metrics.get("test/miou")
    for condition in conditions:
        prefix = metric_prefix(condition)
        miou, fscore = metrics.get(f"{prefix}/miou"), metrics.get(f"{prefix}/f")
        gain = "" if condition == "matched" or None in (matched, miou) else f"{matched - miou:+.3f}"
        lines.append(
            f"| {CONDITION_LABELS[condition]} | {_number(miou)} | {_number(fscore)} | {gain} |"
        )
    vision_only = (references or {}).get("vision_only")
    if vision_only:
        gain = "" if matched is None else f"{matched - vision_only['miou']:+.3f}"
        lines.append(
            f"| reference: vision only (all visible objects) | {vision_only['miou']:.3f} "
            f"| {vision_only['fscore']:.3f} | {gain} |"
        )
    share = metrics.get("test/audio_share")
    if share is not None:
        lines += [
            "",
            f"Audio share of the final feature (true audio): {share:.3f}, from 0 (the audio "
            "changes nothing) to 1 (the frames change nothing); docs/metrics.md.",
        ]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
