"""What every command-line entry point does around its task: the ``extras`` switches, a crash
logged with its run directory, and a refusal said in one line.

A refusal is an error the suite raised itself (:func:`raised_on_purpose`): a bad setting, a file
it will not read, a directory in use. Its message already names the file or setting, what was
expected and how to fix it, so a command ends with that message alone, ``avsac_lit.<command>:
<message>`` on standard error and exit status 1 (:func:`refusals_in_one_line`), instead of the two
tracebacks (the crash log's and Hydra's) that bury it. Any other error keeps its traceback, and
``HYDRA_FULL_ERROR=1`` shows one for a refusal too.
"""

from __future__ import annotations

import functools
import linecache
import logging
import os
import sys
import warnings
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import rich.syntax
import rich.tree
from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from avsac_lit.run.job import in_a_multirun
from avsac_lit.run.stop import RunStopped, exit_stopped
from avsac_lit.storage.atomic import disk_write_error

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
            if named is None and raised_on_purpose(error):
                # Named by its class too, as a traceback's last line would: how avsac_lit.report
                # says why a run of a sweep has no metrics.
                log.error("The run failed; its directory is %s. %s: %s", cfg.paths.output_dir,
                          type(refused(error)).__name__, refusal(error))  # fmt: skip
                raise
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


def refused(error: BaseException) -> BaseException:
    """The error a constructor raised, for one Hydra wrapped while building a config's object."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        return error.__cause__
    return error


def refusal(error: BaseException) -> str:
    return str(refused(error))


def raised_on_purpose(error: BaseException) -> bool:
    """Whether the suite raised ``error`` itself: the innermost frame of its traceback is a
    ``raise`` statement in the package. Such a message was written for the user (what is wrong,
    where, how to fix it); a crash inside a library, or an error of Python's in the suite's own
    code (a failed ``int()``, a missing key), is not, and keeps its traceback."""
    error = refused(error)
    trace = error.__traceback__
    if trace is None:
        return False
    while trace.tb_next is not None:
        trace = trace.tb_next
    frame = trace.tb_frame
    if frame.f_globals.get("__name__", "").partition(".")[0] != "avsac_lit":
        return False
    line = linecache.getline(frame.f_code.co_filename, trace.tb_lineno).lstrip()
    return line.startswith("raise ")


def refusals_in_one_line(command: str) -> Callable[[Callable], Callable]:
    """For a command's Hydra task: a refusal (:func:`raised_on_purpose`) ends the command with
    ``<command>: <message>`` on standard error and exit status 1, without a traceback. In a
    multirun the job's error goes to Hydra as before, which runs the other jobs first;
    ``HYDRA_FULL_ERROR=1`` keeps the traceback."""

    def decorate(task: Callable) -> Callable:
        @functools.wraps(task)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return task(*args, **kwargs)
            except Exception as error:
                full = os.environ.get("HYDRA_FULL_ERROR") == "1"
                if full or in_a_multirun() or not raised_on_purpose(error):
                    raise
                print(f"{command}: {refusal(error)}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None

        return wrapped

    return decorate


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
