"""The frames a training step computes: only those a loss term or a training metric reads, where
leaving the others out changes nothing (``model.skip_unread_frames``)."""

from __future__ import annotations

from torch import Tensor, nn

from avsac_lit.models.losses import AVSCriterion


def frames_independent(net: nn.Module) -> bool:
    """Whether a frame's outputs depend on its own inputs only: the model says it treats frames
    independently, and no BatchNorm in train mode normalises with statistics over the batch."""
    return getattr(net, "frames_independent", False) and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules()
    )


def frames_to_compute(
    batch: dict, net: nn.Module, criterion: AVSCriterion, skip_unread: bool = True
) -> dict:
    """The training batch with only the frames something reads (S4: the labelled first frame),
    where ``skip_unread`` asks for it, ``net`` treats frames independently and ``criterion``
    reads no unlabelled frame (the synchrony loss reads every frame). Clips keep their layout
    when each has as many labelled frames (S4: [B, 1]), otherwise every labelled frame becomes a
    one-frame clip."""
    keep = batch["mask_valid"]  # [B, T]
    if (
        not skip_unread
        or criterion.reads_unlabelled_frames
        or not frames_independent(net)
        or keep.all()
        or not keep.any()
    ):
        return batch
    counts = keep.sum(dim=1).tolist()
    uniform = all(c == counts[0] for c in counts)
    clips, per_clip = (len(counts), counts[0]) if uniform else (sum(counts), 1)

    def select(value):
        if isinstance(value, Tensor) and value.shape[:2] == keep.shape:
            return value[keep].reshape(clips, per_clip, *value.shape[2:])  # [B', T', ...]
        if not uniform and isinstance(value, list | tuple) and len(value) == len(counts):
            return [item for item, c in zip(value, counts, strict=True) for _ in range(c)]
        return value

    return {key: select(value) for key, value in batch.items()}
