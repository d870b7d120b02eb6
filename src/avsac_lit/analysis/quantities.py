"""The quantities a report reads from a run's ``metrics.json``: which are the paper's columns and
which the suite's own, their labels, their scale (percent for F and mIoU), and the listening gap,
which is computed from two of them.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def scale(metric: str) -> float:
    """What the report multiplies ``metric`` by: 100 for F and mIoU (percent), else 1."""
    return 100.0 if metric.endswith(PERCENT_SUFFIXES) else 1.0


def label_of(metric: str) -> str:
    """The name a reader sees for ``metric`` (its key where it has none)."""
    return (PAPER_METRICS.get(metric) or EXTRA_METRICS.get(metric) or PAIRED_ONLY.get(metric)
            or metric)  # fmt: skip


def metric_value(metrics: dict[str, float], metric: str) -> float | None:
    """A run's value of ``metric`` on the report's scale (percent for F and mIoU); the listening
    gap is computed from the true and shuffled mIoU."""
    if metric == LISTENING_GAP:
        true, shuffled = metrics.get("test/miou"), metrics.get("test_shuffled/miou")
        return None if true is None or shuffled is None else 100.0 * (true - shuffled)
    value = metrics.get(metric)
    return None if value is None else value * scale(metric)


def default_metrics(runs: Sequence) -> list[str]:
    """The columns of a report not told which: the paper's metrics, and the suite's own
    (:data:`EXTRA_METRICS`) where every one of ``runs`` has them; the tested model's audio share
    rather than the last epoch's where both are there."""
    wanted = list(PAPER_METRICS)
    wanted += [m for m in EXTRA_METRICS if all(m in run.metrics for run in runs)]
    if "test/audio_share" in wanted and "val/audio_share" in wanted:
        wanted.remove("val/audio_share")
    return wanted
