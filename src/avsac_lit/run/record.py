"""What a run records about itself: ``metrics.json`` (final metrics with the facts needed to
trust them: overrides, commit, hardware, wall time)."""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from avsac_lit.checkpoints.versions import suite_version
from avsac_lit.run.torchrun import launcher, torchrun_facts
from avsac_lit.storage.atomic import atomic_path

log = logging.getLogger(__name__)


def run_facts(cfg: DictConfig) -> dict:
    """What metrics.json records about any run, besides its metrics. Taken when the run starts."""
    return {
        "task_name": cfg.task_name,
        "task": cfg.data.task,
        "model": cfg.model.name,
        "backbone": cfg.backbone.name,
        "seed": cfg.get("seed"),
        "overrides": hydra_overrides(),
        "commit": source_version(),
        "hardware": hardware(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
    }


def process_facts(trainer) -> dict:
    """How many processes and nodes the run used, what started them and, in a SLURM job or under
    torchrun, which job or run it was (their restarts count the requeues and elastic restarts: a
    run that survived time limits or a lost process says so)."""
    facts = {
        "launcher": launcher(),
        "world_size": trainer.world_size,
        "nodes": trainer.num_nodes,
        "processes_per_node": trainer.num_devices,
        "strategy": type(trainer.strategy).__name__,
        # torch's SyncBatchNorm in place of BatchNorm (sync_batchnorm, on GPUs).
        "sync_batchnorm": getattr(trainer.strategy, "_layer_sync", None) is not None,
    }
    if facts["launcher"] == "torchrun":
        facts["torchrun"] = torchrun_facts()
    if "SLURM_JOB_ID" in os.environ:
        env = os.environ.get
        facts["slurm"] = {
            "job_id": env("SLURM_JOB_ID"),
            "array_job_id": env("SLURM_ARRAY_JOB_ID"),
            "array_task_id": env("SLURM_ARRAY_TASK_ID"),
            "restarts": int(env("SLURM_RESTART_COUNT", "0")),
            "nodes": env("SLURM_JOB_NODELIST"),
            "tasks": int(env("SLURM_NTASKS", "1")),
            "partition": env("SLURM_JOB_PARTITION"),
        }
    return facts


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensors and numbers -> JSON-ready floats (NaN and inf as None)."""
    scalars = {}
    for name, value in metrics.items():
        number = float(value.item() if hasattr(value, "item") else value)
        scalars[name] = number if math.isfinite(number) else None
    return scalars


@rank_zero_only
def write_metrics(path: Path, metrics: dict[str, float], **extra: Any) -> None:
    """``metrics.json``: final metrics plus run facts, for tools that read results without a
    logger (the report of the paper tables, scripts). Written whole or not at all."""
    bad = [name for name, value in metrics.items() if value is None or not math.isfinite(value)]
    if bad:
        raise ValueError(
            f"Not writing {path}: {', '.join(sorted(bad))} is not a finite number (a NaN or "
            "infinity in the run's results). The validation and test steps stop on one, naming "
            "the clips; this one came from elsewhere: report it with the run's train.log."
        )
    record = {"metrics": dict(sorted(metrics.items())), **extra}
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    log.info("Metrics written to %s", path)


def hydra_overrides() -> list[str]:
    """The command-line overrides of this run, when running under Hydra."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


@functools.cache
def source_version() -> str:
    """The git commit of the code that runs, ``+dirty`` when the working tree had changes; for
    an installed package (no checkout around it), ``avsac-lit <version>``. Read once per
    process: the jobs of a multirun that share a process run the code it imported, whatever
    happens to the checkout meanwhile."""
    package = Path(__file__).resolve().parents[1]
    repo = package.parents[1]
    installed = f"avsac-lit {suite_version()}"
    if package != repo / "src" / "avsac_lit" or not (repo / ".git").exists():
        return installed

    def git(*args: str) -> str:
        command = ["git", "-C", str(repo), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=10)
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return installed
    return commit + ("+dirty" if dirty else "")


def hardware() -> str:
    """One line on what the run ran on: the GPUs if any, else the CPU, with the core count."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count} x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU only: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def adopt_csv_columns(trainer) -> None:
    """Let the CSV logger know the columns its file already has. Under ``ddp_spawn`` the rows of
    ``fit`` were written by a worker process, so the main process's logger, which writes the test
    rows next, would not know them and fail rewriting the file's header. Only the first process
    writes the file (the others' loggers hold no experiment)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        table = Path(logger.experiment.metrics_file_path)
        if table.is_file():
            with table.open(newline="") as file:
                header = next(csv.reader(file), [])
            keys = set(logger.experiment.metrics_keys) | set(header)
            logger.experiment.metrics_keys = sorted(keys)
