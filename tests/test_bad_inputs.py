"""Bad inputs never pass silently (docs/bad_inputs.md): NaN audio is refused with its file named, a
non-finite loss or gradient stops training with the batch's clips named, no checkpoint holds NaN,
and a mask that does not fit its frame is refused."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from avsac_lit.build import build_module
from avsac_lit.data import build_dataset
from avsac_lit.data.io import load_log_mel_pickle, save_log_mel_pickle
from avsac_lit.models.losses import AVSCriterion
from avsac_lit.module import NonFiniteError
from avsac_lit.train import train
from tests.helpers import tiny_run


def test_a_log_mel_with_nan_is_refused_naming_its_file(synth_copy):
    root = synth_copy("ms3")
    pickle_path = sorted(root.rglob("audio_log_mel/train/*.pkl"))[0]
    examples = load_log_mel_pickle(pickle_path, (5, 1, 96, 64))
    examples[2, 0, 10, 10] = float("nan")
    save_log_mel_pickle(pickle_path, examples)
    dataset = build_dataset("ms3", root, "train", img_size=32)
    index = next(i for i, clip in enumerate(dataset.clips) if clip.name == pickle_path.stem)
    with pytest.raises(ValueError, match=rf"{re.escape(str(pickle_path))} holds 1 non-finite"):
        dataset[index]


def test_a_non_finite_loss_stops_training_naming_the_clips(synth_trees, tmp_path, monkeypatch):
    original = AVSCriterion.forward
    steps = []

    def nan_on_the_third_step(self, outputs, batch):
        losses = original(self, outputs, batch)
        if self.training:
            steps.append(batch["name"])
            if len(steps) == 3:
                losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(AVSCriterion, "forward", nan_on_the_third_step)
    limits = [
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
    ]
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, [*limits, "test=false"])
    with pytest.raises(NonFiniteError) as raised:
        train(cfg)
    message = str(raised.value)
    assert "epoch 1, step 2" in message and "training loss is not finite" in message
    assert all(name in message for name in steps[2])  # the clips of the bad batch, by name
    # The checkpoints of epoch 0 are the last good state, and nothing later was written.
    written = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert written == ["epoch_000.ckpt", "last.ckpt"]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(value).all() for value in state.values())


def test_a_non_finite_gradient_of_a_finite_loss_stops_training(synth_trees, tmp_path, monkeypatch):
    original = AVSCriterion.forward

    def nan_gradient(self, outputs, batch):
        losses = original(self, outputs, batch)
        if self.training:
            # sqrt at 0: a finite value (0) whose gradient is 0 * inf = NaN.
            losses["loss"] = losses["loss"] + torch.sqrt(outputs["logits"].abs() * 0).sum()
        return losses

    monkeypatch.setattr(AVSCriterion, "forward", nan_gradient)
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, ["trainer.max_epochs=1", "test=false"])
    with pytest.raises(
        NonFiniteError, match=r"epoch 0, step 0: the gradient of net\..* not finite"
    ):
        train(cfg)
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_a_checkpoint_with_non_finite_weights_is_never_written(trained_runs):
    module = build_module(OmegaConf.load(trained_runs / "0" / "config.yaml"))
    saved = torch.load(trained_runs / "0" / "checkpoints" / "last.ckpt", weights_only=True)
    module.load_state_dict(saved["state_dict"])
    module.on_save_checkpoint({"state_dict": module.state_dict()})  # finite: accepted
    with torch.no_grad():
        next(module.net.head.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"Refusing to write a checkpoint.*net\.head\."):
        module.on_save_checkpoint({"state_dict": module.state_dict()})


def test_a_mask_of_another_size_than_its_frame_is_refused_naming_it(synth_copy):
    from PIL import Image

    root = synth_copy("ms3")
    mask_path = sorted(root.rglob("gt_masks/val/**/*.png"))[0]
    with Image.open(mask_path) as mask:
        width, height = mask.size
        mask.resize((width // 2, height)).save(mask_path)
    dataset = build_dataset("ms3", root, "val", img_size=32)
    index = next(i for i, clip in enumerate(dataset.clips) if clip.name == mask_path.parent.name)
    with pytest.raises(ValueError, match=rf"Mask {re.escape(str(mask_path))} is {width // 2} x"):
        dataset[index]
