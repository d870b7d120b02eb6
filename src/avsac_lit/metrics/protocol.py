"""torchmetrics versions of the protocol's metrics, for validation and test in Lightning.

Their states are sums, so they reduce across processes by summation. With several processes each
rank sees its own batches; the per-batch metrics then average the batches of all ranks, which
equals a single-process evaluation when the batches are the same (same eval batch size, no padding
of the last batch). For numbers to report, evaluate on one device (see docs/metrics.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from avsac_lit.metrics.functional import (
    NUM_THRESHOLDS,
    avss_frame_stats,
    avss_scores_from_stats,
    f_measure,
    f_measure_curves,
    mask_iou,
)


class _BatchMean(Metric):
    """Mean over ``update`` calls of a per-batch score: the protocol's AverageMeter.

    States: ``score_sum`` (0-dim, sum of the batch scores) and ``num_batches`` (0-dim), both
    summed across processes. ``state_dtype`` is the dtype in which the reference script adds
    up the batch scores.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    state_dtype = torch.float32

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        zero = torch.zeros((), dtype=self.state_dtype)
        self.add_state("score_sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("num_batches", default=zero.clone(), dist_reduce_fx="sum")

    def batch_score(self, logits: Tensor, target: Tensor) -> Tensor:
        """0-dim score of one batch; logits and target [N, H, W]."""
        raise NotImplementedError

    def update(self, logits: Tensor, target: Tensor) -> None:
        """One evaluation batch: logits and target [N, H, W], all frames of the batch's clips."""
        self.score_sum += self.batch_score(logits, target).to(self.state_dtype)
        self.num_batches += 1

    def compute(self) -> Tensor:
        """0-dim: score_sum / num_batches, 0 when no batch was seen."""
        if self.num_batches == 0:
            return torch.zeros((), dtype=self.state_dtype, device=self.score_sum.device)
        return self.score_sum / self.num_batches


class ProtocolJaccard(_BatchMean):
    """S4/MS3 Jaccard (M_J) as the protocol computes it: per-batch mean IoU, averaged over batches.

    Each ``update(logits [N, H, W], target [N, H, W])`` is one evaluation batch. The unweighted
    mean over batches over-weights a smaller last batch, exactly like the reference's
    AverageMeter. The batch values are added in float32, as the reference adds its tensors.
    """

    def batch_score(self, logits: Tensor, target: Tensor) -> Tensor:
        return mask_iou(logits, target)


class ProtocolFScore(_BatchMean):
    """S4/MS3 F-score (M_F) as the protocol computes it: per-batch max-F, averaged over batches.

    Each ``update(logits [N, H, W], target [N, H, W])`` is one evaluation batch. The result
    depends on the evaluation batch size (the maximum is taken per batch), a batch whose frames
    all have an empty ground truth scores 0 and still counts, and a smaller last batch weighs as
    much as a full one. The batch values are added in float64, as the reference adds Python
    floats.
    """

    state_dtype = torch.float64

    def batch_score(self, logits: Tensor, target: Tensor) -> Tensor:
        return f_measure(logits, target)


class PooledFScore(Metric):
    """Batch-size-independent F: F curves averaged over all non-empty frames, then the max.

    States: ``curve_sum`` [255] (sum of the F curves of the frames with non-empty ground truth)
    and ``num_frames`` (0-dim), both summed across processes. Log it next to
    :class:`ProtocolFScore` as a sanity check; it is not what papers report.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("curve_sum", default=torch.zeros(NUM_THRESHOLDS), dist_reduce_fx="sum")
        self.add_state("num_frames", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Any number of frames: logits and target [N, H, W]; how they are batched is irrelevant."""
        curve_sum, count = f_measure_curves(logits, target)
        self.curve_sum += curve_sum
        self.num_frames += count

    def compute(self) -> Tensor:
        """0-dim: max over thresholds of the mean curve, 0 when no frame had an object."""
        if self.num_frames == 0:
            return torch.zeros((), device=self.curve_sum.device)
        return (self.curve_sum / self.num_frames).max()


class _AVSSStats(Metric):
    """Per-class IoU and F sums with their frame counts, over a whole split.

    States ``iou_sum``, ``f_sum`` and ``count``, each [num_classes], summed across processes; see
    :func:`avss_frame_stats`. Every frame passed to ``update`` is scored, padding frames included
    if the caller passes them (the reference does).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, num_classes: int = 71, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        for name in ("iou_sum", "f_sum", "count"):
            self.add_state(name, default=torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Logits [N, C, H, W] (or predicted class ids [N, H, W]) and target class ids [N, H, W]
        of any number of frames."""
        iou_sum, f_sum, count = avss_frame_stats(logits, target, self.num_classes)
        self.iou_sum += iou_sum
        self.f_sum += f_sum
        self.count += count

    def scores(self) -> tuple[Tensor, Tensor]:
        """(mIoU, F), 0-dim, from the accumulated sums."""
        return avss_scores_from_stats(self.iou_sum, self.f_sum, self.count)


class AVSSMeanIoU(_AVSSStats):
    """AVSS mIoU: per-class IoU summed over frames / frames where the class occurs, mean over all
    classes (background included; absent classes count 0)."""

    def compute(self) -> Tensor:
        return self.scores()[0]


class AVSSFScore(_AVSSStats):
    """AVSS F (beta^2 = 0.3), aggregated like :class:`AVSSMeanIoU`."""

    def compute(self) -> Tensor:
        return self.scores()[1]
