"""Evaluate a checkpoint on the test split: ``python -m avsac_lit.eval ckpt_path=PATH``.

The model, and the data it was trained on, are rebuilt from the config the checkpoint carries
(the run's composed config, every model override included), so a checkpoint is scored as the model
it was trained as, with nothing to repeat. The command line may change only what may differ at test
time (:data:`TEST_TIME`): where the data is, how it is batched and loaded, the test audio
(``test_audio=[matched,shuffled,silent]`` also scores the model with another clip's audio and with
silence), the trainer (device), loggers and paths. The metrics go to ``metrics.json`` in the run
directory (``logs/eval/runs/<time>/``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from avsac_lit.build import CONFIG_PATH, build_run, refuse_overrides
from avsac_lit.checkpoint import (
    checkpoint_config,
    encoder_files_needed,
    existing_checkpoint,
    rebuilt_encoders,
    without_weight_files,
)
from avsac_lit.cli import apply_extras, task_wrapper
from avsac_lit.counterfactual import audio_conditions, report_listening, test_conditions
from avsac_lit.run_record import Stopwatch, run_facts, write_metrics

log = logging.getLogger(__name__)

# Overrides that may differ at test time: the keys themselves, or groups and their keys.
TEST_TIME = (
    "ckpt_path", "test_audio", "seed", "task_name", "project", "group", "tags",
    "data.root", "data.eval_batch_size", "data.num_workers", "data.pin_memory",
    "data.cache_dir", "trainer", "logger", "paths", "extras", "hydra", "debug",
)  # fmt: skip


def run_config_for_test(cfg: DictConfig, checkpoint: Path, rebuilt: dict[str, str]) -> DictConfig:
    """The checkpoint's run config with this evaluation's test-time settings on top; ``rebuilt``:
    the encoders the checkpoint left out (:func:`rebuilt_encoders`)."""
    run = checkpoint_config(checkpoint)
    with open_dict(run):
        if not rebuilt:  # the checkpoint holds every weight
            run.model.net = without_weight_files(run.model.net)
        for key, value in cfg.data.items():
            if value is not None:
                run.data[key] = value
        for key in ("task_name", "project", "group", "tags", "seed", "ckpt_path", "test_audio"):
            run[key] = cfg.get(key)
        for node in ("trainer", "logger", "paths", "extras"):
            run[node] = OmegaConf.to_container(cfg[node], resolve=True) if cfg.get(node) else None
        run.callbacks = None
        # One process whatever the trainer group says: the protocol's per-batch F-score needs the
        # split's batches as one process forms them, and DDP would pad the split with repeats.
        run.trainer.devices, run.trainer.num_nodes = 1, 1
        if "ddp" in str(run.trainer.get("strategy", "auto")):
            log.info(
                "Evaluating on one process (trainer.strategy=%s ignored).", run.trainer.strategy
            )
            run.trainer.strategy = "auto"
    return run


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test ``ckpt_path`` under each ``test_audio`` condition; returns the metrics."""
    clock = Stopwatch()
    checkpoint = existing_checkpoint(cfg.ckpt_path)
    rebuilt = rebuilt_encoders(checkpoint)
    run = run_config_for_test(cfg, checkpoint, rebuilt)
    facts = run_facts(run)
    conditions = audio_conditions(run)
    with encoder_files_needed(checkpoint, rebuilt):
        datamodule, module, trainer = build_run(run)

    metrics = test_conditions(trainer, module, datamodule, conditions, str(checkpoint))
    output_dir = Path(run.paths.output_dir)
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


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def run(cfg: DictConfig) -> None:
    apply_extras(cfg)
    evaluate(cfg)


def main() -> None:
    refuse_overrides("avsac_lit.eval", sys.argv[1:], TEST_TIME)
    run()


if __name__ == "__main__":
    main()
