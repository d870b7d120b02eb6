"""Train (and test) a model: ``python -m avsac_lit.train +experiment=NAME [overrides]``.

Examples::

    python -m avsac_lit.train +experiment=synthetic_ms3            # the CPU demo
    python -m avsac_lit.train +experiment=ms3 data.root=/data/AVSBench/Multi-sources
    python -m avsac_lit.train +experiment=ms3 backbone=resnet50 weights.visual=resnet50.pth
    python -m avsac_lit.train +experiment=ms3 +debug=fdr            # debug configs go last
    python -m avsac_lit.train +experiment=ms3 ckpt_path=logs/train/runs/X/checkpoints/last.ckpt

Everything a run writes goes to its directory (``logs/train/runs/<time>/``): ``config.yaml`` (the
config as run), ``checkpoints/`` (best by val mIoU, and last), the loggers' files and
``metrics.json`` (final metrics, readable without a logger).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markdown import Markdown

from avsac_lit.data import AVSDataModule
from avsac_lit.data.conditions import check_condition
from avsac_lit.listening import listening_table, metric_prefix, reference_scores
from avsac_lit.module import AVSLitModule
from avsac_lit.utils import (
    Stopwatch,
    apply_extras,
    build_module,
    hardware,
    hydra_overrides,
    instantiate_group,
    log_hyperparameters,
    save_resolved_config,
    scalar_metrics,
    set_num_classes,
    source_version,
    task_wrapper,
    write_metrics,
)

log = logging.getLogger(__name__)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (``train``), then test the best checkpoint (``test``) under each ``test_audio``
    condition. Returns the final metrics, also written to ``metrics.json``."""
    clock = Stopwatch()
    facts = run_facts(cfg)  # before the run: the code version is the one that runs
    conditions = audio_conditions(cfg)
    datamodule, module, trainer = build_run(cfg, callbacks=cfg.get("callbacks"))

    if cfg.get("train"):
        if cfg.get("ckpt_path"):
            log.info("Resuming from %s", cfg.ckpt_path)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = scalar_metrics(trainer.callback_metrics)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test"):
        if not best:
            log.warning("No best checkpoint (fast_dev_run or no checkpointing): testing the "
                        "current weights.")  # fmt: skip
        metrics |= test_conditions(trainer, module, datamodule, conditions, best or None)

    output_dir = Path(cfg.paths.output_dir)
    write_metrics(
        output_dir / "metrics.json",
        metrics,
        **facts,
        best_checkpoint=best or None,
        epochs_trained=trainer.current_epoch,
        wall_time_s=clock.seconds,
    )
    if cfg.get("test") and len(conditions) > 1:
        report_listening(metrics, conditions, datamodule.hparams.root, output_dir)
    return metrics


def audio_conditions(cfg: DictConfig) -> list[str]:
    return [check_condition(c) for c in cfg.get("test_audio") or ["matched"]]


def build_run(
    cfg: DictConfig, callbacks: DictConfig | None = None
) -> tuple[AVSDataModule, AVSLitModule, L.Trainer]:
    """Seed, then build the data, the module (with the data's number of classes), the loggers
    and the trainer; save the resolved config and log it once. Shared by train and eval."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    log.info("Instantiating datamodule <%s> for %s", cfg.data._target_, cfg.data.task)
    datamodule = instantiate(cfg.data)
    set_num_classes(cfg, datamodule)
    save_resolved_config(cfg)
    module = build_module(cfg)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    built_callbacks = instantiate_group(callbacks, "callback")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in built_callbacks):
        log.warning("No logger: the learning-rate monitor is left out.")
        built_callbacks = [c for c in built_callbacks if not isinstance(c, LearningRateMonitor)]
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=built_callbacks, logger=loggers)
    log_hyperparameters(cfg, module, trainer)
    return datamodule, module, trainer


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
        "torch": torch.__version__,
    }


def test_conditions(
    trainer: L.Trainer,
    module: AVSLitModule,
    datamodule: L.LightningDataModule,
    conditions: list[str],
    ckpt_path: str | None,
) -> dict[str, float]:
    """Test once per audio condition; the metrics of each go under its own prefix."""
    metrics: dict[str, float] = {}
    for condition in conditions:
        datamodule.test_audio = condition
        module.test_prefix = metric_prefix(condition)
        log.info("Testing with audio condition %r", condition)
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics |= scalar_metrics(trainer.callback_metrics)
    datamodule.test_audio, module.test_prefix = "matched", "test"
    return metrics


def report_listening(
    metrics: dict[str, float], conditions: list[str], root: str | Path, output_dir: Path
) -> None:
    table = listening_table(metrics, conditions, reference_scores(root))
    heading = "# Does the model listen? One model, its test split, several audio inputs\n\n"
    (output_dir / "demo_results.md").write_text(heading + table)
    Console().print(Markdown(table))
    log.info("Table saved to %s", output_dir / "demo_results.md")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    apply_extras(cfg)
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s was not logged; logged: %s", name, ", ".join(metrics))
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
