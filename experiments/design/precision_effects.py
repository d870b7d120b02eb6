"""Figures for docs/performance.md: what rounding the cheaper paths introduce, on the paper's
model (PVT-v2-b5, VGGish; weights from weights.visual / weights.audio if given, else the fixed
random init) and one clip of random inputs.

    python experiments/design/precision_effects.py [+experiment=ms3] [override ...]

Prints, against the float32 path without the cache (all in eval mode, so that dropout does not
mix in): the largest logit difference and the loss difference of (1) the feature cache in
float16 and bfloat16 (float32 is bit-identical: tests/test_cheaper_steps.py), (2) bf16-mixed
autocast; and how many pixels change side of the 0 logit (the predicted mask).
"""

from __future__ import annotations

import sys
import tempfile

import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from avsac_lit.bench import training_batch
from avsac_lit.run.assemble import compose_config


def main(overrides: list[str]) -> None:
    overrides = overrides or ["+experiment=ms3", "data.img_size=224"]
    cfg = compose_config("train", overrides)
    with open_dict(cfg):
        cfg.model.num_classes = 71 if cfg.data.task == "avss" else 1
    batch = training_batch(cfg.data.task, 1, cfg.data.img_size, torch.device("cpu"))
    torch.manual_seed(0)
    module = instantiate(cfg.model).eval()
    module.feature_cache = None

    def scores(outputs):
        return outputs["logits"].float(), module.criterion(outputs, batch)["loss"].item()

    with torch.no_grad():
        reference, reference_loss = scores(module.cached_forward(
            batch["frames"], batch["audio"], batch["frame_valid"]))  # fmt: skip
        scale = reference.abs().max().item()
        print(f"{cfg.model.name} / {cfg.backbone.name} / {cfg.data.task}, {cfg.data.img_size} px")
        print(f"float32: loss {reference_loss:.6f}, largest |logit| {scale:.3f}")
        rows = {}
        for dtype in ("float16", "bfloat16"):
            with tempfile.TemporaryDirectory() as root:
                module.feature_cache = instantiate(cfg.model.feature_cache, root=root, dtype=dtype)
                module.feature_cache.bind(module.net)
                rows[f"feature cache, {dtype}"] = scores(module.cached_forward(
                    batch["frames"], batch["audio"], batch["frame_valid"]))  # fmt: skip
                module.feature_cache = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rows["bf16-mixed"] = scores(module.cached_forward(
                batch["frames"], batch["audio"], batch["frame_valid"]))  # fmt: skip
    for name, (logits, loss) in rows.items():
        difference = (logits - reference).abs().max().item()
        flipped = ((logits > 0) != (reference > 0)).float().mean().item()
        print(
            f"{name}: largest logit difference {difference:.3g} ({difference / scale:.2e} of the "
            f"largest logit), loss {loss:.6f} (difference {abs(loss - reference_loss):.2e}), "
            f"mask pixels flipped {100 * flipped:.3f}%"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
