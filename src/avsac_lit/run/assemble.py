"""Assembling a run from its composed config: the one place where configs become objects.

Every entry point goes through here: ``avsac_lit.train`` (a new run), ``avsac_lit.eval`` and
``avsac_lit.predict`` (a run rebuilt from the config its checkpoint carries), ``avsac_lit.convert``
and the notebooks. The configs ship inside the package (``avsac_lit/conf``) and are found as
:data:`CONFIG_PATH`, from a source checkout and from an installed wheel alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
from omegaconf import DictConfig, OmegaConf, open_dict

from avsac_lit.data import AVSDataModule, DatasetLayoutError
from avsac_lit.models.counting import parameter_counts
from avsac_lit.run.exact_state import ExactResume
from avsac_lit.run.job import another_disk_setting, in_a_multirun, rerun_hint
from avsac_lit.run.loggers import wandb_offline_unless_reachable
from avsac_lit.run.settings import check_number_settings, check_trainer_settings
from avsac_lit.storage.atomic import RunWaysOn, atomic_path, note_run_directory
from avsac_lit.system.guards import NonFiniteGuard
from avsac_lit.system.module import AVSLitModule

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


def build_run(
    cfg: DictConfig,
    callbacks: DictConfig | None = None,
    extra_callbacks: Sequence[L.Callback] = (),
) -> tuple[AVSDataModule, AVSLitModule, L.Trainer]:
    """Seed, then build the data, the module (with the data's number of classes), the loggers
    and the trainer (with ``callbacks`` from the config, ``extra_callbacks`` and the callbacks
    every run needs: :func:`safety_callbacks`); save the resolved config and log it once."""
    check_trainer_settings(cfg.trainer)
    check_number_settings(cfg)
    wandb_offline_unless_reachable(cfg)  # before config.yaml records the logger's mode
    note_run(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    log.info("Instantiating datamodule <%s> for %s", cfg.data._target_, cfg.data.task)
    datamodule = instantiate(cfg.data)
    set_num_classes(cfg, datamodule)
    save_resolved_config(cfg)
    module = build_module(cfg)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    built_callbacks = [
        *instantiate_group(callbacks, "callback"),
        *extra_callbacks,
        *safety_callbacks(),
    ]
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


def safety_callbacks() -> list[L.Callback]:
    """The callbacks every run gets, whatever its ``callbacks`` config says (``+debug=...`` sets
    it to null): the gradients' non-finite guard, and the random state a resumed run continues
    from. After the others, where the module's hooks that they replace ran: Lightning calls the
    callbacks' hooks in order (checkpoint callbacks moved last), then the module's."""
    return [NonFiniteGuard(), ExactResume()]


def note_run(output_dir: str | Path) -> None:
    """Name the run's directory, with the ways on that Hydra's settings give, for the message of
    a write the disk refuses (:class:`~avsac_lit.storage.atomic.DiskWriteError`)."""
    output_dir = Path(output_dir)
    ways_on = RunWaysOn(rerun_hint(output_dir), another_disk_setting(output_dir),
                        one_run=not in_a_multirun())  # fmt: skip
    note_run_directory(output_dir, ways_on)


def cluster_settings(trainer: DictConfig) -> dict[str, Any]:
    """What the trainer's config leaves to the machine it runs on:

    * in a SLURM job, Lightning's SLURM environment without its own requeue handling (it saves
      in the middle of a step on USR1): :mod:`avsac_lit.run.stop` stops and requeues runs;
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
