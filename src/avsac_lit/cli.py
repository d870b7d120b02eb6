"""What every command-line entry point does around its task: the ``extras`` switches, and a crash
logged with its run directory."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from avsac_lit.atomic import disk_write_error
from avsac_lit.resume import RunStopped, exit_stopped

log = logging.getLogger(__name__)


def task_wrapper(task: Callable[..., dict]) -> Callable[..., dict]:
    """Runs a task (``task(cfg, ...)``), logs a crash with its run directory, and always
    finishes a W&B run, so that the next job of a multirun starts its own run instead of
    logging into this one."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig, *args: Any, **kwargs: Any) -> dict:
        try:
            return task(cfg, *args, **kwargs)
        except RunStopped as stop:  # on purpose: one line, no traceback
            exit_stopped(stop)
            raise
        except BaseException as error:
            # A write the disk refused, also one the suite does not make itself (a logger's),
            # is said as the suite's own writes say it: where, how much space, how to go on.
            named = disk_write_error(error)
            if named is None:
                log.exception("The run failed; its directory is %s", cfg.paths.output_dir)
                raise
            log.error("The run failed; its directory is %s. %s", cfg.paths.output_dir, named)
            if named is error:
                raise
            raise named from error
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
