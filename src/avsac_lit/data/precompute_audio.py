"""Compute and cache the VGGish log-mels of every clip without a .pkl, for whole splits.

``python -m avsac_lit.data.precompute_audio --task avss --root DIR [--split train] [--cache-dir D]``

AVSS ships only wavs; the first epoch would otherwise compute them in the dataloader workers. The
cache is the one training reads: ``paths.cache_dir`` by default (``$AVSAC_CACHE_DIR``, else
``data/.cache``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from avsac_lit.data.avsbench import build_dataset
from avsac_lit.data.logmel import default_cache_dir
from avsac_lit.data.metadata import SPLITS, TASKS, DatasetLayoutError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avsac_lit.data.precompute_audio", description=__doc__
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: the suite's cache, paths.cache_dir"
    )
    args = parser.parse_args(argv)
    splits = SPLITS if args.split == "all" else (args.split,)
    try:
        for split in splits:
            started = time.perf_counter()
            dataset = build_dataset(args.task, args.root, split, cache_dir=args.cache_dir)
            count = dataset.precompute_audio()
            seconds = time.perf_counter() - started
            print(f"{split}: {count} of {len(dataset)} clips from wav in {seconds:.1f} s")
    except (DatasetLayoutError, FileNotFoundError, ValueError) as error:
        print(f"Precompute failed: {error}", file=sys.stderr)
        return 2
    print(f"Cache: {args.cache_dir or default_cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
