"""Lightning callbacks of the suite."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer

from avsac_lit.models.backbone import VisualBackbone


def find_backbone(pl_module: L.LightningModule) -> VisualBackbone:
    backbones = [m for m in pl_module.modules() if isinstance(m, VisualBackbone)]
    if len(backbones) != 1:
        raise ValueError(f"Expected one VisualBackbone in the module, found {len(backbones)}.")
    return backbones[0]


class UnfreezeBackbone(BaseFinetuning):
    """Keeps the visual backbone frozen for ``epochs`` epochs, then trains it (AVSegFormer's
    ``freeze_epochs``: 5 for S4, 10 for MS3, 0 for AVSS).

    On unfreezing, the backbone's parameters join the optimiser as a new parameter group with the
    current learning rate (AVSegFormer trains them at the same rate), and its normalisation layers
    leave eval mode. Lightning's fine-tuning callback keeps the groups across checkpoints, so a
    resumed run continues with them.

    Args:
        epochs: the epoch at which the backbone starts training (0 trains it from the start).
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        if epochs < 0:
            raise ValueError(f"callbacks.unfreeze_backbone.epochs must be >= 0, got {epochs}.")
        self.epochs = epochs

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        find_backbone(pl_module).set_frozen(True)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch != self.epochs:
            return
        backbone = find_backbone(pl_module)
        backbone.set_frozen(False)
        self.unfreeze_and_add_param_group(backbone, optimizer, initial_denom_lr=1.0, train_bn=True)
