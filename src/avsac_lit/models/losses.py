"""Losses: segmentation (Dice, focal + Dice, AVSS cross-entropy + Dice) and audio-visual synchrony
(AVSAC's AVFS KL, Eq. 4, and the L2 variants of Table 4).

All per-frame terms are averaged over the frames that carry them: ground truth (``mask_valid``) for
segmentation, real frames (``frame_valid``) for synchrony.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

SEG_LOSSES = ("dice", "focal_dice")
AVSS_SEG_LOSSES = ("ce", "ce_dice")
SYNC_LOSSES = ("none", "l2", "framewise_l2", "kl")
# How AVFS reduces its terms p log(p / q) over [frames, channels, positions] (the paper gives no
# reduction): the KL of each distribution (a position's channels, by default) averaged over the
# distributions and frames; summed over the distributions, averaged over frames (KLDivLoss's
# "batchmean" over [frames, positions x channels]); every term averaged (KLDivLoss's "mean").
SyncReduction = Literal["mean_distributions", "sum_distributions", "mean_elements"]
SYNC_REDUCTIONS = ("mean_distributions", "sum_distributions", "mean_elements")


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """V-Net Dice with squared denominators, as AVSegFormer: mean over frames of
    ``1 - 2 sum(p g) / ((sum p^2 + 1e-3) + (sum g^2 + 1e-3))``, p = sigmoid(logits). [N, H, W]."""
    probabilities = logits.sigmoid().flatten(1)
    target = target.float().flatten(1)
    overlap = (probabilities * target).sum(1)
    denominator = (probabilities.square().sum(1) + 1e-3) + (target.square().sum(1) + 1e-3)
    return (1 - 2 * overlap / denominator).mean()


def avfs_loss(
    audio_queries: Tensor,
    feature: Tensor,
    softmax_over: Literal["channels", "positions"] = "channels",
    reduction: SyncReduction = "mean_distributions",
) -> Tensor:
    """AVFS (Eq. 4): KL(P(F_a) || P(F_AGV)) per frame, averaged over frames.

    Args:
        audio_queries: F_a [N, Q, C], pooled over the queries and broadcast over positions.
        feature: F_AGV [N, C, H, W].
        softmax_over: ``channels`` makes each position a distribution over the C channels (the
            default reading). ``positions`` makes each channel a distribution over the H W
            positions. Since the broadcast F_a is constant over positions, that reading pulls
            F_AGV towards a spatially uniform distribution per channel.
        reduction: ``mean_distributions``, the KL of each distribution (summed over its axis)
            averaged over the distributions (positions, or channels with ``softmax_over=
            positions``) and the frames; ``sum_distributions``, summed over the distributions,
            averaged over the frames (the distributions' count times the first); ``mean_elements``,
            every term ``p log(p / q)`` averaged (the first over the distribution's size).

    Returns:
        A scalar: the mean over the N frames.
    """
    if reduction not in SYNC_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {', '.join(SYNC_REDUCTIONS)}.")
    audio = audio_queries.mean(dim=1)  # [N, C]
    flat = feature.flatten(2)  # [N, C, L]
    if softmax_over == "channels":
        log_p_audio = audio.log_softmax(dim=1)[:, :, None]  # [N, C, 1], the same at every position
        log_p_visual = flat.log_softmax(dim=1)
        kl = (log_p_audio.exp() * (log_p_audio - log_p_visual)).sum(dim=1)  # [N, L]
    elif softmax_over == "positions":
        positions = flat.shape[-1]
        log_p_audio = torch.full_like(flat, -torch.log(torch.tensor(float(positions))).item())
        log_p_visual = flat.log_softmax(dim=2)
        kl = (log_p_audio.exp() * (log_p_audio - log_p_visual)).sum(dim=2)  # [N, C]
    else:
        raise ValueError(f"softmax_over={softmax_over!r}; expected 'channels' or 'positions'.")
    if reduction == "sum_distributions":
        return kl.sum(dim=1).mean()
    if reduction == "mean_elements":
        return kl.mean() / (flat.shape[1] if softmax_over == "channels" else flat.shape[2])
    return kl.mean()


class AVSCriterion(nn.Module):
    """Segmentation loss plus a weighted synchrony loss, per the paper's Eq. 5.

    Args:
        num_classes: 1 (S4/MS3, binary masks) or the number of AVSS classes.
        seg: ``dice`` or ``focal_dice``: the loss of the binary tasks (S4, MS3).
        avss_seg: the loss of the class masks (AVSS): ``ce``, cross-entropy as AVSegFormer, or
            ``ce_dice``, plus Dice on the foreground probability (AVSAC's reading, docs/model.md).
        sync: ``none``, ``l2`` (clip-level: the frame-averaged F_a against the frame- and
            position-averaged F_AGV), ``framewise_l2`` (the same per frame) or ``kl`` (AVFS).
        sync_weight: weight of the synchrony term (1 in the paper).
        sync_softmax: AVFS distribution axis, see :func:`avfs_loss`.
        sync_reduction: how AVFS reduces its terms (:data:`SYNC_REDUCTIONS`, see
            :func:`avfs_loss`); the L2 losses do not read it.
        sync_detach_audio: stop the synchrony loss's gradient into F_a, so F_a is the reference
            that F_AGV approximates (the paper's "approximate an audio distribution with a visual
            one"; docs/design_log.md). False lets the loss move F_a towards F_AGV as well.
        feature_key: the model output the synchrony reads (``agv`` for AVSAC, ``mask_feature``
            for AVSegFormer).
        mix_weight: AVSegFormer's auxiliary Dice on the channel-mean of the mask feature (0.1
            there; 0 for AVSAC).
        focal_alpha, focal_gamma: the binary focal loss's parameters (RetinaNet's 0.25 and 2).
    """

    def __init__(
        self,
        *,
        num_classes: int = 1,
        seg: str = "focal_dice",
        avss_seg: str = "ce_dice",
        sync: str = "kl",
        sync_weight: float = 1.0,
        sync_softmax: Literal["channels", "positions"] = "channels",
        sync_reduction: SyncReduction = "mean_distributions",
        sync_detach_audio: bool = True,
        feature_key: str = "agv",
        mix_weight: float = 0.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if seg not in SEG_LOSSES:
            raise ValueError(f"model.loss.seg={seg!r}; expected one of {', '.join(SEG_LOSSES)}.")
        if avss_seg not in AVSS_SEG_LOSSES:
            raise ValueError(
                f"model.loss.avss_seg={avss_seg!r}; expected one of {', '.join(AVSS_SEG_LOSSES)}."
            )
        if sync not in SYNC_LOSSES:
            raise ValueError(f"model.loss.sync={sync!r}; expected one of {', '.join(SYNC_LOSSES)}.")
        if sync_reduction not in SYNC_REDUCTIONS:
            raise ValueError(f"model.loss.sync_reduction={sync_reduction!r}; expected one of "
                             f"{', '.join(SYNC_REDUCTIONS)}.")  # fmt: skip
        self.num_classes, self.seg, self.avss_seg, self.sync = num_classes, seg, avss_seg, sync
        self.sync_weight, self.sync_softmax = sync_weight, sync_softmax
        self.sync_reduction = sync_reduction
        self.sync_detach_audio = sync_detach_audio
        self.feature_key, self.mix_weight = feature_key, mix_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @property
    def reads_unlabelled_frames(self) -> bool:
        """The synchrony loss reads every real frame; the other terms the labelled ones only."""
        return self.sync != "none"

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Model outputs ([B, T, ...]) and a data batch -> ``loss`` and its parts (scalars)."""
        labelled = batch["mask_valid"]  # [B, T]
        logits = outputs["logits"][labelled]  # [n, K, H, W]
        target = batch["masks"][labelled]  # [n, H, W]
        losses = {"seg": self.segmentation(logits, target)}
        if self.mix_weight:
            feature = outputs[self.feature_key][labelled].mean(dim=1, keepdim=True)
            feature = F.interpolate(
                feature, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
            losses["mix"] = self.mix_weight * dice_loss(feature[:, 0], target > 0)
        if self.sync != "none":
            real = batch["frame_valid"]
            losses["sync"] = self.sync_weight * self.synchrony(
                outputs["audio_queries"], outputs[self.feature_key], real
            )
        losses["loss"] = sum(losses.values())
        return losses

    def segmentation(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[0] == 0:
            return logits.sum() * 0.0  # no annotated frame in this batch: keep the graph, add 0
        if self.num_classes == 1:
            logits = logits[:, 0]
            loss = dice_loss(logits, target)
            if self.seg == "focal_dice":
                focal = sigmoid_focal_loss(
                    logits, target.float(), alpha=self.focal_alpha, gamma=self.focal_gamma,
                    reduction="mean",
                )  # fmt: skip
                loss = loss + focal
            return loss
        # AVSS: per-frame cross-entropy (spatial mean, averaged over annotated frames); with
        # ce_dice, plus Dice on the foreground probability, since most pixels are background.
        cross_entropy = F.cross_entropy(logits, target.long())
        if self.avss_seg == "ce":
            return cross_entropy
        foreground = 1 - logits.softmax(dim=1)[:, 0]
        foreground_logits = torch.logit(foreground.clamp(1e-6, 1 - 1e-6))
        return cross_entropy + dice_loss(foreground_logits, target > 0)

    def synchrony(self, audio_queries: Tensor, feature: Tensor, real: Tensor) -> Tensor:
        audio, feature = audio_queries[real], feature[real]  # [n, Q, C], [n, C, h, w]
        if self.sync_detach_audio:
            audio = audio.detach()
        if self.sync == "kl":
            return avfs_loss(audio, feature, self.sync_softmax, self.sync_reduction)
        audio_vector, visual_vector = audio.mean(dim=1), feature.mean(dim=(2, 3))  # [n, C]
        if self.sync == "framewise_l2":
            return F.mse_loss(visual_vector, audio_vector)
        # Clip-level L2: frame averages per clip (every clip of a batch has the same real count
        # only for S4/MS3, so average per clip explicitly).
        clip_of_frame = torch.arange(real.shape[0], device=real.device)[:, None].expand_as(real)[
            real
        ]
        clips = real.shape[0]
        counts = real.sum(dim=1, keepdim=True).float()
        audio_clip = (
            torch.zeros(clips, audio_vector.shape[1], device=audio.device).index_add_(
                0, clip_of_frame, audio_vector
            )
            / counts
        )
        visual_clip = (
            torch.zeros_like(audio_clip).index_add_(0, clip_of_frame, visual_vector) / counts
        )
        return F.mse_loss(visual_clip, audio_clip)
