"""Check a copy of AVSBench (or a SynthAVS tree) by reading every item through the loaders.

``python -m avsac_lit.data.check --task ms3 --root DIR [--img-size 224] [--workers 2]``

Each split is read end to end with the same datasets the training uses, so a missing or broken
file is found now, with its name, rather than hours into a run. It prints per split the number of
clips, frames and annotated frames, the share of annotated frames with empty ground truth, the
clips whose audio is digital silence (an extraction that failed, or a file read wrong), and the
read speed. For a SynthAVS tree it also prints the reference scores stored in its manifest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from avsac_lit.data.audio import LOG_OFFSET
from avsac_lit.data.avsbench import AVSBenchDataset, build_dataset
from avsac_lit.data.manifest import read_manifest
from avsac_lit.data.metadata import SPLITS, TASKS, DatasetLayoutError

# The log-mel of digital silence: log(0 + 0.01) in every band of every frame.
SILENT_LOG_MEL = float(np.float32(np.log(LOG_OFFSET)))
SILENT_NAMES_SHOWN = 5


def check_item(item: dict, dataset: AVSBenchDataset) -> None:
    """Raise ValueError if ``item`` breaks the documented item format."""
    t, size = dataset.num_frames, dataset.img_size
    expected = {
        "frames": (t, 3, size, size),
        "audio": (t, 1, 96, 64),
        "masks": (t, size, size),
        "mask_valid": (t,),
        "frame_valid": (t,),
    }
    for key, shape in expected.items():
        if tuple(item[key].shape) != shape:
            raise ValueError(
                f"{item['name']}: {key} has shape {list(item[key].shape)}, expected {list(shape)}"
            )
    masks = item["masks"]
    if dataset.num_classes == 1:
        if not torch.all((masks == 0) | (masks == 1)):
            raise ValueError(f"{item['name']}: binary masks hold values other than 0 and 1")
    elif masks.min() < 0 or masks.max() >= dataset.num_classes:
        raise ValueError(f"{item['name']}: class ids outside [0, {dataset.num_classes})")
    if not torch.isfinite(item["audio"]).all():
        raise ValueError(f"{item['name']}: non-finite log-mel values")


def summarise_split(dataset: AVSBenchDataset, workers: int) -> dict:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    started = time.perf_counter()
    frames = labelled = empty = 0
    silent: list[str] = []
    for item in loader:
        check_item(item, dataset)
        valid = item["mask_valid"]
        frames += int(item["frame_valid"].sum())
        labelled += int(valid.sum())
        foreground = item["masks"][valid].flatten(1).gt(0).any(dim=1)
        empty += int((~foreground).sum())
        if item["audio"][item["frame_valid"]].eq(SILENT_LOG_MEL).all():
            silent.append(item["name"])
    seconds = time.perf_counter() - started
    return {
        "clips": len(dataset),
        "frames": frames,
        "labelled": labelled,
        "empty": empty,
        "silent": silent,
        "clips_per_second": len(dataset) / max(seconds, 1e-9),
    }


def print_manifest(manifest: dict, title: str, console: Console | None = None) -> None:
    """The per-split reference scores of a SynthAVS manifest as a table."""
    console = console or Console()
    table = Table(title=title)
    for column in ("split", "clips", "frames", "empty-GT frames"):
        table.add_column(column, justify="right")
    for predictor in ("vision only", "ground truth"):
        table.add_column(f"{predictor} mIoU", justify="right")
        table.add_column(f"{predictor} F", justify="right")
    for split, stats in manifest["splits"].items():
        scores = stats["reference_scores"]
        table.add_row(
            split,
            str(stats["clips"]),
            str(stats["frames"]),
            f"{stats['empty_gt_frames'] / stats['frames']:.1%}",
            *(
                f"{scores[p][m]:.3f}"
                for p in ("vision_only", "ground_truth")
                for m in ("miou", "fscore")
            ),
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avsac_lit.data.check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    console = Console()
    table = Table(title=f"AVSBench {args.task.upper()} at {args.root}, read at {args.img_size} px")
    columns = ("split", "clips", "frames", "annotated", "empty GT", "silent audio", "clips/s")
    for column in columns:
        table.add_column(column, justify="right")
    silent: dict[str, list[str]] = {}
    try:
        for split in args.splits:
            dataset = build_dataset(args.task, args.root, split, args.img_size, args.cache_dir)
            stats = summarise_split(dataset, args.workers)
            silent[split] = stats["silent"]
            table.add_row(
                split,
                str(stats["clips"]),
                str(stats["frames"]),
                str(stats["labelled"]),
                f"{stats['empty'] / max(stats['labelled'], 1):.1%}",
                str(len(stats["silent"])),
                f"{stats['clips_per_second']:.1f}",
            )
        manifest = read_manifest(dataset.root)
    except (DatasetLayoutError, FileNotFoundError, ValueError) as error:
        console.print(f"[bold red]Check failed:[/] {error}", highlight=False)
        return 2
    console.print(table)
    console.print("Every item matches the documented format (see `avsac_lit.data`).")
    for split, names in silent.items():
        if names:
            shown = ", ".join(names[:SILENT_NAMES_SHOWN]) + (
                ", ..." if len(names) > SILENT_NAMES_SHOWN else ""
            )
            console.print(
                f"[bold yellow]{split}:[/] {len(names)} clip(s) have digital silence as audio "
                f"(every log-mel value log(0.01)): {shown}. Listen to their wavs; a clip whose "
                "extraction failed gives the model nothing to hear: extract it again.",
                highlight=False,
            )
    if manifest is not None:
        print_manifest(manifest, title="Reference predictors (from manifest.json)", console=console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
