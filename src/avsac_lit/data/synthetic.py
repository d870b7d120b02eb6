"""SynthAVS: synthetic AVSBench-format data that can only be solved by listening.

``python -m avsac_lit.data.synthetic --task {s4,ms3,avss} --out DIR [--videos N] [--seed S]``
writes a tree in exactly the published layout of the task (``docs/data.md``), which the ordinary
loaders then read. The task in words, and how a clip is drawn and heard, is in
:mod:`avsac_lit.data.scenes` (``docs/synthetic.md`` has the details); the settings, checked before
anything is written, in :mod:`avsac_lit.data.synthetic_settings`. Here the tree is made: the clips
planned (their splits, AVSS's v1s/v1m/v2 labels), drawn and written in the task's layout by worker
processes or threads (each clip a function of its index, so the tree is the same for any count),
the metadata CSV, and the manifest.

The manifest (``manifest.json``) records the settings, the categories and, per split, the scores of
two reference predictors under the protocol's metrics: "segment every visible object" (the best a
vision-only model can do without guessing) and the ground truth itself (the protocol's ceiling,
which is below 1 in F where a batch has no annotated object).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avsac_lit.data.audio import SAMPLE_RATE, wav_to_examples, write_wav
from avsac_lit.data.io import save_log_mel_pickle, voc_palette
from avsac_lit.data.manifest import GENERATOR, MANIFEST
from avsac_lit.data.metadata import METADATA_FILES, TASKS
from avsac_lit.data.scenes import CATEGORIES, SynthClip, make_clip
from avsac_lit.data.synthetic_settings import DEFAULT_VIDEOS, check_generation, default_workers
from avsac_lit.metrics import AVSSFScore, AVSSMeanIoU, ProtocolFScore, ProtocolJaccard
from avsac_lit.storage.atomic import atomic_path

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.15), ("test", 0.15))
# Logit magnitude for scoring hard 0/1 predictions: sigmoid(20) rounds to 1 in float32 (and so
# clears even the protocol's last F threshold of 1.0), sigmoid(-20) to ~2e-9.
HARD_LOGIT = 20.0


def _assign_splits(rng: np.random.Generator, videos: int) -> list[str]:
    """70/15/15 % of the clips at random, with at least one clip in every split."""
    held_out = {split: max(1, round(fraction * videos)) for split, fraction in SPLIT_FRACTIONS[1:]}
    counts = {"train": videos - sum(held_out.values()), **held_out}
    labels = [split for split, count in counts.items() for _ in range(count)]
    return [labels[i] for i in np.argsort(rng.permutation(videos))]


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fast zlib level: generation time is dominated by PNG encoding at the default level.
    Image.fromarray(array).save(path, compress_level=1)


def _audio_files(clip: SynthClip, wav: Path, pickle: Path | None) -> None:
    write_wav(wav, clip.audio, SAMPLE_RATE)
    if pickle is not None:
        # From the int16 wav as written, like AVSBench's preprocessing, so that a loader that
        # falls back to the wav gets the very same examples.
        save_log_mel_pickle(pickle, wav_to_examples(wav))


def _binary_masks(clip: SynthClip, paths: list[Path]) -> None:
    for k, path in enumerate(paths):
        _save_png(path, (clip.class_ids(k, sounding_only=True) > 0).astype(np.uint8) * 255)


def _write_s4(out: Path, clip: SynthClip) -> tuple[list[str], int]:
    category = CATEGORIES[clip.visible[0]].name
    data = out / "s4_data"
    sub = Path(clip.split) / category
    for k in range(clip.num_frames):
        _save_png(data / "visual_frames" / sub / clip.name / f"{clip.name}_{k + 1}.png",
                  clip.frames[k])  # fmt: skip
    annotated = 1 if clip.split == "train" else clip.num_frames
    masks = [
        data / "gt_masks" / sub / clip.name / f"{clip.name}_{k + 1}.png" for k in range(annotated)
    ]
    _binary_masks(clip, masks)
    _audio_files(
        clip,
        data / "audio_wav" / sub / f"{clip.name}.wav",
        data / "audio_log_mel" / sub / f"{clip.name}.pkl",
    )
    return [clip.name, "0", category, clip.split], annotated


def _write_ms3(out: Path, clip: SynthClip) -> tuple[list[str], int]:
    data = out / "ms3_data"
    for k in range(clip.num_frames):
        _save_png(
            data / "visual_frames" / clip.name / f"{clip.name}.mp4_{k + 1}.png", clip.frames[k]
        )
    folder = data / "gt_masks" / clip.split / clip.name
    _binary_masks(clip, [folder / f"{clip.name}_{k + 1}.png" for k in range(clip.num_frames)])
    _audio_files(
        clip,
        data / "audio_wav" / clip.split / f"{clip.name}.wav",
        data / "audio_log_mel" / clip.split / f"{clip.name}.pkl",
    )
    return [clip.name, clip.split], clip.num_frames


def _write_avss(out: Path, clip: SynthClip) -> tuple[list[str], int]:
    heard = sorted({c for second in clip.sounding for c in second if c in clip.visible})
    objects = "_".join(CATEGORIES[c].name for c in heard)
    folder = out / clip.label / clip.name
    palette = voc_palette(len(CATEGORIES) + 1)
    for k in range(clip.num_frames):
        path = folder / "frames" / f"{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(clip.frames[k]).save(path, quality=95)
    annotated = 1 if (clip.label == "v1s" and clip.split == "train") else clip.num_frames
    for k in range(annotated):
        _save_png(
            folder / "labels_rgb" / f"{k}.png", palette[clip.class_ids(k, sounding_only=True)]
        )
    _audio_files(clip, folder / "audio.wav", None)
    return [clip.name, clip.name, "0", "0", objects, clip.split, clip.label], annotated


def _scored_frames(task: str, clip: SynthClip, annotated: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, what a vision-only predictor sees) of the frames the protocol scores, as
    class ids (S4/MS3: 0/1)."""
    if task != "avss":
        target = [clip.class_ids(k, sounding_only=True) > 0 for k in range(annotated)]
        seen = [clip.class_ids(k, sounding_only=False) > 0 for k in range(annotated)]
        return np.stack(target).astype(np.uint8), np.stack(seen).astype(np.uint8)
    # The protocol scores all 10 frames of a clip, padding included (see docs/metrics.md).
    height, width = clip.frames.shape[1:3]
    target = np.zeros((10, height, width), dtype=np.uint8)
    seen = np.zeros_like(target)
    for k in range(annotated):
        target[k] = clip.class_ids(k, sounding_only=True)
    for k in range(clip.num_frames):
        seen[k] = clip.class_ids(k, sounding_only=False)
    if annotated < clip.num_frames:
        # Frames without a label are not scored by the reference either; drop them here.
        keep = np.arange(10) < annotated
        keep[clip.num_frames :] = True
        target, seen = target[keep], seen[keep]
    return target, seen


@dataclass
class _WrittenClip:
    """What the parent needs of a clip written by a worker: its metadata row and statistics,
    and the frames the reference predictors are scored on."""

    row: list[str]
    split: str
    frames: int
    empty_gt_frames: int
    target: np.ndarray
    seen: np.ndarray


def _make_and_write(
    task: str, out: Path, seed: int, size: int, planned: tuple[int, str, str]
) -> _WrittenClip:
    index, split, label = planned
    clip = make_clip(seed, task, index, split, size, label)
    row, annotated = {"s4": _write_s4, "ms3": _write_ms3, "avss": _write_avss}[task](out, clip)
    target, seen = _scored_frames(task, clip, annotated)
    empty = sum(not clip.sounding_visible(k) for k in range(clip.num_frames))
    return _WrittenClip(row, split, clip.num_frames, empty, target, seen)


class _ReferenceScores:
    """The reference predictors' scores, per protocol batch of 2 clips in metadata order."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.scorers: dict[str, dict[str, list]] = {}

    def _scorer(self, split: str) -> dict[str, list]:
        if split not in self.scorers:
            self.scorers[split] = {"pending": [], "vision_only": [], "ground_truth": []}
            # These scores are this process's alone: a run that generates its data inside a
            # distributed job (prepare_data on one rank) would otherwise wait for the others.
            local = {"sync_on_compute": False}
            if self.task == "avss":
                classes = len(CATEGORIES) + 1
                metrics = {
                    name: [
                        AVSSMeanIoU(num_classes=classes, **local),
                        AVSSFScore(num_classes=classes, **local),
                    ]
                    for name in ("vision_only", "ground_truth")
                }
            else:
                metrics = {
                    name: [ProtocolJaccard(**local), ProtocolFScore(**local)]
                    for name in ("vision_only", "ground_truth")
                }
            self.scorers[split].update(metrics)
        return self.scorers[split]

    def add(self, clip: _WrittenClip) -> None:
        scorer = self._scorer(clip.split)
        scorer["pending"].append(
            (clip.target, {"vision_only": clip.seen, "ground_truth": clip.target})
        )
        if len(scorer["pending"]) == 2:
            self._flush(clip.split)

    def _flush(self, split: str) -> None:
        scorer = self.scorers[split]
        if not scorer["pending"]:
            return
        target = torch.from_numpy(np.concatenate([t for t, _ in scorer["pending"]]))
        for name in ("vision_only", "ground_truth"):
            prediction = torch.from_numpy(np.concatenate([p[name] for _, p in scorer["pending"]]))
            if self.task == "avss":
                preds, metric_target = prediction.long(), target.long()  # class ids directly
            else:
                preds, metric_target = (prediction.float() * 2 - 1) * HARD_LOGIT, target.float()
            for metric in scorer[name]:
                metric.update(preds, metric_target)
        scorer["pending"].clear()

    def scores(self) -> dict[str, dict[str, dict[str, float]]]:
        results = {}
        for split, scorer in self.scorers.items():
            self._flush(split)
            results[split] = {
                name: dict(
                    zip(
                        ("miou", "fscore"),
                        (round(float(m.compute()), 4) for m in scorer[name]),
                        strict=True,
                    )
                )
                for name in ("vision_only", "ground_truth")
            }
        return results


def _write_metadata(task: str, out: Path, rows: list[list[str]]) -> None:
    headers = {
        "s4": ["name", "start", "category", "split"],
        "ms3": ["name", "split"],
        "avss": ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"],
    }
    with (out / METADATA_FILES[task]).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers[task])
        writer.writerows(rows)
    if task == "avss":
        label_to_index = {"background": 1} | {c.name: i + 2 for i, c in enumerate(CATEGORIES)}
        (out / "label2idx.json").write_text(json.dumps(label_to_index, indent=2))


def write_threads() -> int:
    """Threads that render and write clips in a process without worker processes: rendering
    (NumPy) and PNG encoding (zlib) release the GIL for most of a clip's time, so two threads
    overlap on two cores without starting processes."""
    return min(2, len(os.sched_getaffinity(0)))


def _clip_plan(task: str, videos: int, seed: int) -> Iterator[tuple[int, str, str]]:
    rng = np.random.default_rng([seed, TASKS.index(task), 1_000_003])
    splits = _assign_splits(rng, videos)
    labels = rng.choice(["v1s", "v1m", "v2"], size=videos, p=[0.4, 0.3, 0.3])
    for index in range(videos):
        yield index, splits[index], str(labels[index]) if task == "avss" else ""


def generate(
    task: str,
    out: str | Path,
    videos: int | None = None,
    seed: int = 0,
    size: int = 224,
    workers: int | None = None,
) -> dict:
    """Write a SynthAVS tree for ``task`` under ``out`` and return its manifest.

    Args:
        task: ``s4``, ``ms3`` or ``avss``.
        out: the tree's root (the equivalent of ``Single-source/``, ``Multi-sources/`` or
            ``AVSBench-semantic/``): a new or empty directory, or an earlier generation's tree
            (its files are overwritten). Anything else is refused
            (:func:`~avsac_lit.data.synthetic_settings.check_output`): it may be a user's real
            copy of AVSBench.
        videos: number of clips over all splits (70/15/15 %); default 300, at most 100 000.
        seed: the whole tree is a function of (task, videos, seed, size).
        size: frame height in pixels, 32 to 1024 (AVSBench's frames are 224 x 224; AVSS ones
            are 4:3).
        workers: processes that render and write the clips (each clip is a function of its
            index, so the tree is the same for any count); default
            :func:`~avsac_lit.data.synthetic_settings.default_workers`.

    Raises:
        ValueError, FileExistsError: what
            :func:`~avsac_lit.data.synthetic_settings.check_generation` refuses; nothing is
            written then.
    """
    check_generation(task, out, videos, seed, size, workers)
    out = Path(out)
    videos = DEFAULT_VIDEOS[task] if videos is None else videos
    workers = default_workers(videos, size) if workers is None else workers
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    settings = {"videos": videos, "seed": seed, "size": size}
    # Written first, so that a generation killed midway leaves a tree marked as its own (to be
    # generated again over), and never one that looks complete.
    marker = {"generator": GENERATOR, "version": GENERATOR_VERSION, "task": task,
              "settings": settings, "complete": False}  # fmt: skip
    write_manifest(out, marker)
    job = partial(_make_and_write, task, out, seed, size)
    plan = list(_clip_plan(task, videos, seed))
    try:
        rows, stats, scores = _summarise(task, _written_clips(job, plan, workers))
    except BrokenProcessPool:
        # A spawned worker imports the main module again: a script that calls generate()
        # outside `if __name__ == "__main__":`, or one read from stdin, stops it.
        log.warning(
            "The generator's worker processes could not start (the calling script needs "
            "`if __name__ == '__main__':`); writing the clips in this process."
        )
        rows, stats, scores = _summarise(task, map(job, plan))
    _write_metadata(task, out, rows)
    manifest = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "task": task,
        "settings": settings,
        "complete": True,
        "categories": [asdict(c) for c in CATEGORIES],
        "splits": {
            split: stats[split] | {"reference_scores": scores[split]}
            for split, _ in SPLIT_FRACTIONS
            if split in stats
        },
    }
    write_manifest(out, manifest)
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    return manifest


def _written_clips(
    job: Callable[[tuple[int, str, str]], _WrittenClip],
    plan: list[tuple[int, str, str]],
    workers: int,
) -> Iterator[_WrittenClip]:
    """The clips of ``plan`` written by ``job``, yielded in plan order as they are done, so that
    what the parent keeps of each (its scored frames) is let go once scored."""
    if workers > 1:
        # spawn, not fork: a forked child of a process that ran torch's OpenMP may hang.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            yield from pool.map(job, plan, chunksize=4)
    elif write_threads() > 1:
        with ThreadPoolExecutor(write_threads()) as pool:
            yield from pool.map(job, plan)
    else:
        yield from map(job, plan)


def _summarise(task: str, written: Iterable[_WrittenClip]) -> tuple[list, dict, dict]:
    """(metadata rows, per-split counts, reference scores) of the clips written, in plan order,
    whatever the workers' order: the references are scored per batch of 2."""
    references = _ReferenceScores(task)
    rows: list[list[str]] = []
    stats: dict[str, dict[str, int]] = {}
    for clip in written:
        rows.append(clip.row)
        references.add(clip)
        split_stats = stats.setdefault(clip.split, {"clips": 0, "frames": 0, "empty_gt_frames": 0})
        split_stats["clips"] += 1
        split_stats["frames"] += clip.frames
        split_stats["empty_gt_frames"] += clip.empty_gt_frames
    return rows, stats, references.scores()


def write_manifest(out: Path, manifest: dict) -> None:
    """Write ``manifest`` into the tree ``out``, whole or not at all."""
    with atomic_path(out / MANIFEST) as partial:
        partial.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m avsac_lit.data.synthetic",
        description="Write a SynthAVS tree in the published AVSBench layout of a task.",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--out", required=True, type=Path, help="root of the tree to write")
    parser.add_argument(
        "--videos", type=int, default=None, help="clips over all splits (default 300)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="frame height in pixels")
    args = parser.parse_args(argv)
    try:
        manifest = generate(args.task, args.out, args.videos, args.seed, args.size)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    from avsac_lit.data.check import print_manifest

    print_manifest(
        manifest,
        title=f"SynthAVS-{args.task.upper()} written to {args.out} in {manifest['seconds']} s",
    )


if __name__ == "__main__":
    main()
