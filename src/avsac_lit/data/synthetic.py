"""SynthAVS: synthetic AVSBench-format data that can only be solved by listening.

``python -m avsac_lit.data.synthetic --task {s4,ms3,avss} --out DIR [--videos N] [--seed S]``
writes a tree in exactly the published layout of the task (``docs/data.md``), which the ordinary
loaders then read. The task in words (``docs/synthetic.md`` has the details):

* Ten object categories, each with its own look (shape and colour) and its own sound (a harmonic
  tone at its own pitch, with its own harmonic recipe and amplitude-modulation rate).
* Every frame shows 2-4 objects of different categories moving over a textured background. Only
  the sounding ones are in the ground truth, so a predictor that segments everything it sees is
  wrong wherever a visible object is silent, which is most frames.
* S4 (and AVSS v1s): one sounding category per clip. MS3 (and AVSS v1m, v2): 1-3 sounding objects,
  and which ones sound changes from second to second; frame k shows second k of the audio.
* About 10% of seconds have only an off-screen sound (a category not in the picture) or silence,
  so their ground truth is empty.

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
import shutil
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
from avsac_lit.data.manifest import MANIFEST, read_manifest
from avsac_lit.data.metadata import METADATA_FILES, TASKS
from avsac_lit.metrics import AVSSFScore, AVSSMeanIoU, ProtocolFScore, ProtocolJaccard
from avsac_lit.storage.atomic import atomic_path, megabytes, nearest_existing

log = logging.getLogger(__name__)

GENERATOR = "avsac_lit.data.synthetic"
GENERATOR_VERSION = 1
DEFAULT_VIDEOS = {"s4": 300, "ms3": 300, "avss": 300}
# The settings' ranges. At most 1024 px: AVSBench's frames are 224 px, and drawing one clip takes
# about 260 bytes a pixel (a 10-frame AVSS clip at 1024 px: 0.4 GB a worker process). At most
# 100 000 clips: AVSBench's largest task, AVSS, has about 12 000.
SIZE_RANGE = (32, 1024)
VIDEOS_RANGE = (3, 100_000)
# Measured: the peak memory of drawing a clip, per pixel of a frame (make_clip: 256 for a 10-frame
# AVSS clip, 201 for 5 frames); the bytes a tree takes on disk per pixel of a frame (PNG frames
# and masks: 1.9-2.0; AVSS's JPEG frames and PNG labels: 0.3-0.6), rounded up, and per second of
# audio (16-bit wav, 16 kHz) and per S4/MS3 log-mel pickle.
DRAW_BYTES_PER_PIXEL = 260
DISK_BYTES_PER_PIXEL = {"s4": 2.2, "ms3": 2.2, "avss": 0.6}
WAV_BYTES_PER_SECOND = 2 * SAMPLE_RATE
PICKLE_BYTES = 5 * 96 * 64 * 4 + 1024
MEAN_FRAMES = {"s4": 5, "ms3": 5, "avss": 0.4 * 5 + 0.3 * 5 + 0.3 * 10}  # v1s, v1m, v2
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.15), ("test", 0.15))
EMPTY_SECOND_PROBABILITY = 0.1
# Logit magnitude for scoring hard 0/1 predictions: sigmoid(20) rounds to 1 in float32 (and so
# clears even the protocol's last F threshold of 1.0), sigmoid(-20) to ~2e-9.
HARD_LOGIT = 20.0


@dataclass(frozen=True)
class Category:
    """One kind of object: how it looks and how it sounds."""

    name: str
    shape: str
    color: tuple[int, int, int]
    pitch_hz: float
    modulation_hz: float
    harmonics: tuple[float, ...]  # amplitude of harmonic 1, 2, 3, ...


# Pitches are about four semitones apart so that their harmonics fall in different mel bands;
# modulation rates are shuffled against pitch so that neither cue alone orders the categories.
CATEGORIES: tuple[Category, ...] = (
    Category("red_disc", "disc", (220, 50, 47), 165.0, 3.0, (1.0, 0.5, 0.33, 0.25)),
    Category("green_square", "square", (60, 170, 60), 220.0, 11.0, (1.0, 0.0, 0.33, 0.0, 0.2)),
    Category("blue_triangle", "triangle", (38, 100, 210), 277.0, 6.0, (1.0, 0.8)),
    Category("yellow_diamond", "diamond", (235, 200, 40), 349.0, 14.0, (1.0,)),
    Category("magenta_ring", "ring", (205, 50, 170), 440.0, 2.0, (1.0, 0.3, 0.6)),
    Category("cyan_cross", "cross", (40, 200, 210), 554.0, 8.0, (1.0, 0.6, 0.0, 0.4)),
    Category("orange_star", "star", (245, 130, 30), 698.0, 4.0, (1.0, 0.25)),
    Category("white_hexagon", "hexagon", (240, 240, 240), 880.0, 12.0, (1.0, 0.0, 0.5)),
    Category("purple_bar", "bar", (130, 70, 200), 1109.0, 5.0, (1.0, 0.7, 0.5)),
    Category("brown_crescent", "crescent", (140, 90, 45), 1397.0, 9.0, (1.0, 0.4)),
)


def _disc(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return x**2 + y**2 <= r**2


def _triangle(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    # Apex up (image y grows downwards); the three half-planes of an equilateral triangle.
    root3 = np.sqrt(3.0)
    return (y <= 0.5 * r) & (root3 * x - y <= r) & (-root3 * x - y <= r)


def _star(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    angle = np.arctan2(y, x)
    return np.hypot(x, y) <= r * (0.62 + 0.38 * np.cos(5 * angle))


def _hexagon(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(x), np.abs(y)
    return (ay <= 0.866 * r) & (0.866 * ax + 0.5 * ay <= 0.866 * r)


def _crescent(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return _disc(x, y, r) & ~_disc(x - 0.45 * r, y + 0.1 * r, 0.8 * r)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "disc": _disc,
    "square": lambda x, y, r: np.maximum(np.abs(x), np.abs(y)) <= 0.8 * r,
    "triangle": _triangle,
    "diamond": lambda x, y, r: np.abs(x) + np.abs(y) <= r,
    "ring": lambda x, y, r: (x**2 + y**2 <= r**2) & (x**2 + y**2 >= (0.55 * r) ** 2),
    "cross": lambda x, y, r: (
        ((np.abs(x) <= 0.3 * r) & (np.abs(y) <= r)) | ((np.abs(y) <= 0.3 * r) & (np.abs(x) <= r))
    ),
    "star": _star,
    "hexagon": _hexagon,
    "bar": lambda x, y, r: (np.abs(x) <= r) & (np.abs(y) <= 0.35 * r),
    "crescent": _crescent,
}


@dataclass
class SceneObject:
    category: int
    radius: float
    position: np.ndarray  # (x, y) at frame 0, pixels
    velocity: np.ndarray  # pixels per frame


@dataclass
class SynthClip:
    """One generated clip in memory, before it is written in a task's layout."""

    name: str
    split: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    owner: np.ndarray  # int [T, H, W]: category index of the topmost object, -1 for background
    sounding: list[list[int]]  # per second: categories heard (visible or not)
    visible: list[int]
    audio: np.ndarray  # float [T * SAMPLE_RATE]
    label: str = ""  # AVSS: v1s, v1m or v2

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def sounding_visible(self, k: int) -> list[int]:
        return [c for c in self.sounding[k] if c in self.visible]

    def class_ids(self, k: int, *, sounding_only: bool) -> np.ndarray:
        """Per-pixel class ids (category + 1, 0 = background) of frame k [H, W]."""
        keep = self.sounding_visible(k) if sounding_only else self.visible
        owner = self.owner[k]
        return np.where(np.isin(owner, keep), owner + 1, 0)


def _sounding_schedule(
    rng: np.random.Generator, visible: list[int], seconds: int, multi_source: bool
) -> list[list[int]]:
    off_screen = [c for c in range(len(CATEGORIES)) if c not in visible]
    single = [visible[0]]
    schedule: list[list[int]] = []
    previous: list[int] = []
    for _ in range(seconds):
        if rng.random() < EMPTY_SECOND_PROBABILITY:
            # Only an off-screen sound, or silence: the ground truth of this frame is empty.
            current = [int(rng.choice(off_screen))] if rng.random() < 0.5 else []
        elif not multi_source:
            current = single
        else:
            # At most all but one visible object sounds, so a silent object is always on screen.
            most = min(3, len(visible) - 1)
            for _attempt in range(10):
                count = int(rng.integers(1, most + 1))
                current = sorted(int(c) for c in rng.choice(visible, size=count, replace=False))
                if current != previous:
                    break
        schedule.append(current)
        previous = current
    return schedule


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted, textured background: oriented gratings plus smooth noise, float [H, W, 3]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = rng.uniform(70, 150, size=3)
    texture = np.zeros((height, width))
    for _ in range(3):
        angle, wavelength = rng.uniform(0, np.pi), rng.uniform(8, 40)
        phase = rng.uniform(0, 2 * np.pi)
        texture += np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / wavelength + phase)
    coarse = rng.normal(size=(height // 16 + 2, width // 16 + 2))
    smooth = np.asarray(
        Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BILINEAR)
    )
    tint = rng.uniform(-1, 1, size=3)
    return base + 9 * texture[..., None] + 14 * smooth[..., None] * (0.6 + 0.4 * tint)


def _place_objects(
    rng: np.random.Generator, visible: list[int], height: int, width: int, num_frames: int
) -> list[SceneObject]:
    objects: list[SceneObject] = []
    for category in visible:
        radius = rng.uniform(0.09, 0.14) * height
        for _attempt in range(100):
            position = np.array(
                [rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)]
            )
            if all(np.hypot(*(position - o.position)) >= radius + o.radius for o in objects):
                break
        # Slow enough that an object crosses at most about half the frame over the clip.
        speed = rng.uniform(0.1, 0.5) * height / num_frames
        direction = rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(direction), np.sin(direction)])
        objects.append(SceneObject(category, radius, position, velocity))
    return objects


def _reflect(value: float, low: float, high: float) -> float:
    span = high - low
    folded = (value - low) % (2 * span)
    return low + (folded if folded <= span else 2 * span - folded)


def _render(
    rng: np.random.Generator, objects: list[SceneObject], height: int, width: int, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    background = _background(rng, height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    colors = [np.array(CATEGORIES[o.category].color, dtype=np.float64) for o in objects]
    colors = [np.clip(c + rng.uniform(-12, 12, size=3), 0, 255) for c in colors]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    owner = np.full((num_frames, height, width), -1, dtype=np.int64)
    for k in range(num_frames):
        image = background.copy()
        for obj, color in zip(objects, colors, strict=True):  # list order is depth order
            cx = _reflect(obj.position[0] + k * obj.velocity[0], obj.radius, width - obj.radius)
            cy = _reflect(obj.position[1] + k * obj.velocity[1], obj.radius, height - obj.radius)
            inside = SHAPES[CATEGORIES[obj.category].shape](x - cx, y - cy, obj.radius)
            # A soft light from the top-left, so objects are not flat stickers.
            shade = 1.0 + 0.12 * ((cx - x) + (cy - y)) / obj.radius
            image[inside] = np.clip(color[None, :] * shade[inside][:, None], 0, 255)
            owner[k][inside] = obj.category
        noise = rng.normal(0, 3, size=image.shape)
        frames[k] = np.clip(image + noise, 0, 255).round().astype(np.uint8)
    return frames, owner


def _tone(rng: np.random.Generator, category: Category, samples: int) -> np.ndarray:
    t = np.arange(samples) / SAMPLE_RATE
    pitch = category.pitch_hz * rng.uniform(0.98, 1.02)
    wave = np.zeros(samples)
    for order, amplitude in enumerate(category.harmonics, start=1):
        if amplitude:
            wave += amplitude * np.sin(2 * np.pi * order * pitch * t + rng.uniform(0, 2 * np.pi))
    modulation = 0.6 + 0.4 * np.sin(2 * np.pi * category.modulation_hz * t + rng.uniform(0, 6.3))
    return wave * modulation / np.abs(wave).max()


def _envelope(active_seconds: list[bool]) -> np.ndarray:
    """1 during the seconds a source sounds, with 20 ms linear ramps to avoid clicks."""
    gate = np.repeat(np.asarray(active_seconds, dtype=np.float64), SAMPLE_RATE)
    ramp = int(0.02 * SAMPLE_RATE)
    # A centred moving average of the gate, via a cumulative sum (linear in the signal length).
    padded = np.concatenate([np.zeros(ramp // 2 + 1), gate, np.zeros(ramp // 2)])
    running = np.cumsum(padded)
    return (running[ramp:] - running[:-ramp])[: len(gate)] / ramp


def _mix(rng: np.random.Generator, schedule: list[list[int]]) -> np.ndarray:
    seconds = len(schedule)
    samples = seconds * SAMPLE_RATE
    audio = rng.normal(0, 0.003, size=samples)
    for category in sorted({c for second in schedule for c in second}):
        active = [category in second for second in schedule]
        gain = rng.uniform(0.5, 1.0)
        audio += gain * _tone(rng, CATEGORIES[category], samples) * _envelope(active)
    return audio * rng.uniform(0.5, 0.9) / max(np.abs(audio).max(), 1e-9)


def make_clip(
    seed: int, task: str, index: int, split: str, height: int, label: str = ""
) -> SynthClip:
    """Generate clip ``index`` of ``task``; the same arguments always give the same clip."""
    rng = np.random.default_rng([seed, TASKS.index(task), index])
    num_frames = 10 if label == "v2" else 5
    width = round(height * 4 / 3) if task == "avss" else height
    multi_source = task == "ms3" or label in ("v1m", "v2")
    count = int(rng.integers(2, 5))
    visible = [int(c) for c in rng.choice(len(CATEGORIES), size=count, replace=False)]
    schedule = _sounding_schedule(rng, visible, num_frames, multi_source)
    objects = _place_objects(rng, visible, height, width, num_frames)
    rng.shuffle(objects)  # depth order independent of which object sounds
    frames, owner = _render(rng, objects, height, width, num_frames)
    return SynthClip(
        name=f"synth{index:05d}",
        split=split,
        frames=frames,
        owner=owner,
        sounding=schedule,
        visible=visible,
        audio=_mix(rng, schedule),
        label=label,
    )


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


def default_workers(videos: int, size: int) -> int:
    """Processes for a tree: one per CPU this process may use (at most 8) on 4 or more CPUs, for
    trees large enough to pay for starting them (about 2 s each, importing torch), else 1. On 2
    cores the workers measured no gain (300 MS3 clips at 224 px: 24.6 s in one process, 25.3 s
    with 2 workers: the clips' scored frames travel back to this process, which scores them);
    there the clips are written by threads instead (:func:`write_threads`)."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 4 or videos * size * size < 64 * 224 * 224:
        return 1
    return min(8, cpus)


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
            (its files are overwritten). Anything else is refused (:func:`check_output`): it
            may be a user's real copy of AVSBench.
        videos: number of clips over all splits (70/15/15 %); default 300, at most 100 000.
        seed: the whole tree is a function of (task, videos, seed, size).
        size: frame height in pixels, 32 to 1024 (AVSBench's frames are 224 x 224; AVSS ones
            are 4:3).
        workers: processes that render and write the clips (each clip is a function of its
            index, so the tree is the same for any count); default :func:`default_workers`.

    Raises:
        ValueError, FileExistsError: what :func:`check_generation` refuses; nothing is written
            then.
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


def draw_bytes(task: str, size: int) -> int:
    """About the memory one process takes to draw one clip of ``size`` px (its largest)."""
    width = round(size * 4 / 3) if task == "avss" else size
    return DRAW_BYTES_PER_PIXEL * size * width


def tree_bytes(task: str, videos: int, size: int) -> int:
    """About the disk a tree of ``videos`` clips at ``size`` px takes."""
    width = round(size * 4 / 3) if task == "avss" else size
    frames = MEAN_FRAMES[task]
    pixels = frames * size * width * DISK_BYTES_PER_PIXEL[task]
    audio = frames * WAV_BYTES_PER_SECOND + (0 if task == "avss" else PICKLE_BYTES)
    return round(videos * (pixels + audio))


def gigabytes(size: float) -> str:
    """``size`` bytes in TB, GB or MB, whichever reads best."""
    if size >= 2**40:
        return f"{size / 2**40:.1f} TB"
    return f"{size / 2**30:.1f} GB" if size >= 2**30 else megabytes(size)


def check_generation(
    task: str,
    out: str | Path,
    videos: int | None = None,
    seed: int = 0,
    size: int = 224,
    workers: int | None = None,
) -> None:
    """Refuse, before anything is written, what :func:`generate` (same arguments) would fail on:
    an unknown task, settings out of range (:func:`check_settings`), an ``out`` that may hold a
    user's data (:func:`check_output`), a disk without room for the tree (:func:`check_disk`).
    The data module calls it before a run builds its model."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    videos = DEFAULT_VIDEOS[task] if videos is None else videos
    workers = default_workers(videos, size) if workers is None else workers
    check_settings(task, videos, size, workers)
    check_output(Path(out))
    check_disk(task, Path(out), videos, size)


def check_settings(task: str, videos: int, size: int, workers: int = 1) -> None:
    """Refuse a size or a clip count outside the generator's ranges, saying what they would take
    (``--size 100000`` would need terabytes of memory and disk, and failed on a 149 GiB
    allocation)."""
    setting = "--{0} (python -m avsac_lit.data.synthetic) and data.synthetic.{0} (a synthetic " \
        "experiment)"  # fmt: skip
    low, high = SIZE_RANGE
    if not low <= size <= high:
        memory = gigabytes(draw_bytes(task, max(size, 0)) * max(workers, 1))
        disk = gigabytes(tree_bytes(task, videos, max(size, 0)))
        raise ValueError(
            f"{setting.format('size')} must be {low} to {high} px, got {size}: at {size} px the "
            f"generator would need about {memory} of memory ({max(workers, 1)} process(es) "
            f"drawing a clip each) and the tree about {disk} of disk ({videos} clips). "
            "AVSBench's frames are 224 px."
        )
    low, high = VIDEOS_RANGE
    if not low <= videos <= high:
        disk = (
            f" {videos} clips at {size} px would take about "
            f"{gigabytes(tree_bytes(task, videos, size))} of disk."
            if videos > high
            else ""
        )
        raise ValueError(
            f"{setting.format('videos')} must be {low} to {high} clips, got {videos}: at least "
            f"one clip per split, and at most {high} (AVSBench's largest task, AVSS, has about "
            f"12 000).{disk}"
        )


def check_disk(task: str, out: Path, videos: int, size: int) -> None:
    """Refuse a tree the disk has no room for, before anything is written (an earlier tree in
    ``out`` is written over, so its files count as room)."""
    needed = tree_bytes(task, videos, size)
    existing = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else 0
    disk = nearest_existing(out)
    free = shutil.disk_usage(disk).free
    if free + existing < needed:
        raise ValueError(
            f"Not enough disk for SynthAVS-{task.upper()} in {out}: {videos} clips at {size} px "
            f"take about {gigabytes(needed)}, and the disk of {disk} has {gigabytes(free)} free"
            + (f" (and {gigabytes(existing)} in the tree written over)" if existing else "")
            + ". Nothing was written. Free space there, write the tree elsewhere (--out DIR, "
            "data.root=DIR), or make it smaller (--videos or data.synthetic.videos, --size or "
            "data.synthetic.size)."
        )


def write_manifest(out: Path, manifest: dict) -> None:
    with atomic_path(out / MANIFEST) as partial:
        partial.write_text(json.dumps(manifest, indent=2) + "\n")


def is_generated_tree(root: Path) -> bool:
    """Whether ``root`` holds a manifest this generator wrote (complete or not).

    Raises:
        DamagedManifestError: a manifest that is there but damaged: the tree may be a generated
            one, or a user's data with a file of that name; the message says how to tell.
    """
    manifest = read_manifest(root) if root.is_dir() else None
    return manifest is not None and manifest.get("generator") == GENERATOR


def check_output(out: Path) -> None:
    """The generator writes only into a new or empty directory, or over a tree it generated:
    anywhere else it could overwrite a user's dataset (its metadata CSV, its frames)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(
            f"Cannot generate SynthAVS into {out}: it is a file. Choose a new or empty "
            "directory: data.root=DIR, or --out DIR for python -m avsac_lit.data.synthetic."
        )
    if is_generated_tree(out) or next(out.iterdir(), None) is None:
        return
    shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
    raise FileExistsError(
        f"Refusing to generate SynthAVS into {out}: it is not empty ({shown}, ...) and holds no "
        f"{MANIFEST} written by the generator, so it may be a real dataset, whose files the "
        "synthetic ones would overwrite. Nothing was written. Choose a new or empty directory: "
        "data.root=DIR (the synthetic experiments), or --out DIR for python -m "
        "avsac_lit.data.synthetic; to train on this directory's data, use the task's real "
        "experiment (+experiment=ms3 data.root=...)."
    )


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
