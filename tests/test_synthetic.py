"""SynthAVS: the published layouts, determinism, and a task that needs the audio."""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from avsac_lit.data import synthetic
from avsac_lit.data.audio import waveform_to_examples
from avsac_lit.data.scenes import CATEGORIES, SHAPES, make_clip
from avsac_lit.data.synthetic import generate, main

SIZE = 64


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        if path.suffix == ".pkl":
            # torch's pickling embeds a random serialisation id; compare the tensor instead.
            with path.open("rb") as handle:
                digest.update(pickle.load(handle).numpy().tobytes())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_categories_differ_in_look_and_sound():
    assert len(CATEGORIES) >= 8
    assert len({c.shape for c in CATEGORIES}) == len(CATEGORIES)
    assert len({c.color for c in CATEGORIES}) == len(CATEGORIES)
    pitches = sorted(c.pitch_hz for c in CATEGORIES)
    # Neighbouring pitches at least three semitones apart, so the +-2% jitter never confuses them.
    assert all(high / low > 2 ** (3 / 12) for low, high in itertools.pairwise(pitches))
    assert set(SHAPES) == {c.shape for c in CATEGORIES}


@pytest.mark.parametrize("task", ["s4", "ms3"])
def test_scene_rules(task):
    clips = [make_clip(3, task, i, "train", SIZE) for i in range(120)]
    frames = silent_visible = empty = 0
    for clip in clips:
        assert 2 <= len(clip.visible) <= 4 and len(set(clip.visible)) == len(clip.visible)
        for k in range(clip.num_frames):
            shown = set(np.unique(clip.owner[k])) - {-1}
            assert shown <= set(clip.visible)
            sounding = clip.sounding_visible(k)
            frames += 1
            empty += not sounding
            silent_visible += bool(set(clip.visible) - set(sounding))
            if task == "s4":
                assert sounding in ([], [clip.visible[0]])
            elif sounding:
                assert 1 <= len(sounding) <= 3
    assert silent_visible / frames > 0.9
    assert 0.05 < empty / frames < 0.16
    if task == "ms3":
        changes = [clip.sounding[k] != clip.sounding[k - 1] for clip in clips for k in range(1, 5)]
        assert np.mean(changes) > 0.7


def test_avss_clip_kinds():
    v2 = make_clip(3, "avss", 0, "val", SIZE, "v2")
    v1s = make_clip(3, "avss", 1, "val", SIZE, "v1s")
    assert v2.num_frames == 10 and v2.audio.shape == (10 * 16000,)
    assert v1s.num_frames == 5 and v1s.frames.shape[1:] == (SIZE, round(SIZE * 4 / 3), 3)
    ids = v2.class_ids(0, sounding_only=True)
    assert set(np.unique(ids)) <= {0} | {c + 1 for c in v2.sounding_visible(0)}


def test_audio_alone_identifies_the_sounding_category():
    """The task is solvable by listening: a nearest-template classifier on the time-averaged
    log-mel spectrum of each second names the S4 clip's category."""

    def spectrum(clip, k):
        return waveform_to_examples(clip.audio, 16000)[k, 0].mean(dim=0).numpy()

    clips = [make_clip(5, "s4", i, "train", 32) for i in range(160)]
    pairs = [
        (spectrum(clip, k), clip.sounding[k][0])
        for clip in clips
        for k in range(5)
        if clip.sounding_visible(k)
    ]
    half = len(pairs) // 2
    templates = {}
    for features, category in pairs[:half]:
        templates.setdefault(category, []).append(features)
    centroids = {c: np.mean(v, axis=0) for c, v in templates.items()}
    correct = [
        min(centroids, key=lambda c: np.linalg.norm(features - centroids[c])) == category
        for features, category in pairs[half:]
    ]
    assert np.mean(correct) > 0.95


def test_vision_alone_cannot_solve_it(synth_trees):
    for task in ("s4", "ms3", "avss"):
        manifest = json.loads((synth_trees[task] / "manifest.json").read_text())
        for split, stats in manifest["splits"].items():
            scores = stats["reference_scores"]
            if task == "avss":
                # Classes absent from a small split score 0 under the protocol, even for the truth.
                assert scores["vision_only"]["miou"] < scores["ground_truth"]["miou"], split
                continue
            assert scores["ground_truth"]["miou"] == pytest.approx(1.0, abs=1e-6), (task, split)
            assert scores["vision_only"]["miou"] < scores["ground_truth"]["miou"] - 0.1, (
                task,
                split,
            )


def test_manifest_records_settings_and_splits(synth_trees):
    manifest = json.loads((synth_trees["ms3"] / "manifest.json").read_text())
    assert manifest["task"] == "ms3"
    assert manifest["settings"] == {"videos": 8, "seed": 7, "size": SIZE}
    assert [c["name"] for c in manifest["categories"]] == [c.name for c in CATEGORIES]
    assert sum(s["clips"] for s in manifest["splits"].values()) == 8
    assert set(manifest["splits"]) == {"train", "val", "test"}


@pytest.mark.parametrize("task", ["s4", "ms3", "avss"])
def test_published_layout_files(synth_trees, task):
    root = synth_trees[task]
    expected = {
        "s4": [
            "s4_meta_data.csv",
            "s4_data/visual_frames",
            "s4_data/audio_log_mel",
            "s4_data/audio_wav",
            "s4_data/gt_masks",
        ],
        "ms3": [
            "ms3_meta_data.csv",
            "ms3_data/visual_frames",
            "ms3_data/audio_log_mel",
            "ms3_data/audio_wav",
            "ms3_data/gt_masks",
        ],
        "avss": ["metadata.csv", "label2idx.json"],
    }[task]
    for relative in expected:
        assert (root / relative).exists(), relative
    if task == "s4":
        train_masks = list((root / "s4_data/gt_masks/train").rglob("*.png"))
        assert train_masks and all(p.name.endswith("_1.png") for p in train_masks)
    if task == "ms3":
        assert list((root / "ms3_data/visual_frames").glob("*/*.mp4_1.png"))
    if task == "avss":
        assert list(root.glob("v*/*/frames/0.jpg")) and list(root.glob("v*/*/audio.wav"))
        assert not list(root.rglob("*.pkl"))


def test_deterministic_for_a_seed(tmp_path):
    generate("ms3", tmp_path / "a", videos=4, seed=11, size=32)
    generate("ms3", tmp_path / "b", videos=4, seed=11, size=32)
    generate("ms3", tmp_path / "c", videos=4, seed=12, size=32)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_worker_processes_and_threads_write_the_same_tree_as_one_thread(tmp_path, monkeypatch):
    # AVSS: the task with the most paths (4:3 frames, 10-frame v2 clips, v1s training clips
    # with one label, class-id references).
    monkeypatch.setattr(synthetic, "write_threads", lambda: 2)
    threaded = generate("avss", tmp_path / "threaded", videos=9, seed=5, size=32, workers=1)
    pooled = generate("avss", tmp_path / "pooled", videos=9, seed=5, size=32, workers=2)
    monkeypatch.setattr(synthetic, "write_threads", lambda: 1)
    serial = generate("avss", tmp_path / "serial", videos=9, seed=5, size=32, workers=1)
    for other in ("threaded", "pooled"):
        assert _tree_digest(tmp_path / "serial") == _tree_digest(tmp_path / other)
    assert serial["splits"] == pooled["splits"] == threaded["splits"]  # reference scores too


def test_cli_writes_tree_and_refuses_bad_arguments(tmp_path, capsys):
    main(["--task", "s4", "--out", str(tmp_path / "s4"), "--videos", "3", "--size", "32"])
    manifest = json.loads((tmp_path / "s4" / "manifest.json").read_text())
    printed = capsys.readouterr().out
    for stats in manifest["splits"].values():
        assert f"{stats['reference_scores']['vision_only']['miou']:.3f}" in printed
    with pytest.raises(SystemExit):
        main(["--task", "s4", "--out", str(tmp_path / "x"), "--videos", "2"])
    assert "--videos (python -m avsac_lit.data.synthetic) and data.synthetic.videos" in " ".join(
        capsys.readouterr().err.split()
    )
