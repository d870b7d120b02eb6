"""Does the model listen? The test scores under counterfactual audio, side by side.

A run with ``test_audio=[matched,shuffled,silent]`` tests the final model once per condition
(:mod:`avsac_lit.data.conditions`); this module lays the results out as a table, with the synthetic
generator's vision-only reference (every visible object, sounding or not) when the data has one.
"""

from __future__ import annotations

import json
from pathlib import Path

CONDITION_LABELS = {
    "matched": "true audio",
    "shuffled": "audio of another clip",
    "silent": "silence",
}


def metric_prefix(condition: str) -> str:
    """Where a condition's test metrics are logged: ``test`` for the protocol, else
    ``test_<condition>``."""
    return "test" if condition == "matched" else f"test_{condition}"


def reference_scores(root: str | Path, split: str = "test") -> dict[str, dict[str, float]]:
    """The synthetic generator's reference scores of a split (``{}`` for data without them)."""
    manifest = Path(root) / "manifest.json"
    if not manifest.is_file():
        return {}
    splits = json.loads(manifest.read_text()).get("splits", {})
    return splits.get(split, {}).get("reference_scores", {})


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
