"""AVSLitModule: what it optimises, how it scores, and that frozen encoders stay frozen."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from avsac_lit.models.avsac import AVSAC
from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.models.losses import AVSCriterion
from avsac_lit.models.vggish import AudioEncoder
from avsac_lit.system.module import AVSLitModule


def small_module(
    num_classes: int = 1, freeze_visual: bool = True, warmup_steps: int = 0
) -> AVSLitModule:
    net = AVSAC(
        visual=VisualBackbone(name="avsac_tiny_pvt", freeze=freeze_visual),
        audio=AudioEncoder(dim=32),
        decoder_layers=1, heads=4, hidden_dim=64,
        num_classes=num_classes, dim=32, num_queries=4, generator_layers=1, mlp_hidden=32,
    )  # fmt: skip
    return AVSLitModule(
        name="avsac",
        num_classes=num_classes,
        net=net,
        loss=AVSCriterion(num_classes=num_classes),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        scheduler_interval="epoch",
        warmup_steps=warmup_steps,
        eval_padding_frames=True,
        audio_share_batches=16,
    )


class _Trainer:
    def __init__(self, model):
        self.model = model


def test_only_trainable_parameters_reach_the_optimiser():
    module = small_module()
    module.trainer = None
    object.__setattr__(module, "_trainer", _Trainer(module))
    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in module.named_parameters():
        frozen = name.startswith(("net.visual.", "net.audio.vggish."))
        assert (id(parameter) in optimised) != frozen, name


def test_frozen_encoders_stay_in_eval_mode_in_train_mode():
    module = small_module().train()
    assert not module.net.audio.vggish.training and not module.net.visual.model.training
    assert module.net.bavd.training and module.net.audio.proj.training


def test_avss_scoring_adds_padding_frames_only_when_asked():
    scores = small_module(num_classes=3).scores
    batch = {
        "mask_valid": torch.tensor([[True, True, False, False]]),
        "frame_valid": torch.tensor([[True, True, False, False]]),
    }
    assert scores.scored_frames(batch, "val").tolist() == [[True, True, True, True]]
    assert scores.scored_frames(batch, "train").tolist() == [[True, True, False, False]]
    scores.eval_padding_frames = False
    assert scores.scored_frames(batch, "test").tolist() == [[True, True, False, False]]


def test_warmup_ramps_the_scheduled_rate_without_changing_it():
    module = small_module(warmup_steps=4)
    weight = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([weight], lr=0.5)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = -weight  # gradient -1: each step moves the weight up by the rate used
        loss.backward()
        return loss

    moves = []
    for step in range(6):
        object.__setattr__(module, "_trainer", SimpleNamespace(global_step=step))
        before = weight.item()
        module.optimizer_step(0, step, optimizer, closure)
        moves.append(weight.item() - before)
        assert optimizer.param_groups[0]["lr"] == 0.5  # what the scheduler set stays set
    assert moves == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"model\.warmup_steps=-1"):
        small_module(warmup_steps=-1)
