"""Assembling a run from its composed config: the one place where configs become objects.

Every entry point goes through here: ``avsac_lit.train`` (a new run), ``avsac_lit.eval`` and
``avsac_lit.predict`` (a run rebuilt from the config its checkpoint carries), ``avsac_lit.convert``
and the notebooks. The configs ship inside the package (``avsac_lit/conf``) and are found as
:data:`CONFIG_PATH`, from a source checkout and from an installed wheel alike.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from avsac_lit.atomic import atomic_path, note_run_directory
from avsac_lit.data import AVSDataModule, DatasetLayoutError
from avsac_lit.models.counting import parameter_counts
from avsac_lit.module import AVSLitModule

log = logging.getLogger(__name__)

CONFIG_MODULE = "avsac_lit.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"


def slurm_tasks_per_node(trainer: DictConfig) -> int:
    """The tasks SLURM starts per node for a run on this trainer: one per device under
    ``strategy: ddp`` (Lightning takes its processes from SLURM); one otherwise (one process, or
    ddp_spawn, which starts its own)."""
    return int(trainer.get("devices") or 1) if trainer.get("strategy") == "ddp" else 1


def slurm_gpus_per_node(trainer: DictConfig) -> int | None:
    """The GPUs a SLURM job asks for per node: none for ``trainer.accelerator=cpu``, else the
    trainer's devices."""
    if str(trainer.get("accelerator", "auto")) == "cpu":
        return None
    return int(trainer.get("devices") or 1)


# Read by hydra/launcher=slurm, which derives the job's shape from the trainer.
for resolver in (slurm_tasks_per_node, slurm_gpus_per_node):
    OmegaConf.register_new_resolver(resolver.__name__, resolver, replace=True)


def compose_config(
    name: str = "train", overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> DictConfig:
    """The config ``name`` composed with ``overrides`` as the command line would, outside a Hydra
    app (notebooks, scripts, tests), with Hydra's runtime set so that ``${hydra:...}``
    resolves; the run directory is ``output_dir``."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: ${hydra:...} reads the HydraConfig set above
    return cfg


def set_num_classes(cfg: DictConfig, datamodule: AVSDataModule) -> None:
    """Fill ``model.num_classes`` from the data (1 for S4/MS3, label2idx.json's count for AVSS),
    or check that a value given by hand matches it."""
    try:
        datamodule.check_root()
    except DatasetLayoutError as error:
        # In the setting's words, which is what the user changes; the error says the rest (the
        # layout expected, where to get the data), so it is not chained to itself.
        raise DatasetLayoutError(f"data.root={datamodule.hparams.root}: {error}") from None
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
    """The LightningModule: ``cfg.model`` instantiated (net, loss, optimiser and scheduler
    partials, the training settings), every default from the model's YAML."""
    log.info(
        "Instantiating model <%s> with backbone <%s>", cfg.model.net._target_, cfg.backbone.name
    )
    module = instantiate(cfg.model)
    if cfg.get("compile"):
        module.net.compile()
    return module


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


# Where wandb.init connects unless WANDB_BASE_URL says otherwise, and how long the check waits
# for it (wandb itself waits about 100 s, then stops the run).
WANDB_DEFAULT_URL = "https://api.wandb.ai"
WANDB_PROBE_TIMEOUT_S = 5.0
WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")


@functools.cache
def unreachable(url: str) -> str | None:
    """Why ``url`` cannot be reached from this machine (through the proxies the environment
    names, as wandb goes), or None when it answers at all (an HTTP error status is an answer).
    Asked once per process: the jobs of a multirun share the answer."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=WANDB_PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        return str(error.reason)
    except (OSError, ValueError) as error:  # a timeout while reading; a malformed URL
        return str(error) or type(error).__name__


def wandb_offline_unless_reachable(cfg: DictConfig) -> None:
    """Switch ``cfg.logger``'s W&B logger to offline when the W&B server cannot be reached, with
    a warning that says where the offline run goes and how to upload it. On a cluster node
    without internet, wandb.init would wait about 100 s and stop the run (after its wait in the
    queue); offline, nothing is lost: ``wandb sync`` uploads the same run later. Not checked
    under WANDB_MODE=offline (or disabled) or with ``offline: true``."""
    loggers = cfg.get("logger")
    if not isinstance(loggers, DictConfig):
        return
    if os.environ.get("WANDB_MODE", "").lower() in WANDB_OFFLINE_MODES:
        return
    for node in loggers.values():
        is_wandb = isinstance(node, DictConfig) and str(node.get("_target_")).endswith(
            "WandbLogger"
        )
        if not is_wandb or node.get("offline"):
            continue
        url = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)
        reason = unreachable(url)
        if reason is None:
            continue
        with open_dict(node):
            node.offline = True
        runs = Path(node.get("save_dir") or os.environ.get("WANDB_DIR") or ".") / "wandb"
        log.warning(
            "W&B at %s cannot be reached from this machine (%s): this run logs to W&B offline "
            "instead, into %s/offline-run-*. Upload it later from a machine with network: "
            "wandb sync %s/offline-run-*. Set WANDB_MODE=offline to go offline without this "
            "check, or logger=csv for no W&B.",
            url, reason, runs, runs,
        )  # fmt: skip


def build_run(
    cfg: DictConfig,
    callbacks: DictConfig | None = None,
    extra_callbacks: Sequence[L.Callback] = (),
) -> tuple[AVSDataModule, AVSLitModule, L.Trainer]:
    """Seed, then build the data, the module (with the data's number of classes), the loggers
    and the trainer (with ``callbacks`` from the config and ``extra_callbacks``); save the
    resolved config and log it once."""
    check_trainer_settings(cfg.trainer)
    check_number_settings(cfg)
    wandb_offline_unless_reachable(cfg)  # before config.yaml records the logger's mode
    note_run_directory(cfg.paths.output_dir)  # named when a disk refuses one of its files
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    log.info("Instantiating datamodule <%s> for %s", cfg.data._target_, cfg.data.task)
    datamodule = instantiate(cfg.data)
    set_num_classes(cfg, datamodule)
    save_resolved_config(cfg)
    module = build_module(cfg)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    built_callbacks = [*instantiate_group(callbacks, "callback"), *extra_callbacks]
    loggers = instantiate_group(cfg.get("logger"), "logger")
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in built_callbacks):
        log.warning("No logger: the learning-rate monitor is left out.")
        built_callbacks = [c for c in built_callbacks if not isinstance(c, LearningRateMonitor)]
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=built_callbacks, logger=loggers, **cluster_settings(cfg.trainer)
    )
    # In the trainer's dtype now, not when fitting starts: a resumed checkpoint's weights are
    # loaded before that, and under 64-true a float32 module would round them.
    module = trainer.precision_plugin.convert_module(module)
    log_hyperparameters(cfg, module, trainer)
    return datamodule, module, trainer


def cluster_settings(trainer: DictConfig) -> dict[str, Any]:
    """What the trainer's config leaves to the machine it runs on:

    * in a SLURM job, Lightning's SLURM environment without its own requeue handling (it saves
      in the middle of a step on USR1): :mod:`avsac_lit.resume` stops and requeues runs;
    * ``sync_batchnorm: auto``: torch's SyncBatchNorm on GPUs; off on CPUs, where it refuses the
      tensors (the synthetic experiments' audio BatchNorm synchronises itself there).
    """
    settings: dict[str, Any] = {}
    if SLURMEnvironment.detect():
        plugins = list(instantiate(trainer.get("plugins")) or [])
        settings["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=False)]
    if trainer.get("sync_batchnorm") == "auto":
        accelerator = str(trainer.get("accelerator", "auto"))
        on_gpus = accelerator in ("gpu", "cuda") or (
            accelerator == "auto" and torch.cuda.is_available()
        )
        settings["sync_batchnorm"] = on_gpus
    return settings


# Trainer settings that must be whole numbers (or null), checked before anything is built: a
# string there would fail only after the model is built and the sanity check has run.
COUNTS = ("max_epochs", "min_epochs", "max_steps", "num_nodes", "check_val_every_n_epoch",
          "log_every_n_steps", "num_sanity_val_steps", "accumulate_grad_batches")  # fmt: skip


def check_trainer_settings(trainer: DictConfig) -> None:
    for key in COUNTS:
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(
                f"trainer.{key}={value!r}: expected a whole number (or null), e.g. "
                f"trainer.{key}=30."
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _non_negative(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _betas(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(_is_number(beta) and 0 <= beta < 1 for beta in value)
    )


def _count_from(least: int) -> Callable[[Any], bool]:
    return lambda value: _is_whole(value) and value >= least


# What seed_everything accepts: NumPy's seeds are unsigned 32-bit.
MAX_SEED = 2**32 - 1


def _seed(value: Any) -> bool:
    return value is None or (_is_whole(value) and 0 <= value <= MAX_SEED)


def _image_size(value: Any) -> bool:
    # The masks are predicted at a quarter of the frame size and upsampled 4x, so another size
    # gives masks of another size than the labels'; the PVT backbones' first stage reduces its
    # quarter-size map with an 8 x 8 convolution, which needs 8 x 8 of it.
    return _is_whole(value) and value >= 32 and value % 4 == 0


@dataclass(frozen=True)
class NumberSetting:
    """A numeric setting, checked before anything is built: what it must be, in words and as a
    test, and a value to show as an example."""

    key: str  # dotted, as on the command line
    expected: str
    holds: Callable[[Any], bool]
    example: str


# The seed, the numbers of the optimiser and scheduler partials (what torch's Adam/AdamW/SGD and
# their schedulers take; each checked only where the config has it), the module's and the data's.
# A string there fails only deep inside (the optimiser at the first training step, the loaders at
# the first batch) with a bare TypeError, a negative learning rate with torch's message, a
# negative seed with NumPy's and a frame size the model cannot tile with a size mismatch in the
# loss, none naming the setting.
NUMBER_SETTINGS = (
    NumberSetting(
        "seed",
        f"a whole number from 0 to {MAX_SEED} (NumPy's seeds), or null for no seeding",
        _seed,
        "123",
    ),
    NumberSetting("model.optimizer.lr", "a positive number", _positive, "2e-5"),
    NumberSetting("model.optimizer.weight_decay", "a number >= 0", _non_negative, "0.01"),
    NumberSetting("model.optimizer.betas", "two numbers in [0, 1)", _betas, "[0.9,0.999]"),
    NumberSetting("model.optimizer.eps", "a positive number", _positive, "1e-8"),
    NumberSetting("model.optimizer.momentum", "a number >= 0", _non_negative, "0.9"),
    NumberSetting("model.scheduler.T_max", "a whole number >= 1", _count_from(1), "30"),
    NumberSetting("model.scheduler.eta_min", "a number >= 0", _non_negative, "0"),
    NumberSetting(
        "model.warmup_steps", "a whole number >= 0 (optimiser steps)", _count_from(0), "50"
    ),
    NumberSetting(
        "data.img_size",
        "a multiple of 4, at least 32 (pixels: the masks are predicted at a quarter of it and "
        "upsampled 4x, and the PVT backbones need 8 x 8 of that quarter)",
        _image_size,
        "224",
    ),
    NumberSetting("data.train_batch_size", "a whole number >= 1 (clips)", _count_from(1), "4"),
    NumberSetting("data.eval_batch_size", "a whole number >= 1 (clips)", _count_from(1), "2"),
    NumberSetting(
        "data.num_workers",
        "a whole number >= 0 (worker processes; 0 loads in the main process)",
        _count_from(0),
        "4",
    ),
)


def _as_written(value: Any) -> str:
    """A value as a command line would show it: strings quoted (so that ``'1e-3'``, a string,
    is told from ``1e-3``), ``null`` for None, lists without their config type."""
    if value is None:
        return "null"
    if isinstance(value, ListConfig):
        return str(OmegaConf.to_container(value))
    return repr(value)


def check_number_settings(cfg: DictConfig) -> None:
    """Refuse, before anything is built, a setting of :data:`NUMBER_SETTINGS` that is not the
    number it must be: the message names it as the command line does (``model.optimizer.lr=-1``),
    with what is expected and an example. A setting the config does not have (the scheduler's
    under ``scheduler: null``, an optimiser's ``betas`` under SGD) is not checked."""
    for setting in NUMBER_SETTINGS:
        parent_key, _, leaf = setting.key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key)
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        value = parent[leaf]
        if setting.holds(value):
            continue
        # A value taken from another setting says which, where that is the one to change.
        source = (
            f" (from {OmegaConf.to_container(parent, resolve=False)[leaf]})"
            if OmegaConf.is_interpolation(parent, leaf)
            else ""
        )
        raise ValueError(
            f"{setting.key}={_as_written(value)}{source}: expected {setting.expected}, e.g. "
            f"{setting.key}={setting.example}."
        )


def save_resolved_config(cfg: DictConfig) -> Path:
    """``config.yaml`` in the run directory: the config as run, with num_classes filled in (Hydra's
    own ``.hydra/config.yaml`` is written before that)."""
    path = Path(cfg.paths.output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        OmegaConf.save(cfg, partial, resolve=True)
    return path


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


def refuse_overrides(command: str, arguments: Sequence[str], allowed: Sequence[str]) -> None:
    """Stop a command that rebuilds its model from a checkpoint when the command line tries to
    change anything but ``allowed`` (keys, or groups and their keys): a clear message instead of
    Hydra's "not in struct", and never a model other than the one the checkpoint holds."""
    for argument in arguments:
        if argument.startswith("-"):  # Hydra's flags: --multirun, --cfg, ...
            continue
        key = argument.split("=", 1)[0].lstrip("+~")
        if not any(key == name or key.startswith(name + ".") for name in allowed):
            raise SystemExit(
                f"{command}: {argument!r} cannot be overridden. The model and its data are rebuilt "
                "from the config the checkpoint carries, so it is scored as the model it was "
                f"trained as. Overrides {command} takes: {', '.join(allowed)}. To use another "
                "model, pass its checkpoint."
            )
