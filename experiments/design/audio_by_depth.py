"""Is the audio lost in deep BAVD stacks before any training? Audio sensitivity at initialisation.

    python experiments/design/audio_by_depth.py [override ...]

For 2, 4 and 6 BAVD layers (seeds 1-3, the twin's model), feeds the first training batch once
with its own audio and once with each clip given the next clip's audio, and prints the relative
change (norm of the difference over the norm) of F_a, F_VGA, F_AGV and the logits, averaged over
the seeds. docs/design_log.md quotes the output.
"""

from __future__ import annotations

import sys

import torch
from common import first_batch, fresh_module, twin_config


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@torch.no_grad()
def main(overrides: list[str]) -> None:
    batch = first_batch(twin_config(overrides))
    keys = ("audio_queries", "vga", "agv", "logits")
    for layers in (2, 4, 6):
        changes = []
        for seed in (1, 2, 3):
            cfg = twin_config([f"model.net.decoder_layers={layers}", f"seed={seed}", *overrides])
            cfg.model.num_classes = 1
            net = fresh_module(cfg, seed).net.eval()
            own = net(batch["frames"], batch["audio"], batch["frame_valid"])
            other = net(batch["frames"], batch["audio"].roll(1, dims=0), batch["frame_valid"])
            changes.append([relative_change(own[k], other[k]) for k in keys])
        f_a, vga, agv, logits = torch.tensor(changes).mean(dim=0).tolist()
        print(f"{layers} layers: another clip's audio changes F_a by {f_a:.3f}, F_VGA {vga:.3f}, "
              f"F_AGV {agv:.3f}, logits {logits:.3f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
