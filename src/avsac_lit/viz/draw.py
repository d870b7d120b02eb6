"""Pictures of clips and predictions: frames back to RGB, mask overlays, log-mel images, grids.

Shared by the validation overlay callback, ``avsac_lit.predict`` and the notebooks, so a mask
looks the same wherever it is drawn. Binary masks (S4/MS3) are drawn in one colour; AVSS classes
in AVSBench-semantic's own colours (the PASCAL-VOC map of its ``labels_rgb`` files).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from avsac_lit.data.io import IMAGENET_MEAN, IMAGENET_STD, voc_palette

GROUND_TRUTH = "ground truth"
SOUNDING_COLOUR = (255, 64, 32)  # binary masks: one colour that stands out on most frames


def frames_to_uint8(frames: Tensor) -> np.ndarray:
    """ImageNet-normalised frames [..., 3, H, W] -> uint8 RGB [..., H, W, 3]."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=frames.device)[:, None, None]
    rgb = (frames.float() * std + mean).clamp(0, 1) * 255
    return rgb.round().byte().movedim(-3, -1).cpu().numpy()


def mask_palette(num_classes: int) -> np.ndarray:
    """uint8 [max(num_classes, 2), 3]: class colours, background black."""
    if num_classes > 1:
        return voc_palette(num_classes)
    return np.array([(0, 0, 0), SOUNDING_COLOUR], dtype=np.uint8)


def predicted_masks(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Logits [..., K, H, W] -> long masks [..., H, W]: sounding (1) where the probability
    exceeds ``threshold`` for K = 1, else the class of the highest probability."""
    if logits.shape[-3] == 1:
        return (logits[..., 0, :, :].sigmoid() > threshold).long()
    return logits.softmax(dim=-3).argmax(dim=-3)


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5):
    """uint8 RGB [H, W, 3] with every non-background pixel of ``mask`` [H, W] (class ids) blended
    with its class colour, and the mask's outline drawn solid so thin objects stay visible."""
    mask = np.asarray(mask).astype(np.int64)
    blended = image.astype(np.float32)
    colours = palette[np.clip(mask, 0, len(palette) - 1)].astype(np.float32)
    inside = mask > 0
    blended[inside] = (1 - alpha) * blended[inside] + alpha * colours[inside]
    edge = np.zeros_like(inside)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[1:] |= mask[:-1] != mask[1:]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, :-1] != mask[:, 1:]
    edge &= inside
    blended[edge] = colours[edge]
    return blended.round().astype(np.uint8)


def log_mel_image(audio: Tensor) -> np.ndarray:
    """Log-mel examples [T, 1, 96, 64] -> one spectrogram [64 mel bands, 96 T frames], lowest band
    in row 0 (draw it with ``origin="lower"``)."""
    return audio[:, 0].float().cpu().reshape(-1, audio.shape[-1]).T.numpy()


def clip_figure(
    frames: Tensor,
    audio: Tensor,
    rows: dict[str, Tensor],
    *,
    num_classes: int = 1,
    frame_valid: Tensor | None = None,
    mask_valid: Tensor | None = None,
    title: str = "",
    class_names: Sequence[str] | None = None,
) -> Figure:
    """One clip as a grid: a column per real frame, a row of overlays per entry of ``rows``
    (e.g. ``{"ground truth": masks, "prediction": predicted}``), and below them the clip's
    log-mel over its whole length.

    Args:
        frames: [T, 3, H, W] normalised frames; ``audio``: [T, 1, 96, 64] log-mels.
        rows: label -> masks [T, H, W] of class ids (1 = sounding for S4/MS3).
        frame_valid: [T] bool, padding frames (False) are left out.
        mask_valid: [T] bool, frames without ground truth: the ``ground truth`` row shows them
            bare.
        class_names: AVSS: the names of the classes in the picture are listed under the title.
    """
    count = len(frames)
    real = list(range(count)) if frame_valid is None else frame_valid.nonzero()[:, 0].tolist()
    images = frames_to_uint8(frames)
    palette = mask_palette(num_classes)
    # A bare Figure, not pyplot: no backend or global state, and notebooks still display it.
    size = (1.8 * len(real) + 0.6, 1.8 * len(rows) + 1.4)
    figure = Figure(figsize=size, layout="constrained")
    grid = figure.add_gridspec(len(rows) + 1, len(real), height_ratios=[1] * len(rows) + [0.6])
    for row, (label, masks) in enumerate(rows.items()):
        for column, k in enumerate(real):
            axes = figure.add_subplot(grid[row, column])
            bare = label == GROUND_TRUTH and mask_valid is not None and not bool(mask_valid[k])
            shown = images[k] if bare else overlay(images[k], masks[k].cpu().numpy(), palette)
            axes.imshow(shown)
            axes.set_xticks([]), axes.set_yticks([])
            if row == 0:
                axes.set_title(f"frame {k + 1}", fontsize=8)
            if column == 0:
                axes.set_ylabel(label, fontsize=8)
    axes = figure.add_subplot(grid[len(rows), :])
    axes.imshow(log_mel_image(audio[real]), origin="lower", aspect="auto", cmap="magma")
    axes.set_ylabel("log-mel", fontsize=8)
    axes.set_xticks([96 * (i + 0.5) for i in range(len(real))], [str(k + 1) for k in real])
    axes.tick_params(labelsize=7)
    axes.set_yticks([])
    if num_classes > 1 and class_names is not None:
        present = torch.unique(torch.cat([m[real].flatten().cpu() for m in rows.values()]))
        names = [class_names[c] for c in present.tolist() if 0 < c < len(class_names)]
        title = f"{title}\n{', '.join(names)}" if names else title
    if title:
        figure.suptitle(title, fontsize=9)
    return figure
