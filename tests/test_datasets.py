"""The AVSBench loaders read generated S4, MS3 and AVSS trees into the documented item format."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from avsac_lit.data import AVSDataModule, DatasetLayoutError, build_dataset, check, precompute_audio
from avsac_lit.data import logmel as logmel_module
from avsac_lit.data.io import IMAGENET_MEAN, IMAGENET_STD, rgb_to_class_ids, voc_palette
from avsac_lit.data.metadata import LAYOUTS
from avsac_lit.data.scenes import make_clip

from .conftest import TINY_SIZE

IMG = 48  # read at a size different from the generated one, so that resizing is exercised


def _regenerate(task: str, dataset, index: int, label: str = ""):
    """The in-memory clip the generator wrote for item ``index`` (seed 7, as in conftest)."""
    clip_index = int(dataset.clips[index].name.removeprefix("synth"))
    return make_clip(7, task, clip_index, dataset.split, TINY_SIZE, label)


@pytest.mark.parametrize("task", ["s4", "ms3"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_object_tasks_item_format(synth_trees, task, split):
    dataset = build_dataset(task, synth_trees[task], split, img_size=IMG)
    item = dataset[0]
    assert item["frames"].shape == (5, 3, IMG, IMG) and item["frames"].dtype == torch.float32
    assert item["audio"].shape == (5, 1, 96, 64) and item["audio"].dtype == torch.float32
    assert item["masks"].shape == (5, IMG, IMG) and item["masks"].dtype == torch.float32
    assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}
    assert item["frame_valid"].all()
    assert isinstance(item["name"], str) and item["name"].startswith("synth")
    expected_valid = [True] + [split != "train" or task == "ms3"] * 4
    assert item["mask_valid"].tolist() == expected_valid
    assert not item["masks"][~item["mask_valid"]].any()


@pytest.mark.parametrize("task", ["s4", "ms3"])
def test_object_masks_are_the_generated_sounding_objects(synth_trees, task):
    # Read at the generated size, the loader must give back exactly what the generator drew.
    dataset = build_dataset(task, synth_trees[task], "val", img_size=TINY_SIZE)
    for index in range(len(dataset)):
        item, clip = dataset[index], _regenerate(task, dataset, index)
        for k in range(5):
            expected = clip.class_ids(k, sounding_only=True) > 0
            assert torch.equal(item["masks"][k].bool(), torch.from_numpy(expected))


def test_frames_are_imagenet_normalised(synth_trees):
    dataset = build_dataset("ms3", synth_trees["ms3"], "test", img_size=TINY_SIZE)
    item, clip = dataset[0], _regenerate("ms3", dataset, 0)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    pixels = (item["frames"][2] * std + mean) * 255
    assert torch.allclose(
        pixels, torch.from_numpy(clip.frames[2]).permute(2, 0, 1).float(), atol=1e-3
    )


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_avss_item_format(synth_trees, split):
    dataset = build_dataset("avss", synth_trees["avss"], split, img_size=IMG)
    assert dataset.num_classes == 11 and dataset.class_names[0] == "background"
    for index in range(len(dataset)):
        item, clip = dataset[index], dataset.clips[index]
        assert item["frames"].shape == (10, 3, IMG, IMG)
        assert item["audio"].shape == (10, 1, 96, 64)
        assert item["masks"].shape == (10, IMG, IMG) and item["masks"].dtype == torch.long
        assert item["masks"].min() >= 0 and item["masks"].max() < 11
        frames = 10 if clip.label == "v2" else 5
        assert item["frame_valid"].tolist() == [True] * frames + [False] * (10 - frames)
        annotated = 1 if (clip.label == "v1s" and split == "train") else frames
        assert item["mask_valid"].tolist() == [True] * annotated + [False] * (10 - annotated)
        # Padding: zero frames (the mean colour after normalisation) and zero log-mel examples.
        assert not item["frames"][frames:].any()
        assert not item["audio"][frames:].any()
        assert item["audio"][:frames].abs().sum(dim=(1, 2, 3)).gt(0).all()


def test_avss_labels_decode_to_the_generated_classes(synth_trees):
    dataset = build_dataset("avss", synth_trees["avss"], "test", img_size=TINY_SIZE)
    item = dataset[0]
    clip = _regenerate("avss", dataset, 0, dataset.clips[0].label)
    # Val/test frames are resized without cropping, so read at the generated height the labels
    # are a nearest-neighbour horizontal squeeze of the generated ones.
    expected = clip.class_ids(0, sounding_only=True)
    columns = np.floor((np.arange(TINY_SIZE) + 0.5) * expected.shape[1] / TINY_SIZE).astype(int)
    assert torch.equal(item["masks"][0], torch.from_numpy(expected[:, columns]))


def test_avss_train_is_centre_cropped(synth_trees):
    # The generated AVSS frames are 4:3; a train crop keeps the full height and the middle columns.
    dataset = build_dataset("avss", synth_trees["avss"], "train", img_size=TINY_SIZE)
    clip = _regenerate("avss", dataset, 0, dataset.clips[0].label)
    width = clip.frames.shape[2]
    left = round((width - TINY_SIZE) / 2)
    expected = clip.class_ids(0, sounding_only=True)[:, left : left + TINY_SIZE]
    assert torch.equal(dataset[0]["masks"][0], torch.from_numpy(expected))


def test_palette_and_decoding_follow_pascal_voc():
    palette = voc_palette(71)
    assert palette[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert len({tuple(c) for c in palette}) == 71
    rgb = np.array([[[128, 0, 0], [0, 0, 128]], [[1, 2, 3], [0, 0, 0]]], dtype=np.uint8)
    # An unknown colour decodes to background, as in the reference decoder, and is flagged.
    class_ids, in_palette = rgb_to_class_ids(rgb, palette)
    assert class_ids.tolist() == [[1, 4], [0, 0]]
    assert in_palette.tolist() == [[True, True], [False, True]]


def test_wav_fallback_equals_the_published_pickle(synth_copy, tmp_path):
    root = synth_copy("s4")
    dataset = build_dataset("s4", root, "val", img_size=IMG, cache_dir=tmp_path / "cache")
    with_pickle = dataset[0]["audio"]
    pickle_path, _ = dataset.audio_paths(dataset.clips[0])
    pickle_path.unlink()
    assert torch.allclose(dataset[0]["audio"], with_pickle, atol=1e-6)


def test_log_mel_cache_computes_once_and_notices_a_new_wav(synth_copy, tmp_path, monkeypatch):
    root = synth_copy("avss")
    calls = []
    real = logmel_module.wav_to_examples
    monkeypatch.setattr(logmel_module, "wav_to_examples", lambda p: calls.append(p) or real(p))
    dataset = build_dataset("avss", root, "val", img_size=IMG, cache_dir=tmp_path / "cache")
    first = dataset[0]["audio"]
    dataset[0]
    assert len(calls) == 1
    _, wav = dataset.audio_paths(dataset.clips[0])
    wav.write_bytes(wav.read_bytes())  # same content, new modification time
    assert torch.equal(dataset[0]["audio"], first) and len(calls) == 2


def test_precompute_fills_the_cache_for_a_whole_split(synth_copy, tmp_path):
    root = synth_copy("avss")
    dataset = build_dataset("avss", root, "train", img_size=IMG, cache_dir=tmp_path / "c")
    assert dataset.precompute_audio() == len(dataset)
    assert len(list((tmp_path / "c").rglob("*.pt"))) == len(dataset)


# Bad input: each error names the file or setting and says what was expected.


@pytest.mark.parametrize("task", ["s4", "ms3", "avss"])
def test_missing_root_explains_layout_and_source(tmp_path, task):
    with pytest.raises(DatasetLayoutError) as error:
        build_dataset(task, tmp_path / "nowhere", "train")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert LAYOUTS[task].splitlines()[1].strip() in message
    assert "OpenNLPLab/AVSBench" in message and "avsac_lit.data.synthetic" in message


def test_root_may_be_the_parent_of_the_task_directory(synth_trees, tmp_path):
    (tmp_path / "Multi-sources").symlink_to(synth_trees["ms3"])
    assert len(build_dataset("ms3", tmp_path, "val")) > 0


def test_wrong_layout_names_the_first_missing_file(synth_copy):
    root = synth_copy("s4")
    import shutil

    shutil.rmtree(root / "s4_data" / "visual_frames")
    with pytest.raises(DatasetLayoutError, match=r"visual_frames/train/.*_1\.png is missing"):
        build_dataset("s4", root, "train")


def test_missing_frame_of_a_later_clip_is_named(synth_copy):
    root = synth_copy("ms3")
    dataset = build_dataset("ms3", root, "train", img_size=IMG)
    missing = dataset.frame_paths(dataset.clips[-1])[3]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        dataset[len(dataset) - 1]


def test_unreadable_mask_is_named(synth_copy):
    root = synth_copy("ms3")
    dataset = build_dataset("ms3", root, "val", img_size=IMG)
    broken = dataset.mask_paths(dataset.clips[0])[2]
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"Cannot read image {broken}"):
        dataset[0]


def test_pickle_of_wrong_shape_names_file_and_both_shapes(synth_copy):
    root = synth_copy("s4")
    dataset = build_dataset("s4", root, "test", img_size=IMG)
    pickle_path, _ = dataset.audio_paths(dataset.clips[0])
    with pickle_path.open("wb") as handle:
        pickle.dump(torch.zeros(4, 96, 64), handle)
    with pytest.raises(ValueError) as error:
        dataset[0]
    assert str(pickle_path) in str(error.value)
    assert "[4, 96, 64]" in str(error.value) and "[5, 1, 96, 64]" in str(error.value)


def test_unreadable_pickle_is_named(synth_copy):
    root = synth_copy("ms3")
    dataset = build_dataset("ms3", root, "val", img_size=IMG)
    pickle_path, _ = dataset.audio_paths(dataset.clips[0])
    pickle_path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=f"Cannot read log-mel pickle {pickle_path}"):
        dataset[0]


def test_missing_audio_names_both_candidates(synth_copy):
    root = synth_copy("ms3")
    dataset = build_dataset("ms3", root, "train", img_size=IMG)
    pickle_path, wav_path = dataset.audio_paths(dataset.clips[1])
    pickle_path.unlink()
    wav_path.unlink()
    with pytest.raises(FileNotFoundError) as raised:
        dataset[1]
    message = str(raised.value)
    assert f"Clip {dataset.clips[1].name}" in message and "audio: 2 missing" in message
    assert str(pickle_path) in message and "frames" not in message and "masks" not in message


@pytest.mark.parametrize(
    ("task", "split", "match"),
    [
        ("s5", "train", "Unknown task 's5'; expected one of s4, ms3, avss"),
        ("s4", "training", "Unknown split 'training'; expected one of train, val, test"),
    ],
)
def test_unknown_task_or_split_lists_choices(synth_trees, task, split, match):
    with pytest.raises(ValueError, match=match):
        build_dataset(task, synth_trees["s4"], split)


def test_metadata_without_split_column_is_refused(synth_copy):
    root = synth_copy("ms3")
    csv_path = root / "ms3_meta_data.csv"
    rows = list(csv.reader(csv_path.open()))
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["name", "subset"], *rows[1:]])
    with pytest.raises(ValueError, match=r"has no 'split' column \(its columns: name, subset\)"):
        build_dataset("ms3", root, "train")


def test_avss_label_map_must_start_with_background(synth_copy):
    root = synth_copy("avss")
    (root / "label2idx.json").write_text(json.dumps({"cat": 1, "background": 2}))
    with pytest.raises(ValueError, match="background = 1"):
        build_dataset("avss", root, "val")


def test_datamodule_generates_once_and_batches(tmp_path: Path):
    root = tmp_path / "synth"
    datamodule = AVSDataModule(
        task="ms3",
        root=root,
        img_size=IMG,
        train_batch_size=3,
        num_workers=0,
        cache_dir=tmp_path / "cache",
        synthetic={"videos": 6, "seed": 1, "size": TINY_SIZE},
    )
    datamodule.prepare_data()
    stamp = (root / "manifest.json").stat().st_mtime_ns
    datamodule.prepare_data()
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["frames"].shape == (3, 5, 3, IMG, IMG)
    assert batch["audio"].shape == (3, 5, 1, 96, 64)
    assert len(batch["name"]) == 3
    val_batch = next(iter(datamodule.val_dataloader()))
    assert val_batch["masks"].shape[0] == 1  # 6 clips: 4 train, 1 val, 1 test


def test_datamodule_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match=r"data\.eval_batch_size must be at least 1"):
        AVSDataModule(task="s4", root=tmp_path, eval_batch_size=0)
    with pytest.raises(ValueError, match="Unknown task 'ms4'"):
        AVSDataModule(task="ms4", root=tmp_path)


def test_check_cli_reads_every_split(synth_trees, capsys):
    assert check.main(["--task", "avss", "--root", str(synth_trees["avss"]), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "Every item matches the documented format" in printed
    assert "Reference predictors" in printed


def test_check_cli_reports_a_broken_tree(synth_copy, capsys):
    root = synth_copy("s4")
    dataset = build_dataset("s4", root, "test")
    broken = dataset.frame_paths(dataset.clips[-1])[4]
    broken.unlink()
    assert check.main(["--task", "s4", "--root", str(root), "--workers", "0"]) == 2
    assert str(broken) in capsys.readouterr().out.replace("\n", "")


def test_precompute_cli_fills_the_cache(synth_copy, tmp_path, capsys):
    root = synth_copy("avss")
    cache = tmp_path / "cli-cache"
    assert (
        precompute_audio.main(["--task", "avss", "--root", str(root), "--cache-dir", str(cache)])
        == 0
    )
    clips = sum(len(build_dataset("avss", root, split)) for split in ("train", "val", "test"))
    assert len(list(cache.rglob("*.pt"))) == clips
    assert f"Cache: {cache}" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["ms3", "avss"])
def test_items_kept_in_memory_are_the_loaded_ones_and_read_no_file_again(synth_copy, task):
    root = synth_copy(task)
    dataset = build_dataset(task, root, "train", img_size=IMG, in_memory=True)
    plain = build_dataset(task, root, "train", img_size=IMG)
    dataset[0]
    loaded = plain[0]
    clip = dataset.clips[0].name
    for path in [p for p in root.rglob("*") if p.is_file() and clip in str(p)]:
        path.unlink()  # the clip's frames, masks and audio
    kept = dataset[0]
    assert kept.keys() == loaded.keys()
    for key, value in loaded.items():
        assert torch.equal(kept[key], value) if torch.is_tensor(value) else kept[key] == value
    with pytest.raises(FileNotFoundError, match=clip):
        plain[0]  # without the option, the files are read each time
