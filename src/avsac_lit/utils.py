"""What train.py and eval.py share: building objects from the config, logging it, finishing runs."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import lightning as L
import rich.syntax
import rich.tree
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

from avsac_lit.data import AVSDataModule
from avsac_lit.module import AVSLitModule

log = logging.getLogger(__name__)


def task_wrapper(task: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
    """Runs a task, logs a crash with its run directory, and always finishes a W&B run, so that
    the next job of a multirun starts its own run instead of logging into this one."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> dict:
        try:
            return task(cfg)
        except BaseException:
            log.exception("The run failed; its directory is %s", cfg.paths.output_dir)
            raise
        finally:
            log.info("Run directory: %s", cfg.paths.output_dir)
            finish_wandb()

    return wrapped


def finish_wandb() -> None:
    if find_spec("wandb") is None:
        return
    import wandb

    if wandb.run is not None:
        log.info("Finishing the W&B run %s", wandb.run.name)
        wandb.finish()


def apply_extras(cfg: DictConfig) -> None:
    """The ``extras`` switches: silence warnings, print (and save) the config tree."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    order = ("data", "model", "backbone", "callbacks", "logger", "trainer", "paths", "extras")
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in order if f in cfg] + [f for f in cfg if f not in order]
    for field in fields:
        branch = tree.add(field, style="bold", guide_style="dim")
        node = cfg[field]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    Console().print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with save_to.open("w") as file:
            Console(file=file, width=120).print(tree)


def set_num_classes(cfg: DictConfig, datamodule: AVSDataModule) -> None:
    """Fill ``model.num_classes`` from the data (1 for S4/MS3, label2idx.json's count for AVSS),
    or check that a value given by hand matches it."""
    datamodule.check_root()
    found = datamodule.num_classes
    given = cfg.model.get("num_classes")
    if given is not None and given != found:
        raise ValueError(
            f"model.num_classes={given}, but data.root={datamodule.hparams.root} has {found} "
            "classes (label2idx.json for AVSS). Leave model.num_classes unset (null) to take the "
            "data's."
        )
    with open_dict(cfg):
        cfg.model.num_classes = found


def build_module(cfg: DictConfig) -> AVSLitModule:
    """The LightningModule from ``cfg.model``: net, loss, optimiser and scheduler partials."""
    model = cfg.model
    log.info("Instantiating model <%s> with backbone <%s>", model.net._target_, cfg.backbone.name)
    return AVSLitModule(
        net=instantiate(model.net),
        criterion=instantiate(model.loss),
        optimizer=instantiate(model.optimizer),
        scheduler=instantiate(model.scheduler) if model.get("scheduler") else None,
        scheduler_interval=model.get("scheduler_interval", "epoch"),
        warmup_steps=model.get("warmup_steps", 0),
        eval_padding_frames=model.get("eval_padding_frames", True),
        audio_share_batches=model.get("audio_share_batches", 16),
    )


def instantiate_group(group: DictConfig | None, kind: str) -> list[Any]:
    """Callbacks or loggers: every node with a ``_target_``; ``None`` gives ``[]``."""
    if not group:
        return []
    if not isinstance(group, DictConfig):
        raise TypeError(f"The {kind} config must be a mapping of name -> config, got {group!r}.")
    built = []
    for name, node in group.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("Instantiating %s %s <%s>", kind, name, node._target_)
            built.append(instantiate(node))
    return built


def parameter_counts(module: L.LightningModule) -> dict[str, int]:
    parameters = list(module.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    total = sum(p.numel() for p in parameters)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


@rank_zero_only
def log_hyperparameters(cfg: DictConfig, module: L.LightningModule, trainer: L.Trainer) -> None:
    """The resolved config and the parameter counts, once per run, to every logger."""
    if not trainer.loggers:
        return
    params = OmegaConf.to_container(cfg, resolve=True)
    counts = parameter_counts(module)
    params["model"]["params"] = counts
    for logger in trainer.loggers:
        logger.log_hyperparams(params)
    log.info(
        "Parameters: %.2fM trainable, %.2fM frozen",
        counts["trainable"] / 1e6,
        counts["frozen"] / 1e6,
    )


def save_resolved_config(cfg: DictConfig) -> Path:
    """``config.yaml`` in the run directory: the config as run, with num_classes filled in (Hydra's
    own ``.hydra/config.yaml`` is written before that)."""
    path = Path(cfg.paths.output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path


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
    logger (the report of issue tables, scripts)."""
    record = {"metrics": dict(sorted(metrics.items())), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("Metrics written to %s", path)


def hydra_overrides() -> list[str]:
    """The command-line overrides of this run, when running under Hydra."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


@functools.cache
def source_version() -> str:
    """The git commit of the code that runs, ``+dirty`` when the working tree had changes, or
    ``unknown`` outside a git checkout. Read once per process: the jobs of a multirun that share
    a process run the code it imported, whatever happens to the checkout meanwhile."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        command = ["git", "-C", str(repo), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=10)
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
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
