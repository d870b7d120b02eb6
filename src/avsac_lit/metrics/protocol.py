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
    """Mean over ``update`` calls of a per-batch score: the protocol's AverageMeter."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("num_batches", default=torch.zeros(()), dist_reduce_fx="sum")

    def batch_score(self, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, logits: Tensor, target: Tensor) -> None:
        """One evaluation batch: logits and target [N, H, W], all frames of the batch's clips."""
        self.score_sum += self.batch_score(logits, target)
        self.num_batches += 1

    def compute(self) -> Tensor:
        if self.num_batches == 0:
            return torch.zeros((), device=self.score_sum.device)
        return self.score_sum / self.num_batches


class ProtocolJaccard(_BatchMean):
    """S4/MS3 Jaccard (M_J) as the protocol computes it: per-batch mean IoU, averaged over batches.

    The unweighted mean over batches over-weights a smaller last batch, as the reference's
    AverageMeter does.
    """

    def batch_score(self, logits: Tensor, target: Tensor) -> Tensor:
        return mask_iou(logits, target)


class ProtocolFScore(_BatchMean):
    """S4/MS3 F-score (M_F) as the protocol computes it: per-batch max-F, averaged over batches.

    It depends on the evaluation batch size, and a batch with no annotated object scores 0.
    """

    def batch_score(self, logits: Tensor, target: Tensor) -> Tensor:
        return f_measure(logits, target)


class PooledFScore(Metric):
    """Batch-size-independent F: F curves averaged over all non-empty frames, then the max.

    For reference next to :class:`ProtocolFScore`; not what papers report.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("curve_sum", default=torch.zeros(NUM_THRESHOLDS), dist_reduce_fx="sum")
        self.add_state("num_frames", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        curve_sum, count = f_measure_curves(logits, target)
        self.curve_sum += curve_sum
        self.num_frames += count

    def compute(self) -> Tensor:
        if self.num_frames == 0:
            return torch.zeros((), device=self.curve_sum.device)
        return (self.curve_sum / self.num_frames).max()


class _AVSSStats(Metric):
    """Per-class IoU and F sums with their frame counts, over a whole split."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, num_classes: int = 71, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        for name in ("iou_sum", "f_sum", "count"):
            self.add_state(name, default=torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Logits [N, C, H, W] (or predicted class ids [N, H, W]) and target class ids [N, H, W]
        of any number of frames."""
        iou_sum, f_sum, count = avss_frame_stats(preds, target, self.num_classes)
        self.iou_sum += iou_sum
        self.f_sum += f_sum
        self.count += count

    def scores(self) -> tuple[Tensor, Tensor]:
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
