"""Shared by the design-log probes: the twin's config and one training batch of SynthAVS-MS3."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from avsac_lit.utils import build_module, set_num_classes

CONF = Path(__file__).resolve().parents[2] / "conf"
TWIN = ["+experiment=synthetic_ms3", "data.num_workers=0", "~logger"]


def twin_config(overrides: list[str]) -> DictConfig:
    """The demo's experiment (the twins' model) with ``overrides``, as a command line would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=TWIN + overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


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
