"""Files written whole or not at all; the leftovers of writes a kill interrupted; writes a disk
refused, named.

Every file a run writes goes first to a temporary name beside its destination
(``<name>.<pid>-<random>.partial``: unique, so that processes writing the same file never share
one) and is renamed over it when complete, so a kill at any moment leaves the previous good file.
What a kill leaves is a ``.partial``; the next start in that directory removes it
(:func:`remove_leftovers`). A file that must be new (an export's, a conversion's output) is
linked to its name instead, which fails if the name was taken meanwhile: an existing file is
never replaced (:class:`OutputExists`).

A write the disk refuses (full, over quota, read-only) raises :class:`DiskWriteError`, whose one
message names the directory, its free space against the size needed, the run's last good
checkpoint and how to go on; whatever was there before stays intact.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# torch's own file writer reports a full or read-only disk as a RuntimeError; below this much free
# space such an error is taken for a full disk.
NEARLY_FULL_BYTES = 64 * 2**20

# The run whose files are being written, for the last good checkpoint and the way on that a
# refused write names: set by the run's assembly (``run.assemble.build_run``), which knows how the
# run goes on (Hydra's settings), so that this module knows nothing of runs.
_run_directory: Path | None = None
_ways_on: RunWaysOn | None = None


@dataclass(frozen=True)
class RunWaysOn:
    """How a run whose write the disk refused goes on: ``rerun`` continues it where it is (``run
    the same command with hydra.run.dir=...``), ``elsewhere`` is the setting that puts a new run on
    another disk (``paths.log_dir=/another/disk``), and ``one_run``: whether ``ckpt_path=`` may
    name the checkpoint to go on from (not in a multirun, whose every job it would start)."""

    rerun: str
    elsewhere: str
    one_run: bool = True


def note_run_directory(path: str | Path | None, ways_on: RunWaysOn | None = None) -> None:
    global _run_directory, _ways_on
    _run_directory = None if path is None else Path(path)
    _ways_on = ways_on


def temporary_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(3)}{PARTIAL_SUFFIX}")


class OutputExists(FileExistsError):
    """A file that must be new exists: nothing was written, and it is as it was."""

    def __init__(self, path: Path, named: str = "") -> None:
        super().__init__(
            errno.EEXIST,
            f"{named}{path} exists already: nothing was written, and it is as it was. Write to "
            f"a new file name, or move {path} away first if it is no longer needed.",
            str(path),
        )

    def __str__(self) -> str:
        return self.strerror


def refuse_existing(path: str | Path, named: str = "") -> None:
    """Raise :class:`OutputExists` if ``path`` exists (``named``: how the command line names
    it, e.g. ``output=``); a check before the work, which :func:`atomic_path` repeats when the
    file is put in place."""
    if os.path.lexists(path):
        raise OutputExists(Path(path), named)


@contextmanager
def atomic_path(
    path: str | Path, *, size_hint: int = 0, advice: str | None = None, new: bool = False
) -> Iterator[Path]:
    """Yield the temporary path to write ``path``'s content to; on success it becomes ``path``,
    on an exception it is removed. A write the disk refuses becomes a :class:`DiskWriteError`
    (``size_hint``: the bytes the file needs, if known; ``advice``: how to go on, if not the
    run's own files). ``new=True``: ``path`` must not exist, also when the content is put in
    place (:class:`OutputExists` otherwise)."""
    path = Path(path)
    partial = temporary_name(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield partial
            if new:
                link_new(partial, path)
            else:
                partial.replace(path)
        except (OSError, RuntimeError) as error:
            kind = refused_by_disk(error, path.parent)
            if kind is None or isinstance(error, DiskWriteError):
                raise
            written = partial.stat().st_size if partial.is_file() else 0
            before = path.stat().st_size if path.is_file() else 0
            raise DiskWriteError(kind, path, max(size_hint, written, before), advice) from error
    finally:
        with suppress(OSError):  # FileNotFoundError, or EROFS: nothing was written then
            partial.unlink(missing_ok=True)


def link_new(partial: Path, path: Path) -> None:
    """Give ``partial``'s file the name ``path``, which must not exist: a hard link, which the
    file system refuses if the name was taken meanwhile (a rename would replace it). Where it
    has no hard links (FAT, some network shares), checked then renamed."""
    try:
        os.link(partial, path)
    except FileExistsError:
        raise OutputExists(path) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        refuse_existing(path)
        partial.replace(path)


def refused_by_disk(error: BaseException, directory: Path) -> int | None:
    """The errno (ENOSPC, EDQUOT, EROFS) of a write the disk refused, else None. torch's writer
    raises RuntimeErrors ("unexpected pos", "open file failed"), read here from the disk's state."""
    if isinstance(error, OSError):
        return error.errno if error.errno in DISK_ERRNOS else None
    if not isinstance(error, RuntimeError):
        return None
    existing = nearest_existing(directory)
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return errno.EROFS
    if shutil.disk_usage(existing).free < NEARLY_FULL_BYTES:
        return errno.ENOSPC
    return None


def disk_write_error(error: BaseException, advice: str | None = None) -> DiskWriteError | None:
    """``error`` as a :class:`DiskWriteError` when the disk refused a write, else None."""
    if isinstance(error, DiskWriteError):
        return error.with_advice(advice) if advice else error
    if not isinstance(error, OSError | RuntimeError):
        return None
    filename = getattr(error, "filename", None)
    if filename is not None:
        filename = os.fsdecode(filename)  # TensorBoard's file writer names its file in bytes
    kind = refused_by_disk(error, Path(filename).parent if filename else Path.cwd())
    if kind is None:
        return None
    path = Path(filename) if filename else Path.cwd() / "?"
    return DiskWriteError(kind, path, advice=advice)


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


class DiskWriteError(OSError):
    """A write refused by the disk: full (``ENOSPC``), over quota (``EDQUOT``) or read-only
    (``EROFS``). Its message says where, how much space there is against what the file needs,
    which checkpoint is the run's last good one, and how to go on."""

    def __init__(self, kind: int, path: Path, needed: int = 0, advice: str | None = None) -> None:
        directory = nearest_existing(Path(path).parent)
        free = shutil.disk_usage(directory).free
        need = f"it needs about {megabytes(needed)}" if needed else "it needs more"
        if kind == errno.EROFS:
            why = f"{directory} is on a read-only file system"
        elif kind == errno.EDQUOT:
            why = (f"the disk quota on {directory} is used up ({megabytes(free)} free on the "
                   f"disk; {need})")  # fmt: skip
        else:
            why = f"the disk of {directory} is full ({megabytes(free)} free; {need})"
        message = f"Cannot write {path}: {why}. {last_good_checkpoint()} {advice or run_advice()}"
        super().__init__(kind, message)
        self.path, self.needed = Path(path), needed

    def with_advice(self, advice: str) -> DiskWriteError:
        """The same error, with a command's own way on (predict's ``output=``)."""
        return DiskWriteError(self.errno, self.path, self.needed, advice)

    def __str__(self) -> str:
        return self.strerror


def last_good_checkpoint() -> str:
    """The sentence on the checkpoint a run can go on from (every checkpoint write is atomic, so
    the file there is whole)."""
    if _run_directory is None:
        return "Nothing of earlier files was changed."
    last = _run_directory / "checkpoints" / "last.ckpt"
    if last.is_file():
        written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.stat().st_mtime))
        return f"The run's last good checkpoint is {last} (written {written})."
    return f"The run ({_run_directory}) has written no checkpoint yet."


def run_advice() -> str:
    """How a run whose write the disk refused goes on: here once there is space, or in a new
    directory on another disk, named by the setting that moves it (:class:`RunWaysOn`)."""
    if _run_directory is None:
        return "Free space there, or write to another directory."
    ways_on = _ways_on or RunWaysOn(
        rerun=f"run the same command with hydra.run.dir={_run_directory}",
        elsewhere=f"/another/disk/{_run_directory.name}",
    )
    last = _run_directory / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return f"Free space there, or run in another directory: {ways_on.elsewhere}."
    rerun = f"Free space there and continue the run: {ways_on.rerun}"
    if not ways_on.one_run:
        return f"{rerun}."
    return (f"{rerun}; or go on in a new directory on another disk: {ways_on.elsewhere} "
            f"ckpt_path={last}.")  # fmt: skip


def unrepairable(path: Path, error: OSError, instead: str) -> str:
    """The sentences for a damaged file of a cache that this process cannot delete (a shared
    cache, read-only to it): why it stays, what the run does ``instead``, and how to repair it."""
    reason = error.strerror or str(error)
    return (
        f"It cannot be deleted there ({reason}), so it stays as it is and {instead}. To repair "
        f"it, delete it with write access to the cache (owned by {owner(path)}), or give the run "
        "a writable copy of the cache: paths.cache_dir=DIR."
    )


def owner(path: Path) -> str:
    """The name of the user who owns ``path`` (or its nearest existing folder); the uid where
    the system has no name for it."""
    uid = nearest_existing(path).stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


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
