"""A dataset is data: names in its metadata never lead outside its root or the run directory,
its pickles never run code, and its wavs, masks and manifest are read at their true values or
refused with the file named (issue 38)."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from avsac_lit.data import build_dataset
from avsac_lit.data.io import load_log_mel_pickle, save_log_mel_pickle
from avsac_lit.safe_paths import inside
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
