"""What AVFS did to trained models: the KL reached, F_a's spread, and F_AGV's shape.

    python experiments/design/avfs_trained.py RUN_DIR [RUN_DIR ...]

For each run directory (a job of a multirun, with ``checkpoints/``), loads the best checkpoint and
measures on the first 12 test batches:

- ``kl``: the AVFS KL (channels reading) between the pooled F_a and F_AGV;
- ``fa_spread``: the spread of the frame-pooled F_a over frames (per-channel std norm over the
  mean norm), which shrinks when F_a stops telling clips apart;
- ``scalar_share``: the share of F_AGV's spatial variance carried by its per-position channel
  mean. The KL is blind to a per-position constant shift (softmax), so at zero KL every position
  is the audio profile plus one scalar and this share is 1;
- ``profile_cos``: cosine between F_AGV's position-averaged channel profile and log P(F_a)
  (both centred).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import fmean

import torch
from hydra.utils import instantiate

from avsac_lit import load_trained
from avsac_lit.models.losses import avfs_loss


@torch.no_grad()
def probe(run: Path, batches: int = 12) -> dict[str, float]:
    best = sorted((run / "checkpoints").glob("epoch_*.ckpt"))
    model = load_trained(best[-1] if best else run / "checkpoints" / "last.ckpt")
    datamodule = instantiate(model.config.data)
    datamodule.setup("test")
    pooled, kls, scalar_shares, cosines = [], [], [], []
    for index, batch in enumerate(datamodule.test_dataloader()):
        if index == batches:
            break
        outputs = model.net(batch["frames"], batch["audio"], batch["frame_valid"])
        real = batch["frame_valid"]
        audio, agv = outputs["audio_queries"][real], outputs["agv"][real]  # [n, Q, C], [n, C, h, w]
        kls.append(avfs_loss(audio, agv).item())
        audio = audio.mean(dim=1)  # [n, C]
        pooled.append(audio)
        flat = agv.flatten(2)  # [n, C, L]
        position_mean = flat.mean(dim=1, keepdim=True)
        shift = position_mean - position_mean.mean(dim=2, keepdim=True)
        centred = flat - flat.mean(dim=2, keepdim=True)
        scalar_shares.append((flat.shape[1] * shift.square().sum() / centred.square().sum()).item())
        profile = flat.mean(dim=2)
        reference = audio.log_softmax(dim=1)
        cosine = torch.nn.functional.cosine_similarity(
            profile - profile.mean(dim=1, keepdim=True),
            reference - reference.mean(dim=1, keepdim=True),
            dim=1,
        )
        cosines.append(cosine.mean().item())
    pooled = torch.cat(pooled)
    return {
        "kl": fmean(kls),
        "fa_spread": (pooled.std(dim=0).norm() / pooled.norm(dim=1).mean()).item(),
        "scalar_share": fmean(scalar_shares),
        "profile_cos": fmean(cosines),
    }


if __name__ == "__main__":
    for directory in map(Path, sys.argv[1:]):
        overrides = (directory / ".hydra" / "overrides.yaml").read_text().split("\n")
        picked = [o.removeprefix("- ") for o in overrides if "seed" in o or "setting" in o]
        figures = {name: round(value, 3) for name, value in probe(directory).items()}
        print(directory, " ".join(picked), json.dumps(figures), flush=True)
