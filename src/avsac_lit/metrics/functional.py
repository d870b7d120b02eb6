"""The AVSBench evaluation protocol as pure functions, quirks included (see docs/metrics.md).

S4/MS3 (``avs_scripts/avs_s4/utils/utility.py`` in AVSBench, identical in AVSegFormer):
``mask_iou`` and ``f_measure`` score one evaluation batch of frames; the protocol then averages the
per-batch values. AVSS (``compute_color_metrics.py``): ``avss_frame_stats`` sums per-frame,
per-class IoU and F, and ``avss_miou_fscore`` turns sums over a split into mIoU and F.
"""

from __future__ import annotations

import torch
from torch import Tensor

IOU_EPS = 1e-7
PR_EPS = 1e-20
BETA2 = 0.3
NUM_THRESHOLDS = 255
# float64 machine epsilon, which the AVSS reference adds to the union.
AVSS_EPS = 2.220446049250313e-16


def _thresholds(device: torch.device) -> Tensor:
    """The reference's 255 thresholds [255] float32, on ``device``.

    Built on the CPU, as the reference builds them before moving them to the GPU, so that they
    are the same values whatever the device. In float32 the last one, 1 - 1e-10, is exactly 1.0.
    """
    return torch.linspace(0, 1 - 1e-10, NUM_THRESHOLDS).to(device)


def _sum_in_order(rows: Tensor) -> Tensor:
    """Sum of rows [K, ...] -> [...], one row after the other.

    The reference adds frame after frame; a tensor reduction may associate differently and
    change the last bit of a float32 sum.
    """
    total = torch.zeros(rows.shape[1:], dtype=rows.dtype, device=rows.device)
    for row in rows:
        total += row
    return total


def _check_pair(logits: Tensor, target: Tensor, ndim: int, layout: str) -> None:
    if logits.dim() != ndim:
        raise ValueError(f"Expected logits of shape {layout}, got {list(logits.shape)}.")
    expected = logits.shape if ndim == 3 else (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != tuple(expected):
        raise ValueError(
            f"Target shape {list(target.shape)} does not match logits shape {list(logits.shape)}."
        )


def _check_binary(target: Tensor) -> None:
    # A mask left at 0/255 would give meaningless scores without any error in the reference.
    if target.numel() and ((target != 0) & (target != 1)).any():
        bad = target[(target != 0) & (target != 1)][0]
        raise ValueError(f"Target must hold 0/1 values, found {bad.item()}.")


def mask_iou(logits: Tensor, target: Tensor) -> Tensor:
    """The protocol's Jaccard of one batch of frames (0-dim tensor).

    Args:
        logits: [N, H, W] mask logits; a pixel is foreground where sigmoid(logit) > 0.5.
        target: [N, H, W] ground truth, 0/1.

    Per frame inter/union, averaged over the N frames. A frame whose ground truth is empty scores
    its true-negative fraction (the share of pixels predicted background) instead of 0/0.
    """
    _check_pair(logits, target, 3, "[N, H, W]")
    _check_binary(target)
    num_pixels = logits.shape[-1] * logits.shape[-2]
    # float32 as in the reference; a half-precision sigmoid would round values near 0.5 to 0.5.
    prediction = (torch.sigmoid(logits.float()) > 0.5).int()
    target = target.int()
    empty = target.sum(dim=(1, 2)) == 0
    inter = (prediction * target).sum(dim=(1, 2)).float()
    union = torch.maximum(prediction, target).sum(dim=(1, 2)).float()
    true_negative = ((1 - target) * (1 - prediction)).sum(dim=(1, 2)).float()
    inter = torch.where(empty, true_negative, inter)
    union = torch.where(empty, torch.full_like(union, num_pixels), union)
    return torch.sum(inter / (union + IOU_EPS)) / logits.shape[0]


def f_measure_curves(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over frames with non-empty ground truth of their F-vs-threshold curves.

    Args:
        logits: [N, H, W] mask logits; p = sigmoid(logits).
        target: [N, H, W] ground truth, 0/1. Frames with an empty ground truth are skipped.

    Returns:
        (curve_sum [255] float32, count 0-dim float32): the sum, over the frames kept, of the F
        curves at the thresholds t = ``linspace(0, 1 - 1e-10, 255)`` (float32, so the last one is
        1.0), and the number of frames kept. Per frame and threshold: tp = #(p >= t and gt),
        P = tp / (#(p >= t) + 1e-20), R = tp / (#gt + 1e-20), F = 1.3 P R / (0.3 P + R), NaN
        (P = R = 0) to 0.
    """
    _check_pair(logits, target, 3, "[N, H, W]")
    _check_binary(target)
    thresholds = _thresholds(logits.device)
    # A NaN probability is never >= a threshold in the reference; -1 is below them all too.
    probabilities = torch.nan_to_num(torch.sigmoid(logits.float()).flatten(1), nan=-1.0)
    truth = target.float().flatten(1)
    nonempty = truth.sum(dim=1) != 0
    probabilities, truth = probabilities[nonempty], truth[nonempty]
    frames = probabilities.shape[0]
    if frames == 0:
        return torch.zeros(NUM_THRESHOLDS, device=logits.device), torch.zeros(
            (), device=logits.device
        )
    # Pixel j is foreground at threshold i iff p_j >= t_i, i.e. iff i < (number of t <= p_j).
    # Counting those per threshold gives the reference's sums of 0/1 floats exactly (they are
    # integers below 2**24), without a [255, H*W] comparison per frame.
    levels = torch.searchsorted(thresholds, probabilities.contiguous(), right=True)
    bins = NUM_THRESHOLDS + 1
    flat = (levels + torch.arange(frames, device=logits.device)[:, None] * bins).flatten()
    size = frames * bins

    def at_or_above(weights: Tensor | None) -> Tensor:
        histogram = torch.bincount(flat, weights=weights, minlength=size).view(frames, bins)
        return histogram.flip(1).cumsum(1).flip(1)[:, 1:].float()  # [frames, 255]

    predicted = at_or_above(None)
    true_positive = at_or_above(truth.flatten().double())
    precision = true_positive / (predicted + PR_EPS)
    recall = true_positive / (truth.sum(dim=1, keepdim=True) + PR_EPS)
    f_score = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    curve_sum = _sum_in_order(torch.nan_to_num(f_score, nan=0.0))
    return curve_sum, torch.tensor(float(frames), device=logits.device)


def f_measure(logits: Tensor, target: Tensor) -> Tensor:
    """The protocol's F-score of one batch of frames (0-dim tensor).

    Args:
        logits: [N, H, W] mask logits.
        target: [N, H, W] ground truth, 0/1.

    beta^2 = 0.3. Frames with empty ground truth are skipped; the F curves of the others are
    averaged and the maximum over the 255 thresholds returned. A batch without any non-empty frame
    scores 0, and the protocol still counts it in the mean over batches.
    """
    curve_sum, count = f_measure_curves(logits, target)
    if count == 0:
        return torch.zeros((), device=logits.device)
    return (curve_sum / count).max()


def avss_frame_stats(
    logits: Tensor, target: Tensor, num_classes: int = 71
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class sums over frames of IoU and F, and per-class frame counts.

    Args:
        logits: [N, C, H, W] class logits (the prediction is the argmax of their float32 softmax,
            as in the reference), or the predicted class ids themselves, an integer tensor
            [N, H, W].
        target: [N, H, W] class ids in [0, num_classes).

    Returns:
        (iou_sum [C], f_sum [C], count [C]), float32. Per frame and class c: IoU_c =
        inter / (2.22e-16 + union) and F_c = 1.3 P R / (0.3 P + R) with P = inter / pred_area and
        R = inter / label_area, NaN (0/0) to 0; ``count[c]`` is the number of frames in which
        class c is predicted or present (union > 0).
    """
    if logits.dim() == 4:
        _check_pair(logits, target, 4, "[N, C, H, W]")
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes, expected num_classes={num_classes}."
            )
        # Not argmax(logits): in float32 the softmax can map two nearly equal top logits to the
        # same probability, and argmax then takes the lower class id, as the reference does.
        prediction = torch.softmax(logits.float(), dim=1).argmax(dim=1)
    else:
        _check_pair(logits, target, 3, "[N, C, H, W] logits or [N, H, W] class ids")
        if logits.is_floating_point():
            raise ValueError("Class-id predictions [N, H, W] must be an integer tensor.")
        prediction = logits.long()
    target = target.long()
    for name, ids in (("Target", target), ("Prediction", prediction)):
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise ValueError(f"{name} holds class id {int(bad)}, outside [0, {num_classes}).")
    frames = prediction.shape[0]
    # One bincount for all frames (frame f's class c goes to bin f * C + c) gives the reference's
    # per-frame histc over the shifted ids 1..C: its bins are 70/71 wide but hold one id each.
    offsets = torch.arange(frames, device=prediction.device)[:, None] * num_classes
    predicted, truth = prediction.flatten(1) + offsets, target.flatten(1) + offsets

    def areas(ids: Tensor) -> Tensor:
        counts = torch.bincount(ids, minlength=frames * num_classes)
        return counts.view(frames, num_classes).float()

    area_inter = areas(predicted[predicted == truth])
    area_pred, area_label = areas(predicted.flatten()), areas(truth.flatten())
    area_union = area_pred + area_label - area_inter
    iou = area_inter / (AVSS_EPS + area_union)
    precision = area_inter / area_pred
    recall = area_inter / area_label
    f_score = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    # NaN where a class is absent from the prediction or the label (0/0 in P or R), or where both
    # areas are non-empty but disjoint (P = R = 0). inter > 0 implies both areas > 0: no inf.
    f_score = torch.nan_to_num(f_score, nan=0.0)
    seen = (area_union > 0).float()
    return _sum_in_order(iou), _sum_in_order(f_score), _sum_in_order(seen)


def avss_scores_from_stats(iou_sum: Tensor, f_sum: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """(mIoU, F), 0-dim: per-class sums [C] divided by counts [C], NaN to 0, mean over all C.

    The mean is taken on the CPU, where the reference takes it, so that its float32 rounding is
    the reference's; the results go back to the device of the inputs.
    """
    device = iou_sum.device
    iou_sum, f_sum, count = iou_sum.cpu(), f_sum.cpu(), count.cpu()
    miou = torch.nan_to_num(iou_sum / count, nan=0.0).mean()
    fscore = torch.nan_to_num(f_sum / count, nan=0.0).mean()
    return miou.to(device), fscore.to(device)


def avss_miou_fscore(
    logits: Tensor, target: Tensor, num_classes: int = 71
) -> tuple[Tensor, Tensor]:
    """The protocol's AVSS mIoU and F of the given frames taken as one split.

    Args:
        logits: [N, C, H, W] class logits, or predicted class ids [N, H, W] (integer).
        target: [N, H, W] class ids.

    Returns:
        (miou, fscore), 0-dim float32. Every class counts in the mean, background (0) included; a
        class never predicted nor present scores 0.
    """
    return avss_scores_from_stats(*avss_frame_stats(logits, target, num_classes))
