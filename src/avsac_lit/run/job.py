"""This process's job: one run or a job of a multirun, its SLURM job and rank, its command line,
and how to run it again: in its directory, in a new one, on another disk (the hints the suite's
messages give).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

# The environment variables that number a run's processes; the first process has 0 (or none).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def slurm_job_id() -> str | None:
    """The job to requeue (an array task as ARRAY_TASK), or None outside a SLURM batch job."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def first_process() -> bool:
    """Whether this is the first process of its run (the only one that holds the directory)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def this_command() -> str:
    """This process's command line, as it was typed (``python -m MODULE ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        return shlex.join(["python", "-m", spec.name, *sys.argv[1:]])
    return shlex.join(sys.argv)


def in_a_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def rerun_hint(run_dir: Path) -> str:
    """How to run a stopped run again in its directory: a multirun's job by submitting the
    multirun again into its sweep directory (its finished jobs are kept as they are)."""
    if in_a_multirun():
        sweep = HydraConfig.get().sweep.dir
        return (f"run the same multirun with hydra.sweep.dir={sweep} (its finished jobs keep "
                "their results)")  # fmt: skip
    return f"run the same command with hydra.run.dir={run_dir}"


def new_directory_hint() -> str:
    """How to run this command in a new directory instead."""
    key = "hydra.sweep.dir" if in_a_multirun() else "hydra.run.dir"
    return f"choose another directory: {key}=NEW_DIR, or leave {key} out (a new time-stamped one)"


def another_disk_setting(run_dir: Path) -> str:
    """The setting that puts a new run on another disk: ``paths.log_dir=`` where Hydra makes the
    run's (or sweep's) directory from it, as by default; ``hydra.run.dir=`` (``hydra.sweep.dir=``)
    where it was set, which ``paths.log_dir`` no longer moves."""
    if not HydraConfig.initialized():  # a run built in Python: its directory is given there
        return f"/another/disk/{run_dir.name}"
    key = "sweep" if in_a_multirun() else "run"
    directory = OmegaConf.to_container(HydraConfig.get()[key], resolve=False)["dir"]
    if "${paths.log_dir}" in str(directory):
        return "paths.log_dir=/another/disk"
    name = Path(HydraConfig.get()[key].dir).name if key == "sweep" else run_dir.name
    return f"hydra.{key}.dir=/another/disk/{name}"
