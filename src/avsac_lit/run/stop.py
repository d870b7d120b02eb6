"""Stopping a run on purpose, at a point where it resumes exactly (:mod:`avsac_lit.run.resume`).

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
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor

from avsac_lit.run.job import rerun_hint, slurm_job_id

log = logging.getLogger(__name__)

LAST = "last.ckpt"


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
