"""Run directories that hold an earlier run, refused before Hydra writes into them
(:class:`KeepEarlierRuns`, a Hydra callback that also takes the directory's lock:
:mod:`avsac_lit.run.lock`). The same training command again continues its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from avsac_lit.run.job import this_command
from avsac_lit.run.lock import RunDirectoryInUse, hold_run_directory, release_run_directory
from avsac_lit.run.stop import LAST
from avsac_lit.run.torchrun import torchrun_refusal

# What an earlier run leaves in its directory (Hydra's record, the resolved config, results,
# a checkpoints/ that is not empty: one made, or linked to other storage, before a run is not).
RUN_FILES = (".hydra/overrides.yaml", "config.yaml", "metrics.json", "checkpoints")


class KeepEarlierRuns(HydraCallback):
    """Refuses, before Hydra writes anything, what torchrun cannot run
    (:func:`~avsac_lit.run.torchrun.torchrun_refusal`), a command whose run directory
    (``hydra.run.dir``) is held by another live process (:mod:`avsac_lit.run.lock`), or whose
    run or sweep directory (``hydra.sweep.dir``) holds an earlier run of another command, whose
    config, logs and metrics it would overwrite. The same training command again is allowed: it
    continues that run (:func:`resume_point`), as a requeued SLURM job or a restarted torchrun
    does. The run's directory (each job's, in a multirun) is held from then on, until the
    process exits or the job ends.

    Hydra turns a callback's exceptions into warnings and goes on, so a refusal is a SystemExit
    (status 1, its message on standard error)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        refusal = torchrun_refusal(config)
        if refusal is not None:
            raise SystemExit(f"Refused: {refusal}")
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
        refusal = torchrun_refusal(config, multirun=True)
        if refusal is not None:
            raise SystemExit(f"Refused: {refusal}")
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
