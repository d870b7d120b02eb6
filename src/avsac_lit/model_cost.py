"""Parameter counts and FLOPs of a model, composed from the same configs as training.

``python -m avsac_lit.model_cost [model=avsac|avsegformer] [backbone=pvt_v2_b5|resnet50|tiny]
[task=s4|ms3|avss] [img_size=224] [weights.visual=PATH] [weights.audio=PATH]``

Prints trainable, frozen and total parameters per module, the forward FLOPs of one clip (5 frames
for S4/MS3, 10 for AVSS; a multiply-add counts 2, as torch's FlopCounterMode counts) and the CPU
time of that forward pass. The last line is one JSON object for scripts.
"""

from __future__ import annotations

import json
import time

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avsac_lit.models.counting import parameter_counts
from avsac_lit.run.assemble import CONFIG_PATH
from avsac_lit.run.wrapper import refusals_in_one_line

TASK_SHAPES = {"s4": (1, 5), "ms3": (1, 5), "avss": (71, 10)}  # (classes, frames per clip)


def parameter_report(model: nn.Module) -> dict[str, dict[str, int]]:
    """{module: {trainable, frozen, total}} for each top-level module, and ``total``."""
    return {name: parameter_counts(m) for name, m in [*model.named_children(), ("total", model)]}


def forward_cost(model: nn.Module, frames: int, img_size: int) -> tuple[int, float]:
    """(FLOPs, CPU seconds) of one forward pass on one clip, in eval mode without gradients."""
    # FlopCounterMode's module tracker trips over inputs that require grad under no_grad.
    model.eval().requires_grad_(False)
    video = torch.randn(1, frames, 3, img_size, img_size)
    audio = torch.randn(1, frames, 1, 96, 64)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(video, audio)
        started = time.perf_counter()
        model(video, audio)
        seconds = time.perf_counter() - started
    return counter.get_total_flops(), seconds


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="model_cost")
@refusals_in_one_line("avsac_lit.model_cost")
def main(cfg: DictConfig) -> None:
    if cfg.task not in TASK_SHAPES:
        raise ValueError(f"task={cfg.task}; expected one of {', '.join(TASK_SHAPES)}.")
    classes, frames = TASK_SHAPES[cfg.task]
    cfg.model.num_classes = classes
    model = instantiate(cfg.model.net)
    report = parameter_report(model)  # before forward_cost freezes everything for counting
    flops, seconds = forward_cost(model, frames, cfg.img_size)
    table = Table(title=f"{cfg.model.name} / {cfg.backbone.name} / {cfg.task}, {cfg.img_size} px")
    for column in ("module", "trainable (M)", "frozen (M)", "total (M)"):
        table.add_column(column, justify="right" if column != "module" else "left")
    for name, counts in report.items():
        table.add_row(name, *(f"{counts[k] / 1e6:.3f}" for k in ("trainable", "frozen", "total")))
    console = Console()
    console.print(table)
    console.print(
        f"Forward FLOPs, one clip of {frames} frames: {flops / 1e9:.1f} G; CPU {seconds:.2f} s"
    )
    summary = {
        "model": cfg.model.name,
        "backbone": cfg.backbone.name,
        "task": cfg.task,
        "img_size": cfg.img_size,
        "frames": frames,
        "total_params": report["total"]["total"],
        "trainable_params": report["total"]["trainable"],
        "frozen_params": report["total"]["frozen"],
        "flops": flops,
        "cpu_forward_seconds": round(seconds, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
