"""The protocol's metrics against hand-computed cases, one per quirk, and slow reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from avsac_lit.metrics import (
    AVSSFScore,
    AVSSMeanIoU,
    PooledFScore,
    ProtocolFScore,
    ProtocolJaccard,
    avss_frame_stats,
    avss_miou_fscore,
    f_measure,
    f_measure_curves,
    mask_iou,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# Frame A: GT covers the top row; the prediction covers the left column.
TARGET_A = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
LOGITS_A = torch.tensor([[5.0, -5.0], [5.0, -5.0]])
# Frame B: empty GT; one pixel predicted.
TARGET_B = torch.zeros(2, 2)
LOGITS_B = torch.tensor([[5.0, -5.0], [-5.0, -5.0]])

# Frame F: GT on the top row; probabilities 0.9 (GT), 0.2 (GT), 0.6, 0.1. By threshold range:
#   th <= 0.1       : 4 predicted, tp 2 -> P 1/2, R 1   -> F = 1.3*.5/(.15+1)  = 0.565217
#   0.1 < th <= 0.2 : 3 predicted, tp 2 -> P 2/3, R 1   -> F = 1.3*(2/3)/1.2  = 0.722222
#   0.2 < th <= 0.6 : 2 predicted, tp 1 -> P 1/2, R 1/2 -> F = 1.3*.25/.65    = 0.5
#   0.6 < th <= 0.9 : 1 predicted, tp 1 -> P 1,   R 1/2 -> F = 1.3*.5/.8      = 0.8125
#   th > 0.9        : none, 0/0 -> NaN -> 0
TARGET_F = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
LOGITS_F = torch.tensor([[logit(0.9), logit(0.2)], [logit(0.6), logit(0.1)]])
# Frame G: its one GT pixel has probability 0.15, the rest 0.05, so F = 1 only for
# 0.05 < th <= 0.15, and 0 above 0.15.
TARGET_G = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
LOGITS_G = torch.tensor([[logit(0.05), logit(0.05)], [logit(0.05), logit(0.15)]])


def test_mask_iou_ordinary_and_empty_frames():
    assert mask_iou(LOGITS_A[None], TARGET_A[None]).item() == pytest.approx(1 / 3)
    # Empty GT: the true-negative fraction, 3 of 4 pixels predicted background.
    assert mask_iou(LOGITS_B[None], TARGET_B[None]).item() == pytest.approx(0.75)
    both = mask_iou(torch.stack([LOGITS_A, LOGITS_B]), torch.stack([TARGET_A, TARGET_B]))
    assert both.item() == pytest.approx((1 / 3 + 0.75) / 2)


def test_mask_iou_threshold_and_eps():
    # sigmoid(0) = 0.5 is not > 0.5: background. A perfect frame scores 1 / (1 + 1e-7 / union).
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    logits = torch.tensor([[[1.0, 0.0], [-1.0, -1.0]]])
    expected = torch.tensor(1.0) / (torch.tensor(1.0) + 1e-7)  # in float32, as computed
    assert mask_iou(logits, target).item() == expected.item()
    assert mask_iou(logits, target).item() < 1.0


def test_f_measure_hand_computed_curve():
    curve, count = f_measure_curves(LOGITS_F[None], TARGET_F[None])
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    expected = torch.where(
        thresholds <= 0.1,
        0.565217,
        torch.where(
            thresholds <= 0.2,
            0.722222,
            torch.where(thresholds <= 0.6, 0.5, torch.where(thresholds <= 0.9, 0.8125, 0.0)),
        ),
    )
    assert count.item() == 1
    assert torch.allclose(curve, expected, atol=1e-5)
    assert f_measure(LOGITS_F[None], TARGET_F[None]).item() == pytest.approx(0.8125)


def test_f_measure_skips_empty_frames_and_averages_curves_not_maxima():
    with_empty = f_measure(torch.stack([LOGITS_F, LOGITS_B]), torch.stack([TARGET_F, TARGET_B]))
    assert with_empty.item() == pytest.approx(0.8125)
    # Curves are averaged before the max: at 0.1 < th <= 0.15 (0.722222 + 1) / 2 = 0.861111,
    # which is not the mean of the two frames' maxima (0.8125 + 1) / 2 = 0.90625.
    two = f_measure(torch.stack([LOGITS_F, LOGITS_G]), torch.stack([TARGET_F, TARGET_G]))
    assert two.item() == pytest.approx((0.722222 + 1) / 2, abs=1e-5)


def test_f_measure_of_an_all_empty_batch_is_zero():
    logits = torch.stack([LOGITS_B, -LOGITS_B])
    assert f_measure(logits, torch.zeros(2, 2, 2)).item() == 0.0


def test_f_measure_of_a_perfect_prediction_is_one():
    # At every threshold up to sigmoid(10) = 0.99995 the prediction is the GT: P = R = 1 and
    # F = 1.3 / (0.3 + 1) = 1 (exactly, in float32). Above it (the last threshold, 1.0) nothing
    # is predicted and F = 0, which the max ignores.
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]])
    assert f_measure(target * 20 - 10, target).item() == 1.0


def test_f_measure_turns_nan_into_zero():
    # GT on the top-left pixel only (p = 0.1); a false positive at p = 0.9; two pixels at 0.05.
    #   th <= 0.05       : 4 predicted, tp 1 -> P 1/4, R 1 -> F = 1.3*.25/(.075+1) = 0.302326
    #   0.05 < th <= 0.1 : 2 predicted, tp 1 -> P 1/2, R 1 -> F = 1.3*.5/(.15+1)   = 0.565217
    #   0.1 < th <= 0.9  : 1 predicted, tp 0 -> P 0, R 0   -> F = 0/0 = NaN -> 0
    #   th > 0.9         : 0 predicted -> P = 0/(0 + 1e-20) = 0, R 0 -> NaN -> 0
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    logits = torch.tensor([[[logit(0.1), logit(0.9)], [logit(0.05), logit(0.05)]]])
    curve, count = f_measure_curves(logits, target)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    assert count.item() == 1
    assert not curve.isnan().any()
    assert torch.allclose(curve[thresholds < 0.049], torch.tensor(0.302326), atol=1e-6)
    assert torch.allclose(
        curve[(thresholds > 0.051) & (thresholds < 0.099)], torch.tensor(0.565217)
    )
    assert (curve[thresholds > 0.101] == 0).all()
    assert f_measure(logits, target).item() == pytest.approx(0.565217, abs=1e-6)


def test_last_threshold_is_one_in_float32():
    target = torch.ones(1, 1, 1)
    saturated, _ = f_measure_curves(torch.full((1, 1, 1), 30.0), target)
    confident, _ = f_measure_curves(torch.full((1, 1, 1), 8.0), target)
    moderate, _ = f_measure_curves(torch.full((1, 1, 1), 5.0), target)
    assert torch.linspace(0, 1 - 1e-10, 255)[-1].item() == 1.0
    assert saturated[-1].item() == pytest.approx(1.0)  # sigmoid(30) rounds to exactly 1.0
    assert confident[-1].item() == 0.0  # sigmoid(8) = 0.99966 < 1.0: nothing predicted, NaN -> 0
    assert confident[-2].item() == pytest.approx(1.0)  # 253/254 = 0.99606 <= 0.99966
    # sigmoid(5) = 0.99331 also falls below 253/254 = 0.99606, but not below 252/254 = 0.99213.
    assert moderate[-2:].tolist() == [0.0, 0.0]
    assert moderate[-3].item() == pytest.approx(1.0)


def reference_f_measure(logits: torch.Tensor, target: torch.Tensor) -> float:
    """The reference algorithm as a plain loop over frames and thresholds."""
    probabilities = torch.sigmoid(logits)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    total, frames = torch.zeros(255), 0
    for p, gt in zip(probabilities, target, strict=True):
        if torch.mean(gt) == 0.0:
            continue
        precision, recall = torch.zeros(255), torch.zeros(255)
        for i in range(255):
            binary = (p >= thresholds[i]).float()
            tp = (binary * gt).sum()
            precision[i], recall[i] = tp / (binary.sum() + 1e-20), tp / (gt.sum() + 1e-20)
        f = (1 + 0.3) * precision * recall / (0.3 * precision + recall)
        f[f != f] = 0
        total += f
        frames += 1
    return 0.0 if frames == 0 else (total / frames).max().item()


@pytest.mark.parametrize(("frames", "size", "scale"), [(4, 12, 3.0), (10, 16, 1.0), (10, 16, 12.0)])
def test_f_measure_equals_the_reference_loop_on_random_batches(frames, size, scale):
    generator = torch.Generator().manual_seed(frames * size + int(scale))
    for _ in range(3):
        logits = torch.randn(frames, size, size, generator=generator) * scale
        target = (torch.rand(frames, size, size, generator=generator) > 0.6).float()
        target[1] = 0  # one empty frame
        # Bit for bit: the counts are exact integers and the float32 arithmetic is the same.
        assert f_measure(logits, target).item() == reference_f_measure(logits, target)


def test_nan_logits_are_never_foreground():
    # NaN > 0.5 and NaN >= t are false in the reference: a NaN pixel is predicted background.
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    logits = torch.tensor([[[float("nan"), 5.0], [-5.0, float("nan")]]])
    assert mask_iou(logits, target).item() == pytest.approx(0.5)
    assert f_measure(logits, target).item() == reference_f_measure(logits, target)


def one_hot_logits(prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(prediction, num_classes).permute(0, 3, 1, 2).float() * 5


# Two 2x2 frames, 3 classes (worked out in test_avss_hand_computed).
AVSS_TARGET = torch.tensor([[[0, 1], [1, 2]], [[0, 0], [0, 0]]])
AVSS_PREDICTION = torch.tensor([[[0, 1], [2, 2]], [[0, 0], [0, 1]]])


def test_avss_hand_computed():
    # Frame 1: class 0 IoU 1 F 1; class 1 IoU 1/2, P 1 R 1/2 -> F 0.8125;
    #          class 2 IoU 1/2, P 1/2 R 1 -> F 0.565217.
    # Frame 2: class 0 IoU 3/4, P 1 R 3/4 -> F 0.928571; class 1 predicted only: IoU 0, F NaN -> 0;
    #          class 2 absent: not counted.
    iou, f, count = avss_frame_stats(one_hot_logits(AVSS_PREDICTION, 3), AVSS_TARGET, num_classes=3)
    assert torch.allclose(iou, torch.tensor([1.75, 0.5, 0.5]))
    assert torch.allclose(f, torch.tensor([1.928571, 0.8125, 0.565217]), atol=1e-6)
    assert count.tolist() == [2.0, 2.0, 1.0]
    miou, fscore = avss_miou_fscore(one_hot_logits(AVSS_PREDICTION, 3), AVSS_TARGET, num_classes=3)
    assert miou.item() == pytest.approx((0.875 + 0.25 + 0.5) / 3)
    assert fscore.item() == pytest.approx((0.9642857 + 0.40625 + 0.5652174) / 3, abs=1e-6)


def test_avss_absent_class_counts_zero_in_the_mean():
    miou, fscore = avss_miou_fscore(one_hot_logits(AVSS_PREDICTION, 4), AVSS_TARGET, num_classes=4)
    assert miou.item() == pytest.approx((0.875 + 0.25 + 0.5 + 0) / 4)
    assert fscore.item() == pytest.approx((0.9642857 + 0.40625 + 0.5652174 + 0) / 4, abs=1e-6)


def test_avss_disjoint_prediction_gives_nan_then_zero():
    # One 2x2 frame, 3 classes. Target [[1, 0], [0, 0]], prediction [[0, 1], [0, 0]].
    #   class 0: inter 2, pred 3, label 3, union 4 -> IoU 1/2; P = R = 2/3 -> F = 2/3.
    #   class 1: inter 0, pred 1, label 1, union 2 -> IoU 0; P = R = 0 -> F = 0/0 = NaN -> 0.
    #   class 2: never seen: union 0 -> IoU 0/(2.2e-16) = 0, not counted; F = NaN -> 0.
    # mIoU = (1/2 + 0 + 0) / 3 = 1/6 and F = (2/3 + 0 + 0) / 3 = 2/9: the absent class counts 0.
    target = torch.tensor([[[1, 0], [0, 0]]])
    prediction = torch.tensor([[[0, 1], [0, 0]]])
    iou, f, count = avss_frame_stats(one_hot_logits(prediction, 3), target, num_classes=3)
    assert iou.tolist() == [0.5, 0.0, 0.0]
    assert f.tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    assert count.tolist() == [1.0, 1.0, 0.0]
    miou, fscore = avss_miou_fscore(one_hot_logits(prediction, 3), target, num_classes=3)
    assert miou.item() == pytest.approx(1 / 6)
    assert fscore.item() == pytest.approx(2 / 9)


def test_avss_takes_the_argmax_of_the_softmax():
    # Class 1's logit is one float32 step above class 0's; their softmax values are equal, so the
    # reference's argmax picks class 0. One 1x1 frame of class 0: IoU 1 for class 0, class 1
    # unseen -> mIoU (1 + 0) / 2 = 0.5. The argmax of the raw logits would give 0.
    low = torch.tensor(0.3)
    logits = torch.stack([low, torch.nextafter(low, torch.tensor(1.0))]).view(1, 2, 1, 1)
    assert logits.argmax(dim=1).item() == 1
    miou, _ = avss_miou_fscore(logits, torch.zeros(1, 1, 1, dtype=torch.long), num_classes=2)
    assert miou.item() == 0.5


def histc_reference_avss(batches, num_classes):
    """The reference's formulation (AVSBench anchors 2.5), in float32: softmax, argmax, ids shifted
    to 1..C, one histc per frame, per-frame sums added frame by frame, per-batch sums added batch
    by batch, then NaN -> 0 and the mean over all classes."""
    totals = [torch.zeros(num_classes) for _ in range(3)]
    for logits, target in batches:
        prediction = (torch.softmax(logits, dim=1).argmax(dim=1) + 1).float()
        label = target.float() + 1
        intersection = prediction * (prediction == label).float()
        batch = [torch.zeros(num_classes) for _ in range(3)]
        for i in range(label.shape[0]):
            area_inter, area_pred, area_lab = (
                torch.histc(x[i], bins=num_classes, min=1, max=num_classes)
                for x in (intersection, prediction, label)
            )
            area_union = area_pred + area_lab - area_inter
            precision, recall = area_inter / area_pred, area_inter / area_lab
            fscore = 1.3 * precision * recall / (0.3 * precision + recall)
            fscore[torch.isnan(fscore)] = 0
            batch[0] += area_inter / (2.220446049250313e-16 + area_union)
            batch[1] += fscore
            batch[2][area_union > 0] += 1
        for total, part in zip(totals, batch, strict=True):
            total += part
    iou_sum, f_sum, count = totals
    miou, fscore = iou_sum / count, f_sum / count
    miou[torch.isnan(miou)] = 0
    fscore[torch.isnan(fscore)] = 0
    return totals, miou.mean(), fscore.mean()


def test_avss_equals_the_histc_formulation_bit_for_bit():
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(3):
        logits = torch.randn(10, 71, 8, 8, generator=generator)
        target = torch.randint(0, 71, (10, 8, 8), generator=generator)
        target[3:] = torch.where(target[3:] < 40, 0, target[3:])  # plenty of background
        target[9] = 0  # a padding frame: background ground truth, zero logits
        logits[9] = 0
        batches.append((logits, target))
    totals, miou, fscore = histc_reference_avss(batches, 71)
    metrics = AVSSMeanIoU(), AVSSFScore()
    for logits, target in batches:
        for metric in metrics:
            metric.update(logits, target)
    states = (metrics[0].iou_sum, metrics[0].f_sum, metrics[0].count)
    for got, expected in zip(states, totals, strict=True):
        assert torch.equal(got, expected)
    assert torch.equal(metrics[0].compute(), miou)
    assert torch.equal(metrics[1].compute(), fscore)
    # One batch taken as a split: the functional form agrees too.
    _, miou_one, fscore_one = histc_reference_avss(batches[:1], 71)
    assert torch.equal(
        torch.stack(avss_miou_fscore(*batches[0])), torch.stack([miou_one, fscore_one])
    )


def reference_avss_stats(prediction, target, num_classes):
    iou, f, count = (torch.zeros(num_classes) for _ in range(3))
    for p, t in zip(prediction, target, strict=True):
        for c in range(num_classes):
            inter = float(((p == c) & (t == c)).sum())
            area_p, area_t = float((p == c).sum()), float((t == c).sum())
            union = area_p + area_t - inter
            iou[c] += inter / (2.220446049250313e-16 + union)
            count[c] += union > 0
            if area_p > 0 and area_t > 0 and inter > 0:
                precision, recall = inter / area_p, inter / area_t
                f[c] += 1.3 * precision * recall / (0.3 * precision + recall)
    return iou, f, count


def test_avss_equals_a_slow_per_class_loop():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 6, 6, generator=generator)
    target = torch.randint(0, 4, (3, 6, 6), generator=generator)  # class 4 never in the target
    ours = avss_frame_stats(logits, target, num_classes=5)
    for got, expected in zip(ours, reference_avss_stats(logits.argmax(1), target, 5), strict=True):
        assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mask_iou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5)), r"\[2, 4, 5\].*\[2, 4, 4\]"),
        (lambda: f_measure(torch.zeros(4, 4), torch.zeros(4, 4)), r"shape \[N, H, W\]"),
        (
            lambda: avss_miou_fscore(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3), 3),
            "class id 3",
        ),
        (lambda: avss_miou_fscore(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2).long()), "71"),
        (
            lambda: f_measure(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4)),
            r"\[3, 4, 4\].*\[2, 4, 4\]",
        ),
        (
            lambda: avss_frame_stats(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3).long(), 3),
            r"\[1, 2, 3\].*\[1, 3, 2, 2\]",
        ),
        (
            lambda: avss_frame_stats(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), -1), 3),
            "class id -1",
        ),
        (lambda: mask_iou(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 255.0)), "0/1 values"),
        (lambda: f_measure(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 255.0)), "0/1 values"),
    ],
)
def test_bad_inputs_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_protocol_f_depends_on_batching_and_pooled_does_not():
    frames = (LOGITS_F, TARGET_F), (LOGITS_B, TARGET_B)
    together, apart = ProtocolFScore(), ProtocolFScore()
    pooled_together, pooled_apart = PooledFScore(), PooledFScore()
    logits, target = torch.stack([f[0] for f in frames]), torch.stack([f[1] for f in frames])
    together.update(logits, target)
    pooled_together.update(logits, target)
    for frame_logits, frame_target in frames:
        apart.update(frame_logits[None], frame_target[None])
        pooled_apart.update(frame_logits[None], frame_target[None])
    assert together.compute().item() == pytest.approx(0.8125)
    # Apart, the empty-GT frame is a batch of its own, scores 0 and still counts.
    assert apart.compute().item() == pytest.approx(0.8125 / 2)
    assert pooled_together.compute().item() == pytest.approx(0.8125)
    assert pooled_apart.compute().item() == pytest.approx(0.8125)


def test_protocol_means_add_batches_like_the_reference_script():
    # The reference adds the batch IoUs as float32 tensors and the batch F values as Python
    # floats (.item()), then divides by the number of batches.
    generator = torch.Generator().manual_seed(4)
    jaccard, fscore = ProtocolJaccard(), ProtocolFScore()
    iou_total, f_total, batches = 0.0, 0.0, 7
    for index in range(batches):
        frames = 10 if index < batches - 1 else 5  # a smaller last batch
        logits = torch.randn(frames, 16, 16, generator=generator) * 4
        target = (torch.rand(frames, 16, 16, generator=generator) > 0.5).float()
        target[:2] = 0
        jaccard.update(logits, target)
        fscore.update(logits, target)
        iou_total = iou_total + mask_iou(logits, target)
        f_total += f_measure(logits, target).item()
    assert torch.equal(jaccard.compute(), iou_total / batches)
    assert fscore.compute().item() == f_total / batches


def test_protocol_jaccard_is_a_mean_of_batch_means():
    metric = ProtocolJaccard()
    metric.update(torch.stack([LOGITS_A, LOGITS_B]), torch.stack([TARGET_A, TARGET_B]))
    metric.update(LOGITS_A[None], TARGET_A[None])
    # (0.541667 + 0.333333) / 2, not the frame mean (1/3 + 0.75 + 1/3) / 3.
    assert metric.compute().item() == pytest.approx(((1 / 3 + 0.75) / 2 + 1 / 3) / 2)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert ProtocolJaccard().compute().item() == 0.0


@pytest.mark.parametrize(
    "make",
    [
        ProtocolJaccard,
        ProtocolFScore,
        PooledFScore,
        lambda: AVSSMeanIoU(num_classes=5),
        lambda: AVSSFScore(num_classes=5),
    ],
)
def test_states_reduce_across_processes(make):
    generator = torch.Generator().manual_seed(2)
    is_avss = isinstance(make(), AVSSMeanIoU | AVSSFScore)
    batches = []
    for _ in range(4):
        if is_avss:
            batches.append(
                (torch.randn(3, 5, 8, 8, generator=generator), torch.randint(0, 5, (3, 8, 8)))
            )
        else:
            target = (torch.rand(3, 8, 8, generator=generator) > 0.7).float()
            batches.append((torch.randn(3, 8, 8, generator=generator), target))
    single, rank0, rank1 = make(), make(), make()
    for index, batch in enumerate(batches):
        single.update(*batch)
        (rank0 if index % 2 == 0 else rank1).update(*batch)
    # Merging with the states' own reduction (sum) is what a distributed sync does.
    rank0.merge_state(rank1)
    assert torch.allclose(rank0.compute(), single.compute())
    # By hand, as an all-reduce would: every state is a sum.
    rank0_again, rank1_again = make(), make()
    for index, batch in enumerate(batches):
        (rank0_again if index % 2 == 0 else rank1_again).update(*batch)
    for name in single.metric_state:
        total = getattr(rank0_again, name) + getattr(rank1_again, name)
        assert torch.allclose(total, getattr(single, name))
        setattr(rank0_again, name, total)
    assert torch.allclose(rank0_again.compute(), single.compute())


def test_avss_metric_classes_match_the_function():
    logits, target = one_hot_logits(AVSS_PREDICTION, 4), AVSS_TARGET
    miou, fscore = AVSSMeanIoU(num_classes=4), AVSSFScore(num_classes=4)
    for frame in range(2):  # frame by frame, as one split
        miou.update(logits[frame : frame + 1], target[frame : frame + 1])
        fscore.update(logits[frame : frame + 1], target[frame : frame + 1])
    expected = avss_miou_fscore(logits, target, num_classes=4)
    assert miou.compute().item() == pytest.approx(expected[0].item())
    assert fscore.compute().item() == pytest.approx(expected[1].item())


def test_avss_accepts_class_ids_as_predictions():
    from_logits = avss_miou_fscore(one_hot_logits(AVSS_PREDICTION, 3), AVSS_TARGET, num_classes=3)
    from_ids = avss_miou_fscore(AVSS_PREDICTION, AVSS_TARGET, num_classes=3)
    assert torch.equal(torch.stack(from_logits), torch.stack(from_ids))
    with pytest.raises(ValueError, match="integer tensor"):
        avss_miou_fscore(AVSS_PREDICTION.float(), AVSS_TARGET, num_classes=3)
    with pytest.raises(ValueError, match="Prediction holds class id 3"):
        avss_miou_fscore(AVSS_PREDICTION + 1, AVSS_TARGET, num_classes=3)


def test_the_module_reports_each_score_from_its_own_states():
    """The module's collection must not merge the Jaccard and F means when a first batch scores
    the same on both (1 and 1 for a perfect prediction): torchmetrics would then report one
    score under both names for the rest of the run."""
    from avsac_lit.system.stage_metrics import protocol_metrics

    generator = torch.Generator().manual_seed(4)
    target = (torch.rand(2, 8, 8, generator=generator) > 0.5).float()
    batches = [(target * 20 - 10, target)]  # perfect
    batches += [
        (torch.randn(2, 8, 8, generator=generator),
         (torch.rand(2, 8, 8, generator=generator) > 0.5).float())
        for _ in range(2)
    ]  # fmt: skip
    collection = protocol_metrics(1).clone(prefix="val/")
    jaccard, fscore = ProtocolJaccard(), ProtocolFScore()
    for batch in batches:
        collection.update(*batch)
        jaccard.update(*batch)
        fscore.update(*batch)
    scores = collection.compute()
    assert scores["val/miou"].item() == pytest.approx(jaccard.compute().item(), abs=1e-7)
    assert scores["val/f"].item() == pytest.approx(fscore.compute().item(), abs=1e-7)
    assert scores["val/miou"].item() != pytest.approx(scores["val/f"].item(), abs=1e-3)
