"""Pretraining the tiny PVT that the CPU demo freezes, as the paper freezes an ImageNet PVT.

``python -m avsac_lit.pretrain --out FILE [--clips 1000] [--epochs 20] [--seed 7919]``

The paper's AVSAC keeps its visual encoder frozen at weights pretrained elsewhere (PVT-v2-b5 on
ImageNet). The demo's 0.4M-parameter PVT (``avsac_tiny_pvt``) has no published weights, so this
module makes them: the backbone and a small head learn to name the category of every pixel
(background or one of SynthAVS's ten objects) on frames of clips rendered from their own seed, a
vision-only task on scenes that share no clip with any SynthAVS tree the experiments generate
(those use ``data.synthetic.seed``, 0 by default, and another clip stream). No audio and no
sounding label is seen. The package ships the result (``avsac_lit/weights/``); ``timm``'s
``pretrained=True`` for ``avsac_tiny_pvt`` loads it (``backbone=tiny_pretrained``).

Frames are rendered at 224 px and resized as the loaders resize them (bilinear, then ImageNet
normalisation), so the backbone sees what the experiments feed it. docs/training.md records the
settings of the shipped file and what they gave.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from avsac_lit.data.io import normalised_frame, resize_or_crop
from avsac_lit.data.scenes import CATEGORIES, make_clip
from avsac_lit.models.backbone import TINY_PVT, VisualBackbone
from avsac_lit.storage.atomic import atomic_path
from avsac_lit.system.memory import keep_freed_memory

log = logging.getLogger(__name__)

# A clip stream of its own: make_clip seeds each clip from (seed, task, index), and no experiment
# generates its trees from this seed.
DEFAULT_SEED = 7919
RENDER_SIZE = 224  # SynthAVS's frame size, resized like the loaders resize it
HELD_OUT = 0.1  # the last clips: pixel accuracy on frames the backbone never trained on


def category_frames(clips: int, seed: int, size: int) -> tuple[Tensor, Tensor]:
    """Frames [N, 3, size, size] (normalised as the loaders do) and their per-pixel labels
    [N, size, size] (0 background, 1 + category index) of ``clips`` rendered clips."""
    frames, labels = [], []
    for index in range(clips):
        clip = make_clip(seed, "ms3", index, "train", RENDER_SIZE)
        for k in range(clip.num_frames):
            image = resize_or_crop(Image.fromarray(clip.frames[k]), size, crop=False, is_mask=False)
            frames.append(normalised_frame(image))
            owner = Image.fromarray((clip.owner[k] + 1).astype(np.uint8))
            label = np.array(resize_or_crop(owner, size, crop=False, is_mask=True))
            labels.append(torch.from_numpy(label).long())
    return torch.stack(frames), torch.stack(labels)


class CategoryHead(nn.Module):
    """The four backbone levels projected to ``width``, summed at stride 4, then per-pixel class
    logits at the input's resolution. Discarded after pretraining."""

    def __init__(self, *, in_channels: list[int], width: int = 64, classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.classify = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(8, width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, classes, 1),
        )

    def forward(self, levels: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Levels [N, C_i, H / s, W / s] -> logits [N, classes, *size]."""
        stride4 = levels[0].shape[-2:]
        summed = sum(
            F.interpolate(lateral(level), size=stride4, mode="bilinear", align_corners=False)
            for lateral, level in zip(self.lateral, levels, strict=True)
        )
        return F.interpolate(self.classify(summed), size=size, mode="bilinear",
                             align_corners=False)  # fmt: skip


def pixel_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of object pixels (label > 0) whose category is predicted right."""
    objects = labels > 0
    return float((logits.argmax(1)[objects] == labels[objects]).float().mean())


def pretrain(
    *,
    clips: int = 1000,
    epochs: int = 20,
    seed: int = DEFAULT_SEED,
    size: int = 96,
    batch_size: int = 20,
    lr: float = 1e-3,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """Train ``avsac_tiny_pvt`` and a :class:`CategoryHead` on the frames of ``clips`` clips.

    Returns the backbone's state dict (timm's key layout), the head's (kept beside it, so that
    what the backbone learned can be checked: tests/test_pretrain.py) and a record of the
    settings and the held-out pixel accuracy per epoch.
    """
    keep_freed_memory()
    started = time.perf_counter()
    frames, labels = category_frames(clips, seed, size)
    held_out = max(5, round(HELD_OUT * clips)) * 5  # whole clips: 5 frames each
    train_frames, train_labels = frames[:-held_out], labels[:-held_out]
    test_frames, test_labels = frames[-held_out:], labels[-held_out:]
    log.info("Rendered %d frames in %.0f s", len(frames), time.perf_counter() - started)

    torch.manual_seed(seed)
    # Its warning that it starts from random weights is for the experiments; here that is the point.
    backbone_log = logging.getLogger(VisualBackbone.__module__)
    level = backbone_log.level
    backbone_log.setLevel(logging.ERROR)
    try:
        backbone = VisualBackbone(name=TINY_PVT, freeze=False)
    finally:
        backbone_log.setLevel(level)
    head = CategoryHead(in_channels=backbone.channels, classes=len(CATEGORIES) + 1)
    parameters = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_frames) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.05
    )
    order = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        backbone.train(), head.train()
        permutation = torch.randperm(len(train_frames), generator=order)
        total = 0.0
        for start in range(0, len(train_frames), batch_size):
            batch = permutation[start : start + batch_size]
            images, targets = train_frames[batch], train_labels[batch]
            # Mirror images: the categories' shapes and the scenes' light have no handedness
            # that the task needs.
            flip = torch.rand(len(batch), generator=order) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            targets = torch.where(flip[:, None, None], targets.flip(-1), targets)
            logits = head(backbone(images), targets.shape[-2:])
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        accuracy = evaluate(backbone, head, test_frames, test_labels, batch_size)
        history.append({"epoch": epoch + 1, "loss": round(total / len(train_frames), 4),
                        "held_out_pixel_accuracy": round(accuracy, 4)})  # fmt: skip
        log.info("epoch %d: loss %.4f, held-out pixel accuracy %.3f", epoch + 1,
                 history[-1]["loss"], accuracy)  # fmt: skip
    record = {
        "model": TINY_PVT,
        "task": "per-pixel category (background + 10 SynthAVS categories), vision only",
        "settings": {"clips": clips, "held_out_clips": held_out // 5, "epochs": epochs,
                     "seed": seed, "size": size, "batch_size": batch_size, "lr": lr},
        "history": history,
        "seconds": round(time.perf_counter() - started),
        "torch": str(torch.__version__),
    }  # fmt: skip
    return backbone.model.state_dict(), head.state_dict(), record


@torch.no_grad()
def evaluate(
    backbone: nn.Module, head: nn.Module, frames: Tensor, labels: Tensor, batch_size: int
) -> float:
    backbone.eval(), head.eval()
    logits = torch.cat([
        head(backbone(frames[i : i + batch_size]), labels.shape[-2:])
        for i in range(0, len(frames), batch_size)
    ])  # fmt: skip
    return pixel_accuracy(logits, labels)


def save(path: Path, backbone: dict[str, Tensor], head: dict[str, Tensor], record: dict) -> None:
    """``{"state_dict": backbone, "head": ..., "pretraining": record}``, written whole or not at
    all; a weights file like any other to the loaders, which read ``state_dict``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        torch.save({"state_dict": backbone, "head": head, "pretraining": record}, partial)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m avsac_lit.pretrain",
        description="Pretrain the demo's tiny PVT on per-pixel categories of synthetic frames.",
    )
    parser.add_argument("--out", required=True, type=Path, help="the weights file to write")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--size", type=int, default=96, help="frame side in pixels")
    args = parser.parse_args(argv)
    if args.clips < 10 or args.epochs < 1:
        parser.error("--clips must be at least 10 and --epochs at least 1.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    backbone, head, record = pretrain(
        clips=args.clips, epochs=args.epochs, seed=args.seed, size=args.size
    )
    save(args.out, backbone, head, record)
    log.info("Wrote %s (held-out pixel accuracy %.3f)", args.out,
             record["history"][-1]["held_out_pixel_accuracy"])  # fmt: skip


if __name__ == "__main__":
    main()
