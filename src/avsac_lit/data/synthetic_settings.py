"""The SynthAVS generator's settings, checked before anything is written: their defaults (the
clip count, the worker processes), their ranges, the memory and the disk a tree of them takes,
and where a tree may be written (a new or empty directory, or over a tree the generator wrote:
never over what may be a user's copy of AVSBench). :func:`check_generation` refuses what
:func:`avsac_lit.data.synthetic.generate` would fail on; the data module calls it before a run
builds its model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from avsac_lit.data.audio import SAMPLE_RATE
from avsac_lit.data.manifest import MANIFEST, is_generated_tree
from avsac_lit.data.metadata import TASKS
from avsac_lit.storage.atomic import megabytes, nearest_existing

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


def default_workers(videos: int, size: int) -> int:
    """Processes for a tree: one per CPU this process may use (at most 8) on 4 or more CPUs, for
    trees large enough to pay for starting them (about 2 s each, importing torch), else 1. On 2
    cores the workers measured no gain (300 MS3 clips at 224 px: 24.6 s in one process, 25.3 s
    with 2 workers: the clips' scored frames travel back to this process, which scores them);
    there the clips are written by threads instead
    (:func:`avsac_lit.data.synthetic.write_threads`)."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 4 or videos * size * size < 64 * 224 * 224:
        return 1
    return min(8, cpus)


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
