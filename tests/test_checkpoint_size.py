"""Checkpoints leave out the frozen encoders their config rebuilds (a weight file, timm's hub or
the fixed random init), check them by digest when loading, and ``avsac_lit.export`` writes a
self-contained copy."""

from __future__ import annotations

import shutil

import pytest
import torch

from avsac_lit.export import export
from avsac_lit.export import main as export_main
from avsac_lit.inference.trained import load_trained
from avsac_lit.models.vggish import VGGish
from avsac_lit.train import train
from tests.helpers import tiny_run


def test_a_checkpoint_leaves_out_the_frozen_vggish_and_rebuilds_it(trained_runs, tmp_path):
    last = trained_runs / "0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert not any(k.startswith("net.audio.vggish.") for k in saved["state_dict"])
    assert list(saved["avsac_lit"]["rebuilt_encoders"]) == ["net.audio.vggish"]
    assert any(k.startswith("net.audio.proj.") for k in saved["state_dict"])  # trained: kept
    assert last.stat().st_size < 10 * 2**20  # the frozen VGGish alone is 290 MB

    exported = export(last, tmp_path / "shared.ckpt")
    whole = torch.load(exported, weights_only=True)
    assert "optimizer_states" not in whole and whole["avsac_lit"]["rebuilt_encoders"] == {}
    vggish = {k: v for k, v in whole["state_dict"].items() if k.startswith("net.audio.vggish.")}
    assert len(vggish) == len(VGGish().state_dict())
    frames, audio = torch.randn(5, 3, 32, 32), torch.randn(5, 1, 96, 64)
    rebuilt, copied = load_trained(last)(frames, audio), load_trained(exported)(frames, audio)
    assert torch.equal(rebuilt["logits"], copied["logits"])


@pytest.fixture
def vggish_file(tmp_path):
    """A VGGish weight file in the torchvggish release's layout (random weights)."""
    torch.manual_seed(11)
    path = tmp_path / "weights" / "vggish-10086976.pth"
    path.parent.mkdir()
    torch.save(VGGish().state_dict(), path)
    return path


def test_a_checkpoint_needs_its_weight_file_and_says_what_to_do(
    synth_trees, vggish_file, tmp_path, capsys
):
    extra = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "test=false"]
    run = tmp_path / "run"
    train(tiny_run("ms3", synth_trees["ms3"], run, [*extra, f"weights.audio={vggish_file}"]))
    last = run / "checkpoints" / "last.ckpt"
    shared = export(last, tmp_path / "shared.ckpt")
    reference = load_trained(last)

    moved = vggish_file.with_name("elsewhere.pth")
    shutil.move(vggish_file, moved)
    with pytest.raises(FileNotFoundError, match=rf"{vggish_file}.*avsac_lit.export"):
        load_trained(last)
    assert export_main([str(last), str(tmp_path / "again.ckpt")]) == 2
    assert "does not store its frozen encoders (net.audio.vggish)" in capsys.readouterr().err
    # The exported copy needs no file, and is the same model.
    frames, audio = torch.randn(5, 3, 32, 32), torch.randn(5, 1, 96, 64)
    assert torch.equal(load_trained(shared)(frames, audio)["logits"],
                       reference(frames, audio)["logits"])  # fmt: skip

    torch.manual_seed(12)  # another file at the same place: refused by its digest
    torch.save(VGGish().state_dict(), vggish_file)
    with pytest.raises(ValueError, match=r"net.audio.vggish.*not the one it was trained with"):
        load_trained(last)
