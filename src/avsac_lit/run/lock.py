"""A run directory: which process holds it, and how to run in it again or elsewhere.

**One live run per directory.** Two processes writing one run directory (two identical commands
started together, or the same command started again while the first still runs) would write over
each other's checkpoints, ``metrics.csv`` and ``metrics.json``. The run's first process holds its
directory from before Hydra writes anything there until it exits: the lock file :data:`LOCK`
names its host, process (number and start time), command and, in a SLURM job, the job and its
restart count. Another process is refused, naming the holder (:class:`RunDirectoryInUse`).

The other processes of the same run take no lock: DDP ranks that SLURM, torchrun or Lightning
start (``RANK``, ``LOCAL_RANK``, ``NODE_RANK``, ``SLURM_PROCID`` other than 0) and ddp_spawn's
workers (which run no command). The jobs of a multirun each hold their own directory.

**A holder that has ended** is taken over, with a log line naming it:

* on this host, when its process is gone, or its number now belongs to another process (its
  start time differs);
* on another host, when it was an earlier attempt of this SLURM job (the same job, restarted
  fewer times): SLURM requeues a job only after its earlier attempt has ended; or of this
  torchrun run (the same ``--rdzv-id``): torchrun starts a run's processes again only after it
  has stopped all of them.

Any other holder on another host cannot be asked whether it still runs: the command is refused,
saying that the lock file may be deleted if that process has ended (its machine went down). A
lock file is not "an earlier run" (``resume.RUN_FILES``), and it is deleted when its holder exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from avsac_lit.run.job import first_process, new_directory_hint, slurm_job_id
from avsac_lit.run.torchrun import torchrun_run_id

log = logging.getLogger(__name__)

LOCK = ".avsac_lit.lock"


class RunDirectoryInUse(FileExistsError):
    """The run directory is held by another live process."""


@dataclass(frozen=True)
class Holder:
    """The process that holds a run directory, as its lock file records it."""

    host: str
    pid: int
    started: int | None  # the process's start time (clock ticks after boot; None: unknown)
    command: str
    since: str
    slurm_job: str | None = None
    slurm_restarts: int = 0
    torchrun_run: str | None = None

    @classmethod
    def this_process(cls, command: str) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=process_start(os.getpid()),
            command=command,
            since=time.strftime("%Y-%m-%d %H:%M:%S"),
            slurm_job=slurm_job_id(),
            slurm_restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            torchrun_run=torchrun_run_id(),
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def text(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    def __str__(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"{self.command} (host {self.host}, process {self.pid}, since {self.since}{job})"

    def ended(self) -> str | None:
        """Why this holder has certainly ended, or None if it may still run."""
        if self.host == socket.gethostname():
            if self.pid == os.getpid():  # a lock this process does not hold: an earlier one's
                return "its process number is now this process's"
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return "its process is gone"
            except PermissionError:  # another user's process: it exists
                pass
            started = process_start(self.pid)
            if None not in (started, self.started) and started != self.started:
                return "its process number now belongs to another process"
            return None
        if (
            self.slurm_job is not None
            and self.slurm_job == slurm_job_id()
            and self.slurm_restarts < int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        ):
            return "it was an earlier attempt of this SLURM job, which SLURM requeued"
        if self.torchrun_run is not None and self.torchrun_run == torchrun_run_id():
            # This process is the run's rank 0, so another rank 0 of the same run was an earlier
            # attempt: torchrun starts a run's processes again only once it has stopped them all
            # (an agent whose own processes did not fail does not count the restart, so the
            # restart counts cannot order the attempts).
            return "it was an earlier attempt of this torchrun run, which torchrun restarted"
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (``/proc/PID/stat``, field 22);
    None where there is no ``/proc``. Tells a process from a later one given the same number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def lock_file(run_dir: str | Path) -> Path:
    """The lock of ``run_dir``, as one absolute path however the directory was written."""
    return Path(os.path.abspath(Path(run_dir) / LOCK))


# The directories this process holds: lock file -> its content.
_held: dict[Path, str] = {}
# Holders taken over, said in the log once logging is set up (see hold_run_directory).
_taken_over: list[str] = []


def hold_run_directory(run_dir: str | Path, command: str, *, log_now: bool = True) -> bool:
    """Hold ``run_dir`` for this process until it exits (or :func:`release_run_directory`), or
    raise :class:`RunDirectoryInUse` naming the live process that holds it. Returns whether it
    was taken now: False when this process holds it already, or is not its run's first process.
    ``log_now=False`` keeps the line on a holder taken over for the next call (Hydra has not set
    up logging before its run starts)."""
    lock = lock_file(run_dir)
    taken = first_process() and lock not in _held
    if taken:
        lock.parent.mkdir(parents=True, exist_ok=True)
        _held[lock] = take(lock, Holder.this_process(command))
        if len(_held) == 1:
            atexit.register(release_all)
    if log_now:
        for line in _taken_over:
            log.warning("%s", line)
        _taken_over.clear()
    return taken


def take(lock: Path, holder: Holder) -> str:
    """Create ``lock`` naming ``holder``, taking it over from a holder that has ended; returns
    what was written."""
    text, other = holder.text(), None
    for _ in range(8):  # another turn when some process created or removed it meanwhile
        try:
            descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
            return text
        try:
            found = lock.read_text()
        except FileNotFoundError:  # its holder has just released it
            continue
        other = Holder.parse(found)
        why = other.ended() if other is not None else None
        if why is None:
            break
        if move_aside(lock, found):
            _taken_over.append(f"Took over {lock} from {other}: {why}.")
    raise RunDirectoryInUse(in_use_message(lock, other))


def move_aside(lock: Path, ended: str) -> bool:
    """Remove ``lock`` if it still holds ``ended`` (the content judged to be an ended holder's),
    never a lock that another process has taken over meanwhile; True if it was removed."""
    aside = lock.with_name(f"{lock.name}.{os.getpid()}-{secrets.token_hex(3)}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    if aside.read_text() == ended:
        aside.unlink()
        return True
    with suppress(FileExistsError):  # another process's fresh lock: put it back
        os.link(aside, lock)
    aside.unlink()
    return False


def in_use_message(lock: Path, holder: Holder | None) -> str:
    run_dir = lock.parent
    if holder is None:
        who = f"a process whose lock {lock} cannot be read"
        unknown = f" If no process runs there, delete {lock} and run this command again."
    else:
        who = f"a live run: {holder}"
        unknown = (
            ""
            if holder.host == socket.gethostname()
            else (
                f" It runs on another host, which cannot be asked whether it still runs: if it "
                f"has ended (its machine went down), delete {lock} and run this command again."
            )
        )
    return (
        f"{run_dir} is in use by {who}. Two processes in one run directory would write over "
        "each other's checkpoints and logs, so this one stops before writing anything. Wait "
        f"for that run to end, or {new_directory_hint()}.{unknown}"
    )


def release_run_directory(run_dir: str | Path) -> None:
    """Give up ``run_dir`` if this process holds it: its lock file is deleted."""
    lock = lock_file(run_dir)
    text = _held.pop(lock, None)
    if text is None or Holder.parse(text).pid != os.getpid():  # a forked child's copy
        return
    with suppress(FileNotFoundError):
        if lock.read_text() == text:  # not taken over meanwhile (judged ended by mistake)
            lock.unlink()


def release_all() -> None:
    for lock in list(_held):
        release_run_directory(lock.parent)


@contextmanager
def run_directory_held(run_dir: str | Path, command: str) -> Iterator[None]:
    """Hold ``run_dir`` within the block, unless this process holds it already (then the
    holder's own end releases it)."""
    taken = hold_run_directory(run_dir, command)
    try:
        yield
    finally:
        if taken:
            release_run_directory(run_dir)


# --- How to run again, here or elsewhere ---------------------------------------------------
