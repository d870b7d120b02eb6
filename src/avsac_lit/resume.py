"""Stopping and resuming a run: the whole story, in one file.

**How a run is stopped.** Three signals stop a training run on purpose:

* the *requeue signal* (``requeue_signal``, ``USR2`` by default): what SLURM sends
  ``hydra.launcher.signal_delay_s`` seconds before a job's time limit (``hydra/launcher=slurm``
  asks for exactly this signal), and what a preemption script sends (``scancel --signal=USR2``);
* ``SIGTERM``: ``scancel``, ``scontrol requeue``, a node drain, ``kill``;
* ``SIGINT``: Ctrl-C (a second Ctrl-C stops the run at once, without a checkpoint).

Either way :class:`StopSignals` only notes the signal; the run goes on to the next point where
its whole state can be saved as the uninterrupted run would have it (:class:`StopAndResume`,
every process deciding together):

* the end of a training batch that is not its epoch's last: ``checkpoints/last.ckpt`` is written
  there, mid-epoch (the last batch is followed by the epoch's validation, which a resume from
  there would skip, so a stop waits past it);
* the start of an epoch, when the previous epoch's validation wrote ``last.ckpt`` and nothing
  has trained since;
* the start of training, or a test batch: nothing has trained since ``last.ckpt``.

Then, on the requeue signal under SLURM, the first process asks SLURM to requeue the job
(``scontrol requeue``); every process exits with status 128 + the signal's number, after one
line that says what stopped the run and how to resume it (:class:`RunStopped`). Lightning's own
handlers (its SLURM requeue on ``USR1``, which saves in the middle of a step, and its ``SIGTERM``
exception, which exits with status 0) and submitit's (which requeues without a checkpoint) are
replaced while the run lasts: one signal, one handler. The command's handler stays until its
process exits: a signal that comes after the run has ended is logged, and the process ends as
it was ending (with status 0 for a run that finished).

**How a run resumes.** ``ckpt_path=...`` names the checkpoint a new run starts from. A run
whose directory already holds its own ``checkpoints/last.ckpt`` continues from that, with
``ckpt_path`` or without (:func:`resume_point`): a requeued job (it runs in the same directory),
or the same command again with the same ``hydra.run.dir``, so a run started from another run's
checkpoint never starts from it again over its own progress. A directory whose run has finished
(``metrics.json``) is never run again, and one is held by its live run
(:mod:`avsac_lit.rundir`): a second process there is refused.
The continuation is exact because the checkpoint holds, besides the weights, optimiser,
scheduler and loop counters that Lightning saves:

* the random state (``AVSLitModule.on_save_checkpoint``), restored before the next batch;
* the best checkpoints' scores (``callbacks.ResumableCheckpoint``), carried into a new directory;
* the partial sums of an interrupted epoch's training metrics, per process
  (``AVSLitModule.on_save_checkpoint``);

and because the training order is a function of the seed and the epoch only
(``data.samplers.TrainSampler``): an epoch interrupted after k batches continues with batch k+1
(:func:`continue_interrupted_epoch`). The CSV log's rows before the checkpoint are carried into
the resumed run's file (:func:`carry_csv_history`), so it holds the whole history.
"""

from __future__ import annotations

import csv
import json
import logging
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from avsac_lit.atomic import atomic_path
from avsac_lit.checkpoint import checkpoint_config, read_checkpoint, training_identity
from avsac_lit.rundir import (
    RunDirectoryInUse,
    hold_run_directory,
    release_run_directory,
    rerun_hint,
    slurm_job_id,
    this_command,
)

log = logging.getLogger(__name__)

LAST = "last.ckpt"


# --- Stopping -------------------------------------------------------------------------------


class RunStopped(SystemExit):
    """The run stopped on a signal, at a point it resumes from exactly. Exits with status
    128 + the signal's number (a SystemExit: Hydra and submitit let it through, so a requeued
    SLURM job leaves no result behind and its launcher waits for the next attempt)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(128 + signum)
        self.message = message

    def __str__(self) -> str:
        return self.message


def signal_number(name: str | int) -> signal.Signals:
    """``USR2``, ``SIGUSR2`` or 12 -> signal.SIGUSR2, or a ValueError naming the setting."""
    try:
        if isinstance(name, int):
            return signal.Signals(name)
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError):
        raise ValueError(
            f"requeue_signal={name!r} is not a signal. Expected a name such as USR2 (the "
            "default, what hydra/launcher=slurm asks SLURM to send before a time limit) or USR1."
        ) from None


class StopSignals:
    """This process's handler for the signals that stop a run: it notes the first one (and
    passes it on to worker processes that Lightning started, which note it in turn). Installed
    for the whole run (by the command for the rest of its process, by :func:`train` otherwise),
    and again by :class:`StopAndResume` each time a trainer starts, over the handlers Lightning
    registers then.

    ``SIGINT`` (Ctrl-C) stops a run as ``SIGTERM`` does; a second one stops it at once, without
    a checkpoint. Once the run has ended (:attr:`ended`), a signal has nothing left to stop or
    requeue: it is logged, and the process ends as it was ending (killed by the signal, a SLURM
    job that had finished would be recorded as failed).

    Args:
        requeue_signal: the signal sent before a time limit or a preemption, on which a SLURM
            job requeues itself after its checkpoint.
        run_dir: the run's directory, named by the line of a run stopped at once.
    """

    def __init__(self, requeue_signal: str | int = "USR2", run_dir: str | Path = ".") -> None:
        self.requeue_signal = signal_number(requeue_signal)
        self.run_dir = Path(run_dir)
        self.received: signal.Signals | None = None
        self.interrupts = 0  # SIGINTs received
        self.ended = False
        self.children: Any = None  # a Lightning launcher with worker processes, if any
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        return tuple(dict.fromkeys((self.requeue_signal, signal.SIGTERM, signal.SIGINT)))

    def install(self) -> None:
        for signum in self.signals:
            previous = signal.signal(signum, self.handle)
            self._previous.setdefault(signum, previous)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc_info) -> None:
        self.uninstall()

    def handle(self, signum: int, frame: Any) -> None:
        # A signal handler: note, never save or exit here (the step may be half done), but on
        # a second Ctrl-C, which asks for exactly that.
        received = signal.Signals(signum)
        if received == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise self.stopped_at_once()
        if self.ended:
            log.warning("Received %s after the run had ended: nothing to stop or requeue; the "
                        "process ends as it was ending.", received.name)  # fmt: skip
            return
        if self.received is None:
            self.received = received
            again = (" Press Ctrl-C again to stop at once, without a checkpoint."
                     if received == signal.SIGINT else "")  # fmt: skip
            log.warning("Received %s: the run stops at the next point it can resume from "
                        "exactly, and checkpoints there.%s", received.name, again)  # fmt: skip
        kill = getattr(self.children, "kill", None)
        # A terminal's Ctrl-C reaches every process of the run itself: passed on, it would
        # reach the workers twice, and stop them at once.
        if kill is not None and received != signal.SIGINT:
            kill(signum)

    def stopped_at_once(self) -> RunStopped:
        """What a second Ctrl-C raises: the run stops where it stands, its line says how to
        resume from the last checkpoint."""
        if self.ended:
            message = "Stopped at once by a second SIGINT; the run had ended, its results written."
        else:
            where = "at once on a second Ctrl-C, without a new checkpoint"
            message = stop_message(signal.SIGINT, where, self.run_dir, requeued=False)
        return RunStopped(message, signal.SIGINT)

    def __getstate__(self) -> dict:
        # Sent to worker processes (ddp_spawn) with the callbacks: handlers stay in this one.
        return {**self.__dict__, "children": None, "_previous": {}}


class StopAndResume(Callback):
    """Stops a run that received a stop signal at the next point where it resumes exactly (see
    the module's docstring), writing ``last.ckpt`` there when it is not current, and requeues a
    SLURM job on the requeue signal."""

    def __init__(self, signals: StopSignals) -> None:
        self.signals = signals

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.take_over_signals(trainer)
        if trainer.fit_loop.restarted_mid_epoch:
            recall_epoch_start_values(trainer)
        if self.all_asked(trainer):
            self.stop(trainer, "before training started; nothing trained since the checkpoint")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.take_over_signals(trainer)

    def take_over_signals(self, trainer: L.Trainer) -> None:
        """Install the handler over the ones Lightning registered as the trainer started, taking
        over a SIGTERM that Lightning's noted meanwhile (it would end the run at the next batch
        with a SystemExit of status 0, and no checkpoint)."""
        self.signals.install()
        connector = trainer._signal_connector
        if connector.received_sigterm:
            connector.received_sigterm = False
            self.signals.received = self.signals.received or signal.SIGTERM

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.all_asked(trainer) and last_checkpoint_is_current(trainer):
            self.stop(trainer, f"at the start of epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches or not self.all_asked(trainer):
            return
        path = save_last_checkpoint(trainer)
        self.stop(trainer, f"in epoch {trainer.current_epoch} after its batch {batch_idx + 1} "
                           f"(step {trainer.global_step}), checkpointed to {path}")  # fmt: skip

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        # Not decided together: the processes of a distributed run may test different numbers
        # of batches (the last one goes to one process), and a collective per batch would then
        # wait forever. Each process hears the signal (SLURM signals every task, ddp_spawn's
        # main process passes it on) and a test restarts from its beginning anyway.
        if self.signals.received is not None:
            self.stop(trainer, "while testing; training had ended")

    def all_asked(self, trainer: L.Trainer) -> bool:
        """Whether any process received a stop signal: decided by all together, so that every
        process stops at the same batch."""
        return trainer.strategy.reduce_boolean_decision(
            self.signals.received is not None, all=False
        )

    def stop(self, trainer: L.Trainer, where: str) -> None:
        # A process that did not receive the signal itself stops on the others' decision.
        received = self.signals.received or self.signals.requeue_signal
        requeued = received == self.signals.requeue_signal and requeue_slurm_job(trainer)
        raise RunStopped(stop_message(received, where, trainer.default_root_dir, requeued),
                         received)  # fmt: skip


def recall_epoch_start_values(trainer: L.Trainer) -> None:
    """The values logged as an epoch starts (the learning rate), for an epoch resumed in its
    middle, which does not start again: the final metrics hold them as the uninterrupted run's
    do. The CSV log already has them (carried over)."""
    for callback in trainer.callbacks:
        if isinstance(callback, LearningRateMonitor) and callback.logging_interval != "step":
            interval = "epoch" if callback.logging_interval is None else "any"
            callback._extract_stats(trainer, interval)  # sets trainer.callback_metrics


def last_checkpoint_is_current(trainer: L.Trainer) -> bool:
    """Whether ``last.ckpt`` holds the state as it is now: written after the last step."""
    callback = trainer.checkpoint_callback
    return bool(
        callback is not None
        and callback.last_model_path
        and Path(callback.last_model_path).is_file()
        and callback._last_global_step_saved == trainer.global_step
    )


def save_last_checkpoint(trainer: L.Trainer) -> str:
    """Write ``last.ckpt`` as the checkpoint callback writes it (every process takes part)."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.save_last:
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        return callback.last_model_path
    path = str(Path(trainer.default_root_dir) / "checkpoints" / LAST)
    trainer.save_checkpoint(path)
    return path


def requeue_slurm_job(trainer: L.Trainer) -> bool:
    """Under SLURM, the first process asks SLURM to run the job again; True if it did (or is
    another process of a job that does)."""
    job = slurm_job_id()
    if job is None:
        return False
    if trainer.is_global_zero:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
            return False
        log.info("Requeued SLURM job %s.", job)
    return True


def stop_message(received: signal.Signals, where: str, run_dir: str | Path, requeued: bool) -> str:
    """The one line a stopped run leaves."""
    run_dir = Path(run_dir)
    if requeued:
        return (f"Stopped by {received.name} {where}; SLURM requeued the job, which continues "
                "from its last.ckpt.")  # fmt: skip
    last = run_dir / "checkpoints" / LAST
    resume = f"{rerun_hint(run_dir)} (or continue in a new directory with ckpt_path={last})"
    if slurm_job_id() is not None:
        resume = f"if SLURM requeues the job, it continues from its last.ckpt; if not, {resume}"
    else:
        resume = f"to resume, {resume}"
    return f"Stopped by {received.name} {where}; {resume}."


def stopped_worker(error: BaseException) -> signal.Signals | None:
    """The signal a worker process (ddp_spawn) stopped on, read from its exit status
    (128 + the signal's number, see :class:`RunStopped`); None for any other failure."""
    code = getattr(error, "exit_code", None)
    if not isinstance(code, int) or code <= 128:
        return None
    try:
        return signal.Signals(code - 128)
    except ValueError:
        return None


def exit_stopped(stop: RunStopped) -> None:
    """How a stopped run ends: its line on standard error and in the log, then its status."""
    log.error("%s", stop)
    print(stop, file=sys.stderr, flush=True)


# --- Resuming -------------------------------------------------------------------------------

# What an earlier run leaves in its directory (Hydra's record, the resolved config, results,
# a checkpoints/ that is not empty: one made, or linked to other storage, before a run is not).
RUN_FILES = (".hydra/overrides.yaml", "config.yaml", "metrics.json", "checkpoints")


class KeepEarlierRuns(HydraCallback):
    """Refuses, before Hydra writes anything, a command whose run directory (``hydra.run.dir``)
    is held by another live process (:mod:`avsac_lit.rundir`), or whose run or sweep directory
    (``hydra.sweep.dir``) holds an earlier run of another command, whose config, logs and
    metrics it would overwrite. The same training command again is allowed: it continues that
    run (:func:`resume_point`), as a requeued SLURM job does. The run's directory (each job's,
    in a multirun) is held from then on, until the process exits or the job ends.

    Hydra turns a callback's exceptions into warnings and goes on, so a refusal is a SystemExit
    (status 1, its message on standard error)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        try:
            # Held first: two identical commands started together both find it empty.
            taken = hold_run_directory(run_dir, this_command(), log_now=False)
        except RunDirectoryInUse as refused:
            raise SystemExit(f"Refused: {refused}") from None
        try:
            check_run_directory(
                run_dir,
                list(config.hydra.overrides.task),
                resumes=bool(config.get("train")),
                command=f"python -m avsac_lit.{config.hydra.job.name}",
            )
        except FileExistsError as refused:
            if taken:
                release_run_directory(run_dir)
            raise SystemExit(f"Refused: {refused}") from None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A multirun's job holds its own directory (once Hydra has written its record there);
        # a single run's is held already, and the line on a holder taken over is logged now.
        overrides = " ".join(config.hydra.overrides.task)
        command = f"python -m avsac_lit.{config.hydra.job.name} {overrides}".strip()
        try:
            hold_run_directory(config.hydra.runtime.output_dir, command)
        except RunDirectoryInUse as refused:
            raise SystemExit(f"Refused: {refused}") from None

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_run_directory(config.hydra.runtime.output_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep_directory(config)
        except FileExistsError as refused:
            raise SystemExit(f"Refused: {refused}") from None


def check_sweep_directory(config: DictConfig) -> None:
    """Refuse a sweep directory that holds an earlier multirun of other overrides (or, for
    commands that do not resume, any multirun)."""
    sweep = Path(config.hydra.sweep.dir)
    record = sweep / "multirun.yaml"
    if not record.is_file():
        return
    earlier = list(OmegaConf.load(record).hydra.overrides.task)
    current = list(config.hydra.overrides.task)
    if sorted(earlier) != sorted(current) or not config.get("train"):
        raise FileExistsError(
            f"{sweep} holds an earlier multirun ({' '.join(earlier) or 'no overrides'}), "
            "which this one would overwrite. To go on with that multirun, submit its own "
            f"command again with hydra.sweep.dir={sweep} (its finished jobs keep their "
            "results); to start this one, choose a new hydra.sweep.dir (or leave it out: a "
            "new time-stamped one)."
        )


def earlier_run(run_dir: Path) -> bool:
    return any(
        path.exists() and not (path.is_dir() and not any(path.iterdir()))
        for path in (run_dir / name for name in RUN_FILES)
    )


def check_run_directory(run_dir: Path, overrides: list[str], resumes: bool, command: str) -> None:
    """Refuse ``run_dir`` if it holds an earlier run that this command would overwrite: a run of
    other overrides, or (for commands that do not resume, like eval) any run."""
    if not earlier_run(run_dir):
        return
    record = run_dir / ".hydra" / "overrides.yaml"
    earlier = list(OmegaConf.load(record)) if record.is_file() else None
    if resumes and earlier is not None and sorted(earlier) == sorted(overrides):
        return  # the same command: it continues that run, or says it has finished
    last = run_dir / "checkpoints" / LAST
    finished = (run_dir / "metrics.json").is_file()
    shown = " ".join(earlier) if earlier else "unknown overrides"
    if finished or not resumes:
        keep = "It has finished: its results stay as they are."
        go_on = (f" To train on from its checkpoint, start a new directory with "
                 f"ckpt_path={last}." if resumes and last.is_file() else "")  # fmt: skip
    elif last.is_file():
        keep = (f"To resume it, run its own command again: {command} {shown} "
                f"hydra.run.dir={run_dir} (it continues from {last}).")  # fmt: skip
        go_on = ""
    else:
        keep = "It wrote no checkpoint; delete the directory yourself if it is not needed."
        go_on = ""
    raise FileExistsError(
        f"{run_dir} holds an earlier run ({command} {shown}), which this command "
        f"({' '.join(overrides) or 'no overrides'}) would overwrite. {keep} To start this run, "
        f"choose a new directory: hydra.run.dir=NEW_DIR, or leave hydra.run.dir out (a new "
        f"time-stamped one).{go_on}"
    )


class RunFinished(FileExistsError):
    """The run directory holds a finished run: it is not run again (a multirun submitted again
    into its sweep directory keeps its finished jobs' results and runs the others)."""


@dataclass
class ResumePoint:
    """Where a training run starts: ``ckpt_path`` (None: from scratch), the CSV rows the
    interrupted run logged up to that checkpoint, and, if it was stopped while testing, the
    metrics its training had ended with (a finished fit leaves nothing to log again)."""

    ckpt_path: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    fit_metrics: dict[str, float] = field(default_factory=dict)


FIT_METRICS = "fit_metrics.json"


@rank_zero_only
def save_fit_metrics(run_dir: str | Path, metrics: dict[str, float], global_step: int) -> None:
    """What a run stopped while testing keeps of its training's final metrics, until the run
    that tests again has written ``metrics.json``."""
    record = {"global_step": global_step, "metrics": metrics}
    with atomic_path(Path(run_dir) / FIT_METRICS) as partial:
        partial.write_text(json.dumps(record, indent=2) + "\n")


def saved_fit_metrics(ckpt_path: str | Path) -> dict[str, float]:
    """The training metrics saved beside ``ckpt_path``'s run when it stopped while testing, if
    that checkpoint is the one training ended with."""
    path = Path(ckpt_path).absolute().parent.parent / FIT_METRICS
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    step = read_checkpoint(Path(ckpt_path), mmap=True)["global_step"]
    return record["metrics"] if record.get("global_step") == step else {}


def resume_point(cfg: DictConfig) -> ResumePoint:
    """The checkpoint a training run continues from: the run directory's own ``last.ckpt`` if
    it holds one (a requeued job, or the same command with the same run directory: a run
    started from ``ckpt_path=A`` continues from its own checkpoint, not from A again), else
    ``ckpt_path``. Refuses a directory whose run has finished, and a checkpoint of another kind
    of run."""
    if not cfg.get("train"):
        return ResumePoint()
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = cfg.get("ckpt_path")
    own = output_dir / "checkpoints" / LAST
    if own.is_file() and not same_file(own, ckpt_path):
        if (output_dir / "metrics.json").is_file():
            raise RunFinished(
                f"{output_dir} holds a finished run (metrics.json): its results stay as they are. "
                "Choose another hydra.run.dir, or pass ckpt_path=... to train on from its "
                "checkpoint into a new directory."
            )
        started = "" if ckpt_path is None else f", which started from ckpt_path={ckpt_path}"
        log.info("%s already holds %s: continuing that run%s (requeued, or the same command "
                 "again).", output_dir, own.relative_to(output_dir), started)  # fmt: skip
        ckpt_path = str(own)
    elif ckpt_path is None:
        return ResumePoint()
    check_resumable(cfg, ckpt_path)
    log.info("Resuming from %s", ckpt_path)
    return ResumePoint(str(ckpt_path), csv_history(ckpt_path), saved_fit_metrics(ckpt_path))


def same_file(path: Path, other: str | Path | None) -> bool:
    try:
        return other is not None and path.samefile(other)
    except OSError:  # ``other`` is not there: refused by check_resumable
        return False


def check_resumable(cfg: DictConfig, ckpt_path: str | Path) -> None:
    """Resuming continues the same training: the checkpoint must be of this run's task and
    model. A checkpoint of another task (S4 weights resumed on MS3) would otherwise continue
    silently on the wrong data, and one of another model size fail in a wall of shape errors."""
    saved = checkpoint_config(ckpt_path, to_build=False)  # the run builds from its own config
    wanted, found = training_identity(cfg), training_identity(saved)
    differences = [
        f"{key}: {found.get(key)!r} in the checkpoint, {value!r} in this run"
        for key, value in wanted.items()
        if value is not None and found.get(key) != value  # None: filled in when the run is built
    ]
    if differences:
        shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
        raise ValueError(
            f"ckpt_path={ckpt_path} was written by another kind of run than this one ({shown}). "
            "Resume with the run's own settings (they are in the checkpoint's config.yaml, "
            "beside checkpoints/), or leave ckpt_path out to start a new run."
        )


def csv_history(ckpt_path: str | Path) -> list[dict[str, float]]:
    """The rows of ``csv/metrics.csv`` that the run which wrote ``ckpt_path`` logged up to that
    checkpoint's epoch; read before a resumed run's CSV logger starts (which deletes the file
    when the run resumes in its own directory). Rows of later epochs are left out: the resumed
    run trains them again. A run stopped on a signal logs nothing after its checkpoint."""
    ckpt_path = Path(ckpt_path)
    # Not resolved: checkpoints/ may be a link to other storage, its run's csv/ is not there.
    table = ckpt_path.absolute().parent.parent / "csv" / "metrics.csv"
    if not table.is_file():
        return []
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    epoch, step = checkpoint["epoch"], checkpoint["global_step"]
    with table.open(newline="") as file:
        rows = [
            {key: float(value) for key, value in row.items() if value not in ("", None)}
            for row in csv.DictReader(file)
        ]

    # Rows without an epoch (the learning rate, logged as an epoch starts) go by their step.
    def before_the_checkpoint(row: dict[str, float]) -> bool:
        return row["epoch"] <= epoch if "epoch" in row else row["step"] < step

    return [row for row in rows if before_the_checkpoint(row)]


def carry_csv_history(trainer: L.Trainer, rows: list[dict[str, float]]) -> None:
    """Write ``rows`` first into the CSV logger's ``metrics.csv``, so that a resumed run's file
    holds the whole history, as the uninterrupted run's would."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger) and rows:
            for row in rows:
                metrics = {
                    k: (int(v) if k == "epoch" else v) for k, v in row.items() if k != "step"
                }
                logger.experiment.log_metrics(metrics, step=int(row["step"]))
            logger.experiment.save()
            log.info("Carried %d rows of the resumed run's metrics.csv into %s", len(rows),
                     logger.experiment.metrics_file_path)  # fmt: skip


def continue_interrupted_epoch(trainer: L.Trainer | None, sampler) -> None:
    """Start a training ``sampler`` where a resumed run's training stands.

    Lightning asks for the loader after restoring its loops from the checkpoint and draws the
    first batch before it sets the sampler's epoch, so the epoch is set here; a checkpoint
    written mid-epoch continues that epoch with the batches it had not trained on.
    """
    if trainer is None or not trainer.ckpt_path:
        return
    epochs = trainer.fit_loop.epoch_progress
    sampler.set_epoch(epochs.current.processed)
    # processed, not completed: a checkpoint written at a batch's end holds its step.
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    batches = limited_batches(len(sampler.rank_batches()), trainer.limit_train_batches)
    mid_epoch = epochs.total.started == epochs.total.processed + 1 and 0 < done < batches
    if not mid_epoch:
        return
    # The loader draws its first batch in the interrupted epoch, which Lightning continues.
    sampler.skip_batches(done)
    # Lightning warns that such a resume is "unreliable" for loaders that start the epoch
    # again; this one does not.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")
    log.info(
        "Resuming from %s, written in the middle of epoch %d after %d of its %d batches: the "
        "epoch continues with the batches it had not trained on, as the interrupted run would "
        "have, its training metrics' sums restored.",
        trainer.ckpt_path, epochs.current.processed, done, batches,
    )  # fmt: skip


def limited_batches(batches: int, limit: int | float | None) -> int:
    """The batches an epoch trains on under ``trainer.limit_train_batches``, as Lightning
    counts them."""
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)
