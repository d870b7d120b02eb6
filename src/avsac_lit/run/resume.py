"""Resuming a run where it stopped (how it stops: :mod:`avsac_lit.run.stop`).

**How a run resumes.** ``ckpt_path=...`` names the checkpoint a new run starts from. A run
whose directory already holds its own ``checkpoints/last.ckpt`` continues from that, with
``ckpt_path`` or without (:func:`resume_point`): a requeued job (it runs in the same directory),
or the same command again with the same ``hydra.run.dir``, so a run started from another run's
checkpoint never starts from it again over its own progress. A directory whose run has finished
(``metrics.json``) is never run again, and one is held by its live run
(:mod:`avsac_lit.run.lock`): a second process there is refused.
The continuation is exact because the checkpoint holds, besides the weights, optimiser,
scheduler and loop counters that Lightning saves:

* the random state (:class:`avsac_lit.run.exact_state.ExactResume`), restored before the next
  batch;
* the best checkpoints' scores (``callbacks.ResumableCheckpoint``), carried into a new directory;
* the partial sums of an interrupted epoch's training metrics, per process
  (``AVSLitModule.on_save_checkpoint``, through ``system.stage_metrics.StageMetrics``);

and because the training order is a function of the seed and the epoch only
(``data.samplers.TrainSampler``): an epoch interrupted after k batches continues with batch k+1
(:func:`continue_interrupted_epoch`). The CSV log's rows before the checkpoint are carried into
the resumed run's file (:func:`carry_csv_history`), so it holds the whole history.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from avsac_lit.checkpoints.io import (
    existing_checkpoint,
    read_checkpoint,
    run_config,
    training_identity,
)
from avsac_lit.run.stop import LAST
from avsac_lit.storage.atomic import atomic_path

log = logging.getLogger(__name__)


# --- Stopping -------------------------------------------------------------------------------


# --- Resuming -------------------------------------------------------------------------------


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


def saved_fit_metrics(ckpt_path: str | Path, checkpoint: dict) -> dict[str, float]:
    """The training metrics saved beside ``ckpt_path``'s run when it stopped while testing, if
    that checkpoint (its contents: ``checkpoint``) is the one training ended with."""
    path = Path(ckpt_path).absolute().parent.parent / FIT_METRICS
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return record["metrics"] if record.get("global_step") == checkpoint["global_step"] else {}


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
    checkpoint = read_checkpoint(Path(ckpt_path), mmap=True)  # read once, verified
    check_resumable(cfg, ckpt_path, checkpoint)
    log.info("Resuming from %s", ckpt_path)
    return ResumePoint(
        str(ckpt_path),
        csv_history(ckpt_path, checkpoint),
        saved_fit_metrics(ckpt_path, checkpoint),
    )


def same_file(path: Path, other: str | Path | None) -> bool:
    try:
        return other is not None and path.samefile(other)
    except OSError:  # ``other`` is not there: refused by check_resumable
        return False


def check_resumable(cfg: DictConfig, ckpt_path: str | Path, checkpoint: dict | None = None) -> None:
    """Resuming continues the same training: the checkpoint (its contents: ``checkpoint``, read
    here if not given) must be of this run's task and model. A checkpoint of another task (S4
    weights resumed on MS3) would otherwise continue silently on the wrong data, and one of
    another model size fail in a wall of shape errors."""
    if checkpoint is None:
        checkpoint = read_checkpoint(existing_checkpoint(ckpt_path), mmap=True)
    stored = (checkpoint.get("avsac_lit") or {}).get("config")
    # Only compared: the run builds from its own config, so the stored one's targets are not
    # checked (a run of a user's own class resumes from its checkpoints).
    saved = run_config(Path(ckpt_path), stored, None, to_build=False)
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


def csv_history(ckpt_path: str | Path, checkpoint: dict) -> list[dict[str, float]]:
    """The rows of ``csv/metrics.csv`` that the run which wrote ``ckpt_path`` (its contents:
    ``checkpoint``) logged up to that checkpoint's epoch; read before a resumed run's CSV logger
    starts (which deletes the file when the run resumes in its own directory). Rows of later
    epochs are left out: the resumed run trains them again. A run stopped on a signal logs
    nothing after its checkpoint."""
    ckpt_path = Path(ckpt_path)
    # Not resolved: checkpoints/ may be a link to other storage, its run's csv/ is not there.
    table = ckpt_path.absolute().parent.parent / "csv" / "metrics.csv"
    if not table.is_file():
        return []
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
