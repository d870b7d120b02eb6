"""Files written whole or not at all, and the leftovers of writes a kill interrupted.

Every file a run writes goes first to ``<name>.partial`` beside its destination and is renamed
over it when complete, so a kill at any moment leaves the previous good file. What a kill leaves
is a ``.partial``; the next start in that directory removes it (:func:`remove_leftovers`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write ``path``'s content to; on success it becomes ``path``,
    on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def remove_leftovers(directory: str | Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete the ``.partial`` files directly in ``directory`` (older than ``older_than_s``
    seconds, for directories other live processes may be writing to); returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    now, removed = time.time(), []
    for path in sorted(directory.glob("*" + PARTIAL_SUFFIX)):
        try:
            if now - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer finished or another process removed it
            continue
    if removed:
        log.info("Removed %d file(s) left by interrupted writes in %s: %s", len(removed),
                 directory, ", ".join(p.name for p in removed))  # fmt: skip
    return removed


def fsync_file(path: str | Path) -> None:
    """Flush ``path`` to disk before it is renamed into place (a rename of unflushed data can
    leave an empty file after a power loss)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
