"""Bad inputs never pass silently (docs/bad_inputs.md): NaN audio is refused with its file named, a
non-finite loss or gradient stops training with the batch's clips named, no checkpoint holds NaN,
and a mask that does not fit its frame is refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from avsac_lit.checkpoints.encoders import restore_built_encoders
from avsac_lit.data import build_dataset
from avsac_lit.data.io import load_log_mel_pickle, save_log_mel_pickle
from avsac_lit.models.losses import AVSCriterion
from avsac_lit.run.assemble import build_module
from avsac_lit.system.guards import NonFiniteError, NonFiniteGuard
from avsac_lit.system.module import AVSLitModule
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
    assert f"the last good state is {tmp_path / 'checkpoints' / 'last.ckpt'}" in message
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
    ) as raised:
        train(cfg)
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))
    # It used to say "the last checkpoint is the last good state" with none written.
    assert "no checkpoint had been written yet" in str(raised.value)


@pytest.mark.parametrize("bad", ["loss", "gradient"])
def test_a_debug_run_without_callbacks_still_stops_on_non_finite_numbers(
    bad, synth_trees, tmp_path, monkeypatch
):
    """``+debug=...`` sets ``callbacks: null``: the guards are not config callbacks, so a debug
    run keeps them."""
    if bad == "loss":
        original = AVSCriterion.forward

        def nan_loss(self, outputs, batch):
            losses = original(self, outputs, batch)
            losses["loss"] = losses["loss"] * float("nan")
            return losses

        monkeypatch.setattr(AVSCriterion, "forward", nan_loss)
    else:
        # Put there after backward: anomaly detection, on in debug runs, stops a NaN that a
        # backward function makes before the guard sees it.
        def nan_gradient(self):
            parameter = next(p for p in self.net.parameters() if p.grad is not None)
            parameter.grad.view(-1)[0] = float("nan")

        monkeypatch.setattr(AVSLitModule, "on_after_backward", nan_gradient)
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, ["+debug=fdr", "test=false"])
    assert cfg.callbacks is None
    what = "the training loss is" if bad == "loss" else r"the gradient of net\..* is"
    with pytest.raises(NonFiniteError, match=rf"epoch 0, step 0: {what} not finite"):
        train(cfg)


def test_the_gradient_check_names_non_finite_gradients_and_passes_huge_finite_ones(trained_runs):
    """The one-kernel check (the gradients' norms) overflows on huge finite values: the exact
    check then decides, and lets them through; a NaN or infinity anywhere is named."""
    module = build_module(OmegaConf.load(trained_runs / "0" / "config.yaml"))
    head = dict(module.net.head.named_parameters())
    for parameter in module.parameters():
        parameter.grad = torch.zeros_like(parameter) if parameter.requires_grad else None
    first, second = (f"net.head.{name}" for name in list(head)[:2])
    head[first.removeprefix("net.head.")].grad.fill_(1e30)  # its norm: inf in float32
    guard = NonFiniteGuard()
    guard.on_before_optimizer_step(None, module, optimizer=None)
    for value, name in ((float("nan"), second), (float("inf"), second)):
        head[name.removeprefix("net.head.")].grad.view(-1)[0] = value
        with pytest.raises(NonFiniteError, match=rf"the gradient of {name} is not finite"):
            guard.on_before_optimizer_step(None, module, optimizer=None)


def test_a_checkpoint_with_non_finite_weights_is_never_written(trained_runs):
    module = build_module(OmegaConf.load(trained_runs / "0" / "config.yaml"))
    saved = torch.load(trained_runs / "0" / "checkpoints" / "last.ckpt", weights_only=True)
    restore_built_encoders(module, saved)  # the frozen VGGish, left out of the file
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


def _clip_index(dataset, name: str) -> int:
    return next(i for i, clip in enumerate(dataset.clips) if clip.name == name)


def test_a_grey_mask_is_refused_naming_it(synth_copy):
    from PIL import Image

    root = synth_copy("ms3")
    mask_path = sorted(root.rglob("gt_masks/val/**/*.png"))[0]
    with Image.open(mask_path) as mask:
        grey = np.asarray(mask.convert("L")).astype(np.uint8) // 2  # 0 / 127 ...
    grey[0, :4] = (10, 60, 200, 250)  # ... and soft edges
    Image.fromarray(grey).save(mask_path)
    dataset = build_dataset("ms3", root, "val", img_size=32)
    with pytest.raises(ValueError, match=rf"Mask {re.escape(str(mask_path))} is not binary"):
        dataset[_clip_index(dataset, mask_path.parent.name)]


def test_masks_stored_as_0_1_or_0_255_are_both_read_as_binary(synth_copy):
    from PIL import Image

    root = synth_copy("ms3")
    mask_path = sorted(root.rglob("gt_masks/val/**/*.png"))[0]
    dataset = build_dataset("ms3", root, "val", img_size=32)
    index = _clip_index(dataset, mask_path.parent.name)
    as_0_255 = dataset[index]["masks"]
    with Image.open(mask_path) as mask:
        Image.fromarray((np.asarray(mask.convert("L")) > 0).astype(np.uint8)).save(mask_path)
    assert torch.equal(dataset[index]["masks"], as_0_255) and as_0_255.max() == 1


def test_an_avss_label_saved_as_class_ids_is_refused_naming_it(synth_copy):
    from PIL import Image

    from avsac_lit.data.io import voc_palette

    root = synth_copy("avss")
    label_path = sorted(root.rglob("labels_rgb/0.png"))[0]
    with Image.open(label_path) as label:
        rgb = np.asarray(label.convert("RGB"))
    palette = voc_palette(71)
    class_ids = np.zeros(rgb.shape[:2], dtype=np.uint8)
    for index, colour in enumerate(palette):
        class_ids[(rgb == colour).all(axis=-1)] = index
    assert class_ids.max() > 0  # the frame has an object, which a silent decoder would lose
    Image.fromarray(class_ids, mode="L").save(label_path)
    uid = label_path.parent.parent.name
    split = next(s for s in ("train", "val", "test") if uid in _uids(root, s))
    dataset = build_dataset("avss", root, split, img_size=32)
    with pytest.raises(ValueError, match=rf"Label {re.escape(str(label_path))}: .*class ids"):
        dataset[_clip_index(dataset, uid)]


def _uids(root, split: str) -> set[str]:
    import csv

    with (root / "metadata.csv").open(newline="") as handle:
        return {row["uid"] for row in csv.DictReader(handle) if row["split"] == split}


def test_a_colour_outside_the_palette_is_refused_naming_it(synth_copy):
    from PIL import Image

    root = synth_copy("avss")
    label_path = sorted(root.rglob("labels_rgb/0.png"))[0]
    with Image.open(label_path) as label:
        rgb = np.array(label.convert("RGB"))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(label_path)
    uid = label_path.parent.parent.name
    split = next(s for s in ("train", "val", "test") if uid in _uids(root, s))
    dataset = build_dataset("avss", root, split, img_size=32)
    with pytest.raises(ValueError, match=r"1 of \d+ pixels have colours outside .*\(1, 2, 3\)"):
        dataset[_clip_index(dataset, uid)]


def _edit_metadata(path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_an_unknown_split_name_is_refused_naming_the_line(synth_copy):
    root = synth_copy("ms3")
    metadata = root / "ms3_meta_data.csv"
    lines = metadata.read_text().splitlines()
    line = next(n for n, text in enumerate(lines) if text.endswith(",train"))
    lines[line] = lines[line].removesuffix("train") + "Train"
    metadata.write_text("\n".join(lines) + "\n")
    where = rf"{re.escape(str(metadata))}, line {line + 1}"
    with pytest.raises(ValueError, match=rf"{where}: .*'Train'"):
        build_dataset("ms3", root, "val", img_size=32)


def test_a_clip_listed_twice_is_refused_naming_both_lines(synth_copy):
    root = synth_copy("s4")
    metadata = root / "s4_meta_data.csv"
    _edit_metadata(metadata, lambda lines: [*lines, lines[3]])
    count = len(metadata.read_text().splitlines())
    with pytest.raises(ValueError, match=rf"line {count}: clip .* again \(first on line 4\)"):
        build_dataset("s4", root, "test", img_size=32)


def test_a_listed_clip_without_files_names_what_is_missing(synth_copy):
    import shutil

    root = synth_copy("ms3")
    dataset = build_dataset("ms3", root, "val", img_size=32)
    clip = dataset.clips[-1]
    shutil.rmtree(dataset.frame_paths(clip)[0].parent)
    shutil.rmtree(dataset.mask_paths(clip)[0].parent)
    for path in dataset.audio_paths(clip):
        path.unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError) as raised:
        dataset[len(dataset) - 1]
    message = str(raised.value)
    assert f"Clip {clip.name}, listed in {root / 'ms3_meta_data.csv'}" in message
    assert all(f"{kind}: 5 missing" in message for kind in ("frames", "masks"))
    assert "audio: 2 missing" in message and "delete its row" in message


def test_data_check_fails_on_a_grey_mask_naming_it(synth_copy, capsys):
    from PIL import Image

    from avsac_lit.data.check import main as check_main

    root = synth_copy("ms3")
    mask_path = sorted(root.rglob("gt_masks/test/**/*.png"))[0]
    with Image.open(mask_path) as mask:
        grey = np.array(mask.convert("L"))
    grey[0, :3] = (10, 20, 30)  # anti-aliased edges
    Image.fromarray(grey).save(mask_path)
    code = check_main(["--task", "ms3", "--root", str(root), "--img-size", "32", "--workers", "0"])
    output = capsys.readouterr().out.replace("\n", "")
    assert code == 2 and "Check failed" in output and mask_path.name in output
    assert "Every item matches" not in output


def _first_val_frame(root):
    """The first frame of the MS3 validation split, the dataset and its clip's index."""
    dataset = build_dataset("ms3", root, "val", img_size=32)
    index = 0
    return dataset.frame_paths(dataset.clips[index])[0], dataset, index


def test_a_16_bit_grey_frame_loads_at_its_true_brightness(synth_copy):
    from PIL import Image

    root = synth_copy("ms3")
    frame_path, dataset, index = _first_val_frame(root)
    with Image.open(frame_path) as frame:
        grey = np.asarray(frame.convert("L"))  # an RGB frame made 8-bit greyscale ...
    Image.fromarray(grey).save(frame_path)
    as_8_bit = dataset[index]["frames"][0]
    sixteen = grey.astype(np.uint16) * 257  # ... then 16-bit: 255 -> 65535
    for image in (
        Image.fromarray(sixteen),  # little-endian "I;16", as PIL reads 16-bit grey PNGs
        Image.frombytes("I;16B", sixteen.shape[::-1], sixteen.astype(">u2").tobytes()),
    ):
        image.save(frame_path)
        with Image.open(frame_path) as saved:
            assert saved.mode.startswith("I;16")
        assert torch.equal(dataset[index]["frames"][0], as_8_bit), image.mode
    # Mode "I" (32-bit integers, as older PIL reads 16-bit PNGs) holding the 16-bit values.
    Image.fromarray(sixteen.astype(np.int32)).save(frame_path, format="TIFF")
    with Image.open(frame_path) as saved:
        assert saved.mode == "I"
    assert torch.equal(dataset[index]["frames"][0], as_8_bit)


def test_a_frame_beyond_the_16_bit_range_is_refused_naming_it(tmp_path):
    from PIL import Image

    from avsac_lit.data.io import load_frame

    path = tmp_path / "frame.png"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(path, format="TIFF")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} .*70000.*0 to 65535"):
        load_frame(path, 8)


def test_16_bit_masks_are_read_as_binary_and_grey_ones_refused(synth_copy):
    from PIL import Image

    root = synth_copy("ms3")
    mask_path = sorted(root.rglob("gt_masks/val/**/*.png"))[0]
    dataset = build_dataset("ms3", root, "val", img_size=32)
    index = _clip_index(dataset, mask_path.parent.name)
    as_0_255 = dataset[index]["masks"]
    assert as_0_255.max() == 1
    with Image.open(mask_path) as mask:
        foreground = np.asarray(mask.convert("L")) > 0
    for value in (65535, 1, 255):  # 0/65535, 0/1 and 0/255 stored in 16 bits
        Image.fromarray(foreground.astype(np.uint16) * value).save(mask_path)
        assert torch.equal(dataset[index]["masks"], as_0_255), value
    grey = foreground.astype(np.uint16) * 65535
    grey[0, :2] = (1000, 30000)  # soft edges, which clipping to 8 bits would make 255
    Image.fromarray(grey).save(mask_path)
    with pytest.raises(ValueError, match=rf"Mask {re.escape(str(mask_path))} is not binary"):
        dataset[index]


def test_an_avss_label_saved_as_16_bit_class_ids_is_refused_naming_it(synth_copy):
    from PIL import Image

    from avsac_lit.data.io import voc_palette

    root = synth_copy("avss")
    label_path = sorted(root.rglob("labels_rgb/0.png"))[0]
    with Image.open(label_path) as label:
        rgb = np.asarray(label.convert("RGB"))
    class_ids = np.zeros(rgb.shape[:2], dtype=np.uint16)
    for index, colour in enumerate(voc_palette(71)):
        class_ids[(rgb == colour).all(axis=-1)] = index
    Image.fromarray(class_ids).save(label_path)  # scaled to 8 bits, every id would read as 0
    uid = label_path.parent.parent.name
    split = next(s for s in ("train", "val", "test") if uid in _uids(root, s))
    dataset = build_dataset("avss", root, split, img_size=32)
    with pytest.raises(ValueError, match=rf"Label {re.escape(str(label_path))}: .*class ids"):
        dataset[_clip_index(dataset, uid)]


@pytest.mark.parametrize("content", ["no bytes", "a header and no samples"])
def test_an_empty_wav_is_refused_naming_it_and_the_fix(synth_copy, content):
    import soundfile

    root = synth_copy("avss")  # AVSS reads its audio from the wavs
    wav_path = sorted(root.rglob("audio.wav"))[0]
    if content == "no bytes":
        wav_path.write_bytes(b"")
    else:
        soundfile.write(wav_path, np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
        assert wav_path.stat().st_size > 0
    uid = wav_path.parent.name
    split = next(s for s in ("train", "val", "test") if uid in _uids(root, s))
    dataset = build_dataset("avss", root, split, img_size=32)
    with pytest.raises(ValueError) as raised:
        dataset[_clip_index(dataset, uid)]
    message = str(raised.value)
    assert f"Audio file {wav_path} " in message and "no audio samples" in message
    assert "0.975 s" in message and "ffmpeg" in message
