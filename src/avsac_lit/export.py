"""A self-contained copy of a checkpoint, for sharing: ``python -m avsac_lit.export CKPT OUT``.
``OUT`` must be a new file: an existing one is never replaced.

A training checkpoint leaves out the frozen encoders its config rebuilds (the published weight
files, timm's hub, or the fixed random init; see ``docs/training.md``), so it is small but needs
those files where the run's config says. The export puts them back, checked against the digests the
checkpoint recorded, and by default drops the optimiser and loop states, which only a resumed run
needs (``--keep-training-state`` keeps them). The result loads anywhere: ``avsac_lit.eval``,
``avsac_lit.predict`` and ``checkpoint.load_trained`` need no weight file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avsac_lit.checkpoints.io import existing_checkpoint, read_checkpoint, run_config
from avsac_lit.inference.trained import module_with_encoders
from avsac_lit.storage.atomic import refuse_existing
from avsac_lit.storage.checksums import write_checkpoint

TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks")


def export(ckpt_path: str | Path, output: str | Path, keep_training_state: bool = False) -> Path:
    """Write ``ckpt_path`` with its encoders put back to ``output``, a new file (an existing one
    is refused: :class:`~avsac_lit.storage.atomic.OutputExists`); returns ``output``."""
    ckpt_path, output = existing_checkpoint(ckpt_path), Path(output)
    if output.resolve() == ckpt_path.resolve():
        raise ValueError(f"Export {ckpt_path} to another file than itself.")
    refuse_existing(output)
    checkpoint = read_checkpoint(ckpt_path)
    saved = checkpoint.get("avsac_lit") or {}
    if saved.get("rebuilt_encoders"):
        module_with_encoders(
            ckpt_path, checkpoint, run_config(ckpt_path, saved.get("config"), None)
        )
    elif saved.get("config") is not None:
        # Nothing to build, but a copy that "loads anywhere" must not carry a config that
        # loading would refuse.
        run_config(ckpt_path, saved["config"], None)
    if not keep_training_state:
        for key in TRAINING_STATE:
            checkpoint.pop(key, None)
    write_checkpoint(checkpoint, output, new=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avsac_lit.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument(
        "--keep-training-state",
        action="store_true",
        help="keep the optimiser, scheduler and loop states (to resume training from the copy)",
    )
    args = parser.parse_args(argv)
    try:
        written = export(args.checkpoint, args.output, args.keep_training_state)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"avsac_lit.export: {error}", file=sys.stderr)
        return 2
    size = written.stat().st_size / 2**20
    print(f"Wrote {written} ({size:.1f} MiB), self-contained.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
