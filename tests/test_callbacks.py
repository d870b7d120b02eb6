"""Unfreezing the backbone after N epochs, with its parameters joining the optimiser."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from avsac_lit.callbacks import UnfreezeBackbone
from avsac_lit.models.backbone import VisualBackbone


class TinySystem(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.visual = VisualBackbone(name="avsac_tiny_pvt", freeze=True)
        self.head = nn.Linear(128, 1)
        self.frozen_at_epoch: dict[int, bool] = {}

    def training_step(self, batch, _index):
        (images,) = batch
        features = self.visual(images)[-1].mean(dim=(2, 3))
        return self.head(features).square().mean()

    def on_train_epoch_start(self) -> None:
        self.frozen_at_epoch[self.current_epoch] = not any(
            p.requires_grad for p in self.visual.parameters()
        )

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)


def test_backbone_trains_from_the_given_epoch(tmp_path):
    system = TinySystem()
    images = TensorDataset(torch.randn(4, 3, 32, 32))
    trainer = L.Trainer(
        max_epochs=3, callbacks=[UnfreezeBackbone(epochs=2)], default_root_dir=tmp_path,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    before = [p.clone() for p in system.visual.parameters()]
    trainer.fit(system, DataLoader(images, batch_size=2))
    assert system.frozen_at_epoch == {0: True, 1: True, 2: False}
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-3)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, system.visual.parameters(), strict=True)
    )


def test_negative_epochs_are_refused():
    with pytest.raises(ValueError, match="must be >= 0"):
        UnfreezeBackbone(epochs=-1)


def test_callback_config_instantiates():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "callbacks" / "unfreeze_backbone.yaml"
    callback = instantiate(OmegaConf.load(conf).unfreeze_backbone)
    assert isinstance(callback, UnfreezeBackbone)
    assert callback.epochs == 5
