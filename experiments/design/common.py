"""Shared by the design-log probes: the twin's config and one training batch of SynthAVS-MS3."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from avsac_lit.run.assemble import build_module, compose_config, set_num_classes

# The twins' model: the demo's experiment with the tiny PVT trained from scratch (0.7.0's demo
# freezes a pretrained one; table/synthetic_* train theirs).
TWIN = ["+experiment=synthetic_ms3", "backbone=tiny", "data.num_workers=0", "~logger"]


def twin_config(overrides: list[str]) -> DictConfig:
    """The twins' model with ``overrides``, as a command line would."""
    return compose_config("train", TWIN + overrides)


def first_batch(cfg: DictConfig) -> dict:
    """The first training batch (4 clips of 5 frames) of the data the config names."""
    datamodule = instantiate(cfg.data)
    set_num_classes(cfg, datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def fresh_module(cfg: DictConfig, seed: int):
    """The LightningModule at initialisation, seeded as a run with this seed is."""
    L.seed_everything(seed)
    return build_module(cfg)
