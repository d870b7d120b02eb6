"""Checksums on what the suite writes and reads back: checkpoints (this module) and the feature
cache's entries (:mod:`avsac_lit.system.feature_cache`).

torch's checkpoint reader does not check the CRCs of its zip entries, so a flipped byte in a
weight (a disk or copy fault) loads silently: eval then scores NaN weights as mIoU 0 and exits 0.
Every checkpoint the suite writes carries, in ``avsac_lit.checksums``, the CRC-32 of each tensor's
dtype, shape and bytes, keyed by its place in the checkpoint (``state_dict/net.head.to_mask.0
.weight``, ``optimizer_states/0/state/3/exp_avg``); a checkpoint is verified whenever it is read.
CRC-32 (zlib's, 2.6 GB/s on one core here) detects any error burst up to 32 bits and misses a
random corruption with probability 2^-32: a guard against accidents, not against tampering.
Checkpoints written before 0.6.0 carry no checksums and are read as they are.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avsac_lit.storage.atomic import atomic_path, fsync_file

CHECKSUMS = "checksums"


class DamagedCheckpointError(ValueError):
    """A checkpoint whose tensors are not the ones it was written with."""


def crc32(*parts: bytes | memoryview) -> int:
    value = 0
    for part in parts:
        value = zlib.crc32(part, value)
    return value


def tensor_checksum(tensor: Tensor) -> int:
    """CRC-32 of a tensor's dtype, shape and bytes (any dtype, any device)."""
    data = tensor.detach().cpu().contiguous().reshape(-1)
    header = f"{data.dtype}{tuple(tensor.shape)}".encode()
    return crc32(header, memoryview(data.view(torch.uint8).numpy()))


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every value in nested dicts, lists and tuples that is none of those, with its path
    (``a/b/0/c``), in order."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        yield prefix, tree
        return
    for key, value in items:
        yield from leaves(value, f"{prefix}/{key}" if prefix else str(key))


def tensors(tree: Any) -> Iterator[tuple[str, Tensor]]:
    """Every tensor in nested dicts, lists and tuples, with its path, in order."""
    return ((path, leaf) for path, leaf in leaves(tree) if isinstance(leaf, Tensor))


def checkpoint_checksums(checkpoint: dict) -> dict[str, int]:
    """The checksum of every tensor of ``checkpoint`` (the checksums' own entry excluded)."""
    own = (checkpoint.get("avsac_lit") or {}).get(CHECKSUMS)
    content = {k: v for k, v in checkpoint.items() if k != "avsac_lit"}
    content["avsac_lit"] = {k: v for k, v in (checkpoint.get("avsac_lit") or {}).items()
                            if v is not own}  # fmt: skip
    return {path: tensor_checksum(tensor) for path, tensor in tensors(content)}


def seal(checkpoint: dict) -> dict:
    """Record the checksums of ``checkpoint``'s tensors in it (in place); returns it."""
    checkpoint.setdefault("avsac_lit", {})
    checkpoint["avsac_lit"].pop(CHECKSUMS, None)
    checkpoint["avsac_lit"][CHECKSUMS] = checkpoint_checksums(checkpoint)
    return checkpoint


# Files found whole in this process, as (path, size, modification time).
_verified: set[tuple[Path, int, int]] = set()


def file_state(path: str | Path) -> tuple[Path, int, int] | None:
    try:
        stat = Path(path).stat()
    except OSError:  # not a file (a checkpoint checked in memory)
        return None
    return Path(path).resolve(), stat.st_size, stat.st_mtime_ns


def verify(checkpoint: dict, path: str | Path) -> None:
    """Raise :class:`DamagedCheckpointError` naming ``path`` and its first damaged tensor if a
    tensor differs from what was written (or one is missing or added); checkpoints without
    checksums pass. A file found whole is not hashed again while it stays as it was: eval,
    predict and resume read a checkpoint's config and metadata several times before Lightning
    loads it."""
    if not isinstance(checkpoint, dict):
        return
    saved = (checkpoint.get("avsac_lit") or {}).get(CHECKSUMS)
    state = file_state(path)
    if not saved or (state is not None and state in _verified):
        return
    found = checkpoint_checksums(checkpoint)
    damaged = [name for name, value in saved.items() if found.get(name) != value]
    added = [name for name in found if name not in saved]
    if not damaged and not added:
        if state is not None:
            _verified.add(state)
        return
    first = (damaged or added)[0]
    what = "is not in it" if first not in found else "does not match the checksum written with it"
    others = len(damaged) + len(added) - 1
    more = f" ({others} more tensor(s) differ too)" if others else ""
    raise DamagedCheckpointError(
        f"Checkpoint {path} is damaged: its tensor {first} {what}{more}. The file changed after "
        "it was written (a disk, copy or transfer fault), so its weights cannot be trusted. Use "
        "another copy of it, or another checkpoint of the run (checkpoints/ holds the best and "
        "the last one)."
    )


def write_checkpoint(checkpoint: dict, path: str | Path, *, new: bool = False) -> None:
    """Seal ``checkpoint`` and write it whole or not at all (temporary name, flushed, renamed;
    ``new=True``: never over an existing file, see
    :func:`~avsac_lit.storage.atomic.atomic_path`)."""
    seal(checkpoint)
    size = sum(tensor.numel() * tensor.element_size() for _, tensor in tensors(checkpoint))
    with atomic_path(path, size_hint=size, new=new) as partial:
        # To a file object: torch then reports a full disk as an OSError, not a RuntimeError.
        with open(partial, "wb") as handle:
            torch.save(checkpoint, handle)
        fsync_file(partial)
