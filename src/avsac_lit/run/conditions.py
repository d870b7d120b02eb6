"""Does the model listen? The test split scored once per audio condition, side by side.

A run with ``test_audio=[matched,shuffled,silent]`` tests the final model under each condition
(:mod:`avsac_lit.data.conditions`) in one test call, one loader per condition, and the module
logs each under that condition's prefix (``test/``, ``test_shuffled/``, ``test_silent/``). The
results are laid out as a table, with the synthetic generator's vision-only reference (every
visible object, sounding or not) when the data has one.
"""

from __future__ import annotations

import logging

import lightning as L
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from avsac_lit.data import AVSDataModule
from avsac_lit.data.conditions import CONDITION_LABELS, check_condition, metric_prefix
from avsac_lit.run.record import adopt_csv_columns, scalar_metrics

log = logging.getLogger(__name__)


def audio_conditions(cfg: DictConfig) -> list[str]:
    """The run's ``test_audio`` conditions, checked."""
    return [check_condition(c) for c in cfg.get("test_audio") or ["matched"]]


def test_conditions(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: AVSDataModule,
    conditions: list[str],
    ckpt_path: str | None,
) -> dict[str, float]:
    """One test call, with one test loader per audio condition; the metrics of each go under its
    own prefix. (Under ddp_spawn every test call starts its processes again: a call per
    condition cost a pair of processes each.)"""
    # The loaders are passed to the trainer, not the datamodule, so its data hooks run here.
    if trainer.is_global_zero:
        datamodule.prepare_data()
    trainer.strategy.barrier()
    datamodule.setup("test")
    log.info("Testing with audio conditions %s", ", ".join(map(repr, conditions)))
    loaders = [datamodule.test_dataloader(audio=condition) for condition in conditions]
    adopt_csv_columns(trainer)
    # Lightning's table would give every loader a column holding every condition's metrics.
    trainer.test(module, dataloaders=loaders, ckpt_path=ckpt_path, verbose=len(loaders) == 1)
    metrics = scalar_metrics(trainer.callback_metrics)
    if len(loaders) > 1 and trainer.is_global_zero:
        Console().print(conditions_table(metrics, conditions))
    return metrics


def conditions_table(metrics: dict[str, float], conditions: list[str]) -> Table:
    """Every test metric (rows) of every audio condition (columns)."""
    prefixes = [metric_prefix(condition) for condition in conditions]
    names = sorted({k.split("/", 1)[1] for k in metrics if k.split("/", 1)[0] in prefixes})
    table = Table("Test metric", *(CONDITION_LABELS[c] for c in conditions))
    for name in names:
        values = [metrics.get(f"{prefix}/{name}") for prefix in prefixes]
        table.add_row(name, *("" if value is None else f"{value:.4f}" for value in values))
    return table
