"""The suite's callbacks: unfreezing the backbone after N epochs (its parameters joining the
optimiser), and the validation overlays."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.run.callbacks import ResumableCheckpoint, UnfreezeBackbone, ValidationOverlays
from avsac_lit.train import train
from avsac_lit.viz.draw import clip_figure, mask_palette, overlay, predicted_masks
from tests.helpers import tiny_run


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

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.helpers import CONF

    conf = CONF / "callbacks" / "unfreeze_backbone.yaml"
    callback = instantiate(OmegaConf.load(conf).unfreeze_backbone)
    assert isinstance(callback, UnfreezeBackbone)
    assert callback.epochs == 5


def test_overlays_are_written_as_png_grids_every_validation_epoch_without_a_logger(trained_runs):
    run = trained_runs / "0"
    epochs = sorted(p.name for p in (run / "overlays").iterdir())
    assert epochs == ["epoch_000", "epoch_001"]  # not the sanity check
    for epoch in epochs:
        grids = sorted((run / "overlays" / epoch).glob("*.png"))
        assert len(grids) == 2  # the first and the last validation clip, every epoch
        with Image.open(grids[0]) as image:
            assert image.width > image.height > 200
    names = sorted(p.name for p in (run / "overlays" / "epoch_000").glob("*.png"))
    assert names == sorted(p.name for p in (run / "overlays" / "epoch_001").glob("*.png"))
    assert json.loads((run / "metrics.json").read_text())["metrics"]["val/miou"] >= 0


# The precisions the README documents, and 64-true (the suite's float64 checks). 32-true with
# the overlays is what every other run does, and 16-mixed on a CPU is Lightning's bf16-mixed.
PRECISIONS = [
    "64-true",
    "bf16-mixed",
    pytest.param("32-true", marks=pytest.mark.slow),
    pytest.param("16-mixed", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_documented_precision_reaches_validation_with_the_default_callbacks(
    precision, synth_trees, tmp_path
):
    """The overlays feed validation clips to the model outside the validation loop: in the
    trainer's precision, as the loop does (float frames to a float64 model stopped 64-true)."""
    extra = [
        f"trainer.precision={precision}", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.num_sanity_val_steps=0", "test=false",
    ]  # fmt: skip
    metrics = train(tiny_run("ms3", synth_trees["ms3"], tmp_path, extra))
    assert 0.0 <= metrics["val/miou"] <= 1.0
    grids = list((tmp_path / "overlays" / "epoch_000").glob("*.png"))
    assert grids, "no validation overlays written"


def test_overlays_refuse_nonsense_settings(tmp_path):
    with pytest.raises(ValueError, match=r"callbacks\.overlays: clips=0"):
        ValidationOverlays(dirpath=tmp_path, clips=0)


def test_overlay_blends_inside_the_mask_and_draws_its_outline_solid():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=np.int64)
    mask[:, 1:] = 1  # a 4x3 object; its left column touches the background
    palette = mask_palette(1)
    drawn = overlay(image, mask, palette, alpha=0.5)
    assert (drawn[:, 0] == 100).all()  # background untouched
    assert (drawn[:, 1] == palette[1]).all()  # outline: the class colour itself
    blended = np.round(0.5 * 100 + 0.5 * palette[1].astype(np.float32))
    assert (drawn[:, 2] == blended).all() and (drawn[:, 3] == blended).all()


def test_predicted_masks_threshold_binary_and_take_the_argmax_of_classes():
    binary = torch.tensor([[[[0.1, -0.1]]]])  # [1, K=1, 1, 2]
    assert predicted_masks(binary).tolist() == [[[1, 0]]]
    classes = torch.tensor([[[[0.0]], [[2.0]], [[1.0]]]])  # [1, K=3, 1, 1]
    assert predicted_masks(classes).tolist() == [[[1]]]


def test_avss_grid_names_the_classes_it_shows_and_leaves_out_padding_frames():
    frames, audio = torch.zeros(3, 3, 8, 8), torch.zeros(3, 1, 96, 64)
    prediction = torch.zeros(3, 8, 8, dtype=torch.long)
    prediction[0, :2, :2] = 2
    figure = clip_figure(
        frames, audio, {"ground truth": prediction.clone(), "prediction": prediction},
        num_classes=3,
        frame_valid=torch.tensor([True, True, False]), class_names=["background", "dog", "car"],
        title="clip",
    )  # fmt: skip
    assert figure._suptitle.get_text() == "clip\ncar"
    assert len(figure.axes) == 2 * 2 + 1  # two real frames, two rows, and the log-mel


def test_a_resume_into_a_new_directory_carries_the_best_checkpoint(tmp_path):
    from avsac_lit.run.callbacks import ResumableCheckpoint

    old = tmp_path / "crashed" / "checkpoints"
    old.mkdir(parents=True)
    best = old / "epoch_003.ckpt"
    best.write_bytes(b"the best weights")
    score = torch.tensor(0.3184)
    saved = {
        "monitor": "val/miou", "best_model_score": score, "best_model_path": str(best),
        "current_score": torch.tensor(0.30), "dirpath": str(old),
        "best_k_models": {str(best): score}, "kth_best_model_path": str(best), "kth_value": score,
        "last_model_path": str(old / "last.ckpt"),
    }  # fmt: skip
    new_dir = tmp_path / "resumed" / "checkpoints"
    callback = ResumableCheckpoint(dirpath=new_dir, monitor="val/miou", mode="max", save_top_k=1)
    callback.load_state_dict(saved)
    copy = new_dir / "epoch_003.ckpt"
    assert copy.read_bytes() == b"the best weights" and best.is_file()
    assert callback.best_model_path == str(copy) and callback.best_model_score == score
    assert callback.state_key.startswith("ModelCheckpoint{")  # reads Lightning's own checkpoints

    class Strategy:
        @staticmethod
        def reduce_boolean_decision(decision, all=True):
            return decision

    trainer = type("Trainer", (), {"strategy": Strategy()})()
    # A worse epoch after the resume does not displace the carried best; a better one would.
    assert not callback.check_monitor_top_k(trainer, torch.tensor(0.0005))
    assert callback.check_monitor_top_k(trainer, torch.tensor(0.40))


def test_a_checkpoint_write_that_fails_leaves_the_previous_file_and_no_temp_file(
    tmp_path, monkeypatch
):
    import tempfile

    from avsac_lit.checkpoints.writer import AtomicCheckpointIO

    system_temp = tmp_path / "system_temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    path = tmp_path / "checkpoints" / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"step": 1}, path)
    assert torch.load(path)["step"] == 1

    original_save = torch.save

    def killed_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the writer hands torch an open file
        raise KeyboardInterrupt  # what a kill looks like from inside

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        writer.save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", original_save)
    assert torch.load(path)["step"] == 1  # the previous good file
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert list(system_temp.iterdir()) == []  # nothing staged in $TMPDIR


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
    import os
    import time

    from avsac_lit.storage.atomic import remove_leftovers

    old, fresh, kept = (tmp_path / n for n in ("a.ckpt.partial", "b.pt.partial", "c.ckpt"))
    for path in (old, fresh, kept):
        path.write_bytes(b"x")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    assert remove_leftovers(tmp_path, older_than_s=3600) == [old]  # a live writer's is spared
    assert remove_leftovers(tmp_path) == [fresh]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_last_ckpt_follows_every_epoch_even_without_a_new_best(synth_trees, tmp_path, monkeypatch):
    """Lightning 2.6 rewrites last.ckpt only in an epoch that also wrote a best checkpoint."""
    from avsac_lit.metrics import ProtocolJaccard
    from avsac_lit.train import train
    from tests.helpers import tiny_run

    monkeypatch.setattr(ProtocolJaccard, "compute", lambda self: torch.tensor(0.5))  # no gain
    extra = ["trainer.max_epochs=2", "trainer.limit_train_batches=1", "test=false"]
    train(tiny_run("ms3", synth_trees["ms3"], tmp_path, extra))
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 1


def test_a_resume_removes_only_the_checkpoints_named_as_the_run_names_them(tmp_path):
    """Resuming in a run directory used to delete every .ckpt in checkpoints/ that the run did
    not track: a user's copies and exports too. Only names of the callback's own template go
    (here the config's epoch_{epoch:03d}); the orphan a kill leaves is still removed."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.helpers import CONF

    node = OmegaConf.load(CONF / "callbacks" / "model_checkpoint.yaml").model_checkpoint
    node.dirpath = str(tmp_path)
    callback = instantiate(node)
    assert callback.filename == "epoch_{epoch:03d}"
    callback.best_k_models = {str(tmp_path / "epoch_003.ckpt"): torch.tensor(0.5)}
    files = {
        name: name.encode() * 100
        for name in ("last.ckpt", "epoch_003.ckpt", "epoch_001.ckpt", "my_copy.ckpt",
                     "exported.ckpt", "epoch_best_by_hand.ckpt", "epoch_7.ckpt.bak")
    }  # fmt: skip
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    callback.remove_untracked(str(tmp_path / "last.ckpt"))
    del files["epoch_001.ckpt"]  # the orphan: a best the resumed state no longer tracks
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files

    # Another template: Lightning's default, with the metric names put in.
    pattern = ResumableCheckpoint(dirpath=tmp_path).own_name()  # {epoch}-{step}
    assert pattern.fullmatch("epoch=3-step=12.ckpt")
    assert pattern.fullmatch("epoch=3-step=12-v1.ckpt")
    assert not pattern.fullmatch("epoch=3-step=twelve.ckpt")
