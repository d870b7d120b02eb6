"""The frozen encoders a checkpoint leaves out because its config rebuilds them (the published
weight files, timm's hub, or the fixed random init): which ones, recorded with their digests, and
the message for a weight file that has gone.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from hydra.errors import InstantiationException

from avsac_lit.checkpoints.io import existing_checkpoint, read_checkpoint


def rebuilt_encoders(ckpt_path: str | Path) -> dict[str, str]:
    """The encoders a checkpoint left out because its config rebuilds them (prefix -> sha256);
    empty for a self-contained checkpoint."""
    checkpoint = read_checkpoint(existing_checkpoint(ckpt_path), mmap=True)
    saved = (checkpoint.get("avsac_lit") or {}) if isinstance(checkpoint, dict) else {}
    return saved.get("rebuilt_encoders") or {}


@contextmanager
def encoder_files_needed(ckpt_path: str | Path, rebuilt: dict[str, str]):
    """Say, when a weight file is missing, that the checkpoint needs it and what to do.

    Only a file a constructor missed counts (Hydra wraps what a constructor raised): the block
    may also build the data (``avsac_lit.eval``), whose own missing files (a data root without
    the task's layout, :class:`DatasetLayoutError`) are the user's to fix as they say, not a
    reason to export the checkpoint."""
    from avsac_lit.data.metadata import DatasetLayoutError

    try:
        yield
    except InstantiationException as raised:
        error = raised.__cause__
        if (
            not rebuilt
            or not isinstance(error, FileNotFoundError)
            or isinstance(error, DatasetLayoutError)
        ):
            raise
        raise FileNotFoundError(
            f"{ckpt_path} does not store its frozen encoders ({', '.join(rebuilt)}): they are "
            f"rebuilt from the weight files the training run used, and one is missing. {error} "
            "Put the file back where the run's config says, or, where the files are, write a "
            "self-contained checkpoint: python -m avsac_lit.export CKPT OUTPUT."
        ) from raised
