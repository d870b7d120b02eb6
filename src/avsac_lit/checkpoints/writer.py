"""Checkpoints written whole, with their tensors' checksums, and read back verified and tensors-only
(:class:`AtomicCheckpointIO`, the trainer's checkpoint plugin).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from avsac_lit.storage.checksums import verify, write_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to ``<name>.<pid>-<random>.partial`` beside their destination,
    flushed, then renamed, with their tensors' checksums (:mod:`avsac_lit.storage.checksums`).

    Lightning's own writer stages the file in the system's temporary directory (through fsspec),
    where a kill leaves tens of megabytes nobody removes; here a kill leaves a ``.partial`` in the
    run's ``checkpoints/``, which the next start there removes (``ResumableCheckpoint``)."""

    def save_checkpoint(
        self, checkpoint: dict, path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote: Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_checkpoint(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at ``path`` (local or fsspec), verified, read with
        ``weights_only=True`` whatever Lightning asks for and torch's default is (``False``
        before torch 2.6, and under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``): a pickle in a
        checkpoint someone handed over would otherwise run as it is read. Read here rather than
        by Lightning's reader, which takes no ``weights_only`` in some of the versions the suite
        accepts."""
        filesystem = get_filesystem(path)
        if not filesystem.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        with filesystem.open(path, "rb") as handle:
            checkpoint = torch.load(handle, map_location=map_location, weights_only=True)
        verify(checkpoint, path)  # what Lightning resumes or tests from, too
        return checkpoint
