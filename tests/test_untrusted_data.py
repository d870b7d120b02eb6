"""A dataset is data: names in its metadata never lead outside its root or the run directory,
its pickles never run code, and its wavs, masks and manifest are read at their true values or
refused with the file named (issue 38)."""

from __future__ import annotations

import builtins
import io
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from avsac_lit.data import AVSDataModule, build_dataset
from avsac_lit.data.audio import SAMPLE_RATE, read_wav, wav_to_examples
from avsac_lit.data.check import main as check_main
from avsac_lit.data.io import load_log_mel_pickle, save_log_mel_pickle
from avsac_lit.data.manifest import DamagedManifestError
from avsac_lit.data.synthetic import generate
from avsac_lit.data.synthetic import main as generate_main
from avsac_lit.storage.safe_paths import inside
from avsac_lit.train import train
from tests.helpers import tiny_run


def _replace_field(metadata: Path, line: int, column: int, value: str) -> str:
    """Set field ``column`` of ``line`` (1-based, as the messages count) of a metadata CSV;
    returns the value it held."""
    lines = metadata.read_text().splitlines()
    fields = lines[line - 1].split(",")
    before, fields[column] = fields[column], value
    lines[line - 1] = ",".join(fields)
    metadata.write_text("\n".join(lines) + "\n")
    return before


@pytest.mark.parametrize(
    ("task", "metadata", "column", "value"),
    [
        ("ms3", "ms3_meta_data.csv", 0, "../outside"),
        ("s4", "s4_meta_data.csv", 2, "/tmp/outside"),  # the category, a folder of the path
        ("avss", "metadata.csv", 6, "../v1s"),  # the label, a folder of the path
    ],
)
def test_a_metadata_name_leading_outside_the_root_is_refused_naming_the_row(
    synth_copy, task, metadata, column, value
):
    root = synth_copy(task)
    _replace_field(root / metadata, 3, column, value)
    header = (root / metadata).read_text().splitlines()[0].split(",")
    where = (
        rf"{re.escape(str(root / metadata))}, line 3: column {column + 1} \('{header[column]}'\)"
    )
    with pytest.raises(ValueError, match=rf"{where} holds '{re.escape(value)}'") as raised:
        build_dataset(task, root, "train", img_size=32)  # line 3 may be in any split
    assert "Correct the row, or delete it" in str(raised.value)


def test_a_clip_named_by_an_absolute_path_is_neither_read_nor_written_outside(synth_copy, tmp_path):
    # The validation clip renamed to an absolute path, with its files copied where that path
    # leads: 0.7.1 read them and wrote the clip's overlay there, outside the run directory.
    root = synth_copy("ms3")
    outside = tmp_path / "outside"
    outside.mkdir()
    metadata = root / "ms3_meta_data.csv"
    line = next(n for n, text in enumerate(metadata.read_text().splitlines(), 1) if "val" in text)
    escaped = outside / "clip"
    name = _replace_field(metadata, line, 0, str(escaped))
    data = root / "ms3_data"
    for k in range(1, 6):
        shutil.copy(data / "visual_frames" / name / f"{name}.mp4_{k}.png", f"{escaped}.mp4_{k}.png")
        shutil.copy(data / "gt_masks" / "val" / name / f"{name}_{k}.png", f"{escaped}_{k}.png")
    shutil.copy(data / "audio_log_mel" / "val" / f"{name}.pkl", f"{escaped}.pkl")
    before = sorted(outside.iterdir())
    cfg = tiny_run("ms3", root, tmp_path / "run", ["trainer.max_epochs=1",
                   "trainer.limit_train_batches=1", "test_audio=[matched]"])  # fmt: skip
    where = rf"line {line}: column 1 \('name'\) holds '{re.escape(str(escaped))}'"
    with pytest.raises(ValueError, match=where):
        train(cfg)
    assert sorted(outside.iterdir()) == before  # no overlay (clip.png) nor anything else
    assert not (tmp_path / "run" / "overlays").exists()


def test_files_from_data_are_written_only_inside_their_directory(tmp_path):
    assert inside(tmp_path, "synth00001.png") == tmp_path / "synth00001.png"
    for name in ("../outside.png", "/tmp/outside.png", "..", "a\\b.png", ""):
        with pytest.raises(ValueError, match=rf"Refusing to use {re.escape(repr(name))} as a file"):
            inside(tmp_path, name)


def _published_pickle(path: Path, tensor) -> None:
    # As AVSBench's preprocessing wrote audio_log_mel/*.pkl (preprocess_s4.py,
    # extract_one_log_mel): pickle.dump of the torch tensor vggish_input.wavfile_to_examples made.
    with open(path, "wb") as fw:
        pickle.dump(tensor, fw)


def test_log_mel_pickles_of_tensors_and_arrays_load_to_the_same_values(tmp_path):
    examples = torch.randn(5, 1, 96, 64)
    _published_pickle(tmp_path / "published.pkl", examples)
    save_log_mel_pickle(tmp_path / "ours.pkl", examples)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / f"array_{protocol}.pkl").write_bytes(
            pickle.dumps(examples.numpy(), protocol=protocol)
        )
    # NumPy 1 names its reconstructor numpy.core.multiarray (protocol 2 names it in plain text).
    numpy_1 = pickle.dumps(examples.numpy(), protocol=2).replace(b"numpy._core.", b"numpy.core.")
    (tmp_path / "array_numpy_1.pkl").write_bytes(numpy_1)
    for path in sorted(tmp_path.glob("*.pkl")):
        assert torch.equal(load_log_mel_pickle(path, (5, 1, 96, 64)), examples), path.name


class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Exec(_Shell):
    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


class _InStorage(_Shell):
    """A payload inside a tensor's storage bytes, which torch reads with weights_only=False."""

    def __reduce__(self):
        inner = io.BytesIO()
        torch.save(_Shell(self.marker), inner, _use_new_zipfile_serialization=False)
        return torch.storage._load_from_bytes, (inner.getvalue(),)


@pytest.mark.parametrize("payload", [_Shell, _Exec, _InStorage])
def test_a_log_mel_pickle_that_would_run_code_is_refused_naming_it(tmp_path, payload):
    path, marker = tmp_path / "clip.pkl", tmp_path / "marker"
    path.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(ValueError) as raised:
        load_log_mel_pickle(path, (5, 1, 96, 64))
    assert not marker.exists()
    message = str(raised.value)
    assert f"Log-mel pickle {path} is refused" in message and "nothing in it ran" in message
    assert "Delete it to have the log-mel computed from the clip's wav" in message


# Case 7: every sample format at its true level. A tone (with harmonics and a silent gap) on the
# 8-bit grid, k / 128: each subtype below holds these values exactly, and libsndfile scales each
# by a power of two, so the quantisation allows no difference at all: the log-mels must be
# identical to the 16-bit file's, bit for bit; any difference is a reading error.
SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")


def _grid_tone(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.45 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1320 * t)
    tone[SAMPLE_RATE // 2 : SAMPLE_RATE] = 0.0
    return np.round(tone * 128).astype(np.int64)  # |k| <= 59


def _write_subtype(path: Path, k: np.ndarray, subtype: str) -> None:
    # Integers for the PCM subtypes (libsndfile keeps their top bits), floats for the float ones.
    data = {
        "PCM_U8": (k * 256).astype(np.int16),
        "PCM_16": (k * 256).astype(np.int16),
        "PCM_24": (k * 2**24).astype(np.int32),
        "PCM_32": (k * 2**24).astype(np.int32),
        "FLOAT": (k / 128).astype(np.float32),
        "DOUBLE": k / 128,
    }[subtype]
    soundfile.write(path, data, SAMPLE_RATE, subtype=subtype, format="WAV")
    assert soundfile.info(path).subtype == subtype


def test_every_wav_sample_format_reads_at_its_true_level(tmp_path):
    k = _grid_tone()
    _write_subtype(tmp_path / "PCM_16.wav", k, "PCM_16")
    reference = wav_to_examples(tmp_path / "PCM_16.wav")
    assert reference.std() > 1  # a tone, not the constant log-mel of silence
    for subtype in SUBTYPES:
        path = tmp_path / f"{subtype}.wav"
        _write_subtype(path, k, subtype)
        samples, rate = read_wav(path)
        assert rate == SAMPLE_RATE and np.array_equal(samples, k / 128), subtype
        assert torch.equal(wav_to_examples(path), reference), subtype


def test_float_samples_beyond_full_scale_are_kept_with_a_warning(tmp_path, caplog):
    path = tmp_path / "hot.wav"
    loud = 3 * _grid_tone() / 128  # peak 177 / 128
    soundfile.write(path, loud.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="avsac_lit.data.audio"):
        samples, _ = read_wav(path)
    assert np.array_equal(samples, loud.astype(np.float32))  # not clipped
    assert f"Audio file {path} holds FLOAT samples up to 1.38 times full scale" in caplog.text
    assert "(+2.8 dB)" in caplog.text and f"ffmpeg -i {path} -af volume=-2.8dB" in caplog.text
    loud[100] = np.nan
    soundfile.write(path, loud.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(ValueError, match=rf"Audio file {re.escape(str(path))} holds 1 NaN"):
        read_wav(path)


def _table_row(output: str, split: str) -> list[str]:
    row = next(line for line in output.splitlines() if line.startswith(f"│ {split:>5} │"))
    return [cell.strip() for cell in row.strip("│").split("│")]


def test_data_check_reads_a_float_wav_as_sound_and_names_silent_clips(
    synth_copy, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "2000")  # rich's console: one line a message
    root = synth_copy("avss")
    dataset = build_dataset("avss", root, "train", img_size=32)
    as_float, silent = dataset.clips[0], dataset.clips[1]
    as_int16 = dataset[0]["audio"]
    wav = dataset.audio_paths(as_float)[1]
    samples, rate = soundfile.read(wav, dtype="float32")  # the int16 samples, scaled
    soundfile.write(wav, samples, rate, subtype="FLOAT")
    soundfile.write(dataset.audio_paths(silent)[1], np.zeros_like(samples), rate, subtype="PCM_16")
    code = check_main(["--task", "avss", "--root", str(root), "--splits", "train",
                       "--img-size", "32", "--workers", "0"])  # fmt: skip
    output = capsys.readouterr().out
    assert code == 0 and _table_row(output, "train")[5] == "1"  # the silent clip alone
    note = (
        f"1 clip(s) have digital silence as audio (every log-mel value log(0.01)): {silent.name}."
    )
    assert note in output
    assert torch.equal(dataset[0]["audio"], as_int16)


# Case 9: masks and labels with transparency.
def _val_mask(root: Path) -> tuple[Path, np.ndarray]:
    """The first MS3 validation mask that has an object, and its object [H, W] bool."""
    for path in sorted(root.rglob("gt_masks/val/**/*.png")):
        with Image.open(path) as mask:
            foreground = np.asarray(mask.convert("L")) > 0
        if foreground.any():
            return path, foreground
    raise AssertionError("no validation mask with an object")


def _rgba(colour: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([colour, colour, colour, alpha]).astype(np.uint8), "RGBA")


def _object_in_alpha(foreground: np.ndarray, mode: str) -> Image.Image:
    """The object drawn in the alpha over a uniform colour, as some editors export a mask."""
    alpha = np.where(foreground, 255, 0).astype(np.uint8)
    if mode == "RGBA":  # white everywhere: its colour says all foreground
        return _rgba(np.full_like(alpha, 255), alpha)
    if mode == "LA":  # black everywhere: its colour says no object
        return Image.fromarray(np.dstack([np.zeros_like(alpha), alpha]), "LA")
    # P: two white palette entries, the first transparent.
    image = Image.fromarray(foreground.astype(np.uint8), "P")
    image.putpalette([255, 255, 255, 255, 255, 255])
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_mask_whose_object_is_in_its_alpha_is_refused_naming_it(synth_copy, mode):
    root = synth_copy("ms3")
    mask_path, foreground = _val_mask(root)
    dataset = build_dataset("ms3", root, "val", img_size=32)
    index = next(i for i, c in enumerate(dataset.clips) if c.name == mask_path.parent.name)
    _object_in_alpha(foreground, mode).save(mask_path, transparency=0 if mode == "P" else None)
    with Image.open(mask_path) as saved:
        assert saved.mode == mode
    with pytest.raises(ValueError) as raised:
        dataset[index]
    message = str(raised.value)
    assert f"Mask {mask_path} has transparency ({mode} with " in message
    assert "not clear whether the colour or the alpha holds the objects" in message
    assert "Flatten it into an opaque greyscale 0/255 mask" in message


def test_masks_whose_alpha_agrees_with_their_colour_read_as_the_opaque_mask(synth_copy):
    root = synth_copy("ms3")
    mask_path, foreground = _val_mask(root)
    dataset = build_dataset("ms3", root, "val", img_size=32)
    index = next(i for i, c in enumerate(dataset.clips) if c.name == mask_path.parent.name)
    opaque = dataset[index]["masks"]
    colour = np.where(foreground, 255, 0).astype(np.uint8)
    for alpha in (np.full_like(colour, 255), colour):  # fully opaque; a cut-out over nothing
        _rgba(colour, alpha).save(mask_path)
        assert torch.equal(dataset[index]["masks"], opaque)


def test_data_check_fails_on_a_mask_with_its_object_in_the_alpha_naming_it(
    synth_copy, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "2000")  # rich's console: one line a message
    root = synth_copy("ms3")
    mask_path, foreground = _val_mask(root)
    _object_in_alpha(foreground, "RGBA").save(mask_path)
    code = check_main(["--task", "ms3", "--root", str(root), "--splits", "val",
                       "--img-size", "32", "--workers", "0"])  # fmt: skip
    output = capsys.readouterr().out
    assert code == 2 and f"Check failed: Mask {mask_path} has transparency" in output
    assert "Every item matches" not in output


def test_an_avss_label_with_transparency_is_read_only_where_its_alpha_agrees(synth_copy):
    root = synth_copy("avss")
    dataset = build_dataset("avss", root, "train", img_size=32)
    index = next(i for i in range(len(dataset)) if dataset[i]["masks"][0].any())
    opaque, label_path = dataset[index]["masks"], dataset.mask_paths(dataset.clips[index])[0]
    with Image.open(label_path) as label:
        rgb = np.asarray(label.convert("RGB"))
    cut_out = np.where(rgb.any(axis=-1), 255, 0).astype(np.uint8)  # background transparent
    Image.fromarray(np.dstack([rgb, cut_out])).save(label_path)
    assert torch.equal(dataset[index]["masks"], opaque)
    Image.fromarray(np.dstack([rgb, 255 - cut_out])).save(label_path)  # the classes transparent
    with pytest.raises(ValueError, match=rf"Label {re.escape(str(label_path))} has transparency"):
        dataset[index]


# Case 16d: a damaged manifest is named as damaged, not taken for a missing one.
def test_a_truncated_manifest_is_named_damaged_by_every_reader(synth_copy, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # rich's console: one line a message
    root = synth_copy("ms3")
    manifest = root / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])  # a copy cut short
    damaged = f"{manifest} is damaged: not valid JSON"
    before = sorted(root.rglob("*"))
    with pytest.raises(SystemExit):  # the generator, asked to write over it
        generate_main(["--task", "ms3", "--out", str(root), "--videos", "3"])
    error = " ".join(capsys.readouterr().err.split())
    assert damaged in error and "not a missing manifest" in error
    assert f"delete the tree (rm -r {root})" in error and "generate into a new directory" in error
    assert sorted(root.rglob("*")) == before and manifest.stat().st_size == 100
    module = AVSDataModule(task="ms3", root=root, synthetic={"videos": 8, "seed": 7, "size": 64})
    with pytest.raises(DamagedManifestError, match=re.escape(damaged)):
        module.check_root()
    code = check_main(["--task", "ms3", "--root", str(root), "--splits", "val",
                       "--img-size", "32", "--workers", "0"])  # fmt: skip
    assert code == 2 and f"Check failed: {damaged}" in capsys.readouterr().out


# Case 16e: the generator's settings have bounds, and the disk is checked before writing.
def test_generator_sizes_beyond_its_range_are_refused_naming_both_settings(tmp_path, monkeypatch):
    out = tmp_path / "tree"
    with pytest.raises(ValueError) as raised:
        generate("ms3", out, videos=3, size=1025)
    message = " ".join(str(raised.value).split())
    assert "--size (python -m avsac_lit.data.synthetic) and data.synthetic.size" in message
    assert "must be 32 to 1024 px, got 1025: at 1025 px the generator would need about" in message
    assert "of memory" in message and "of disk (3 clips)" in message
    with pytest.raises(ValueError, match=r"data\.synthetic\.videos .* must be 3 to 100000 clips"):
        generate("ms3", out, videos=100_001, size=32)
    module = AVSDataModule(task="s4", root=out, synthetic={"videos": 300, "seed": 0, "size": 5000})
    with pytest.raises(ValueError, match=r"data\.synthetic\.size .* got 5000: .* 76\.9 GB of disk"):
        module.check_root()  # before a run builds its model
    # A disk with 1 MB free: a 300-clip tree at 224 px takes about 230 MB.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=2**20))
    with pytest.raises(ValueError, match=r"Not enough disk for SynthAVS-MS3 .* about 2\d\d\.\d MB"):
        generate("ms3", out, videos=300, size=224)
    assert not out.exists()
