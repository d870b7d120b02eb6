"""Evaluate a checkpoint on the test split: ``python -m avsac_lit.eval +experiment=NAME
ckpt_path=PATH``.

The experiment (and any override that changed the model at training time) rebuilds the model; the
checkpoint gives its weights. ``test_audio=[matched,shuffled,silent]`` also scores the model with
another clip's audio and with silence. The metrics go to ``metrics.json`` in the run directory
(``logs/eval/runs/<time>/``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from avsac_lit.inference import existing_checkpoint, saved_model_name
from avsac_lit.train import (
    audio_conditions,
    build_run,
    report_listening,
    run_facts,
    test_conditions,
)
from avsac_lit.utils import Stopwatch, apply_extras, task_wrapper, write_metrics

log = logging.getLogger(__name__)


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test ``ckpt_path`` under each ``test_audio`` condition; returns the metrics."""
    clock = Stopwatch()
    checkpoint = existing_checkpoint(cfg.ckpt_path)
    check_same_model(cfg, checkpoint)
    facts = run_facts(cfg)
    conditions = audio_conditions(cfg)
    datamodule, module, trainer = build_run(cfg)

    metrics = test_conditions(trainer, module, datamodule, conditions, str(checkpoint))
    output_dir = Path(cfg.paths.output_dir)
    write_metrics(
        output_dir / "metrics.json",
        metrics,
        **facts,
        checkpoint=str(checkpoint.resolve()),
        wall_time_s=clock.seconds,
    )
    if len(conditions) > 1:
        report_listening(metrics, conditions, datamodule.hparams.root, output_dir)
    return metrics


def check_same_model(cfg: DictConfig, checkpoint: Path) -> None:
    """Refuse to score a checkpoint as another model than the one it holds (its weights would not
    load, with a wall of key errors)."""
    saved = saved_model_name(checkpoint)
    composed = (cfg.model.name, cfg.backbone.name)
    if saved is not None and saved != composed:
        hint = " +setting=avsegformer" if saved[0] == "avsegformer" else ""
        raise ValueError(
            f"{checkpoint} holds {saved[0]} on {saved[1]}, but the composed config builds "
            f"{composed[0]} on {composed[1]}. Pass the overrides it was trained or converted "
            f"with, e.g. +experiment=...{hint} backbone={saved[1]}."
        )


@hydra.main(version_base="1.3", config_path="../../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    apply_extras(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
