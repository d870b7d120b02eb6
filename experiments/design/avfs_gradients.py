"""Does the AVFS loss train F_a? Gradients at initialisation and 40 AVFS-only steps.

    python experiments/design/avfs_gradients.py [seed] [override ...]

On the twin's AVSAC at initialisation and its first training batch, prints the gradient norms of
the segmentation and the AVFS terms on the audio projection, with F_a detached in the KL or not;
then, from the same start, 40 AdamW steps (lr 1e-3) on the AVFS term alone, and the spread of the
frame-pooled F_a over the batch's frames (norm of the per-channel std over the mean norm) before
and after: how much the loss erases what tells clips apart. docs/design_log.md quotes the output.
"""

from __future__ import annotations

import copy
import sys

import torch
from common import first_batch, fresh_module, twin_config


def spread(net, batch) -> float:
    with torch.no_grad():
        outputs = net(batch["frames"], batch["audio"], batch["frame_valid"])
    pooled = outputs["audio_queries"].mean(dim=2).flatten(0, 1)  # [B*T, C]
    return (pooled.std(dim=0).norm() / pooled.norm(dim=1).mean()).item()


def main(seed: int, overrides: list[str]) -> None:
    cfg = twin_config([f"seed={seed}", *overrides])
    batch = first_batch(cfg)
    module = fresh_module(cfg, seed).train()
    net, criterion = module.net, module.criterion
    projection = net.audio.proj.weight
    outputs = net(batch["frames"], batch["audio"], batch["frame_valid"])
    for detach in (False, True):
        criterion.sync_detach_audio = detach
        losses = criterion(outputs, batch)
        seg = torch.autograd.grad(losses["seg"], projection, retain_graph=True)[0].norm()
        sync = torch.autograd.grad(losses["sync"], projection, retain_graph=True)[0].norm()
        print(f"sync_detach_audio={detach}: gradient on the audio projection: "
              f"segmentation {seg:.3f}, AVFS {sync:.3f}")  # fmt: skip
    print(f"F_a spread at initialisation: {spread(net, batch):.3f}")
    for detach in (False, True):
        criterion.sync_detach_audio = detach
        trained = copy.deepcopy(net)
        trainable = [p for p in trained.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
        for _ in range(40):
            outputs = trained(batch["frames"], batch["audio"], batch["frame_valid"])
            loss = criterion(outputs, batch)["sync"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"sync_detach_audio={detach}: after 40 AVFS-only steps: AVFS {loss.item():.3f}, "
              f"F_a spread {spread(trained, batch):.3f}")  # fmt: skip


if __name__ == "__main__":
    arguments = sys.argv[1:]
    seed = int(arguments.pop(0)) if arguments and arguments[0].isdigit() else 1
    main(seed, arguments)
