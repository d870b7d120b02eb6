"""Evaluate a checkpoint on the test split: ``python -m avsac_lit.eval ckpt_path=PATH``.

The model, and the data it was trained on, are rebuilt from the config the checkpoint carries
(the run's composed config, every model override included), so a checkpoint is scored as the model
it was trained as, with nothing to repeat. The command line may change only what may differ at test
time (:data:`TEST_TIME`): where the data is, how it is batched and loaded, the test audio
(``test_audio=[matched,shuffled,silent]`` also scores the model with another clip's audio and with
silence), the trainer (device), loggers and paths. A checkpoint written before checkpoints carried
their config takes its run's ``config.yaml`` as ``config=PATH``. The metrics go to
``metrics.json`` in the run directory (``logs/eval/runs/<time>/``).

Eval scores the checkpoints ``avsac_lit.train``, ``avsac_lit.convert`` and ``avsac_lit.export``
write. A file of bare tensors (a state dict) is refused before anything is built, with the
command that makes a checkpoint of it where there is one (a published AVSegFormer file:
``avsac_lit.convert``); a config could not make one, so none is asked for.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from avsac_lit.analysis.listening import report_listening
from avsac_lit.checkpoints.encoders import encoder_files_needed, rebuilt_encoders
from avsac_lit.checkpoints.io import (
    checkpoint_config,
    existing_checkpoint,
    read_checkpoint,
    without_weight_files,
)
from avsac_lit.checkpoints.official import BACKBONE_MARKERS
from avsac_lit.run.assemble import CONFIG_PATH, build_run, refuse_overrides
from avsac_lit.run.conditions import audio_conditions, test_conditions
from avsac_lit.run.record import Stopwatch, run_facts, write_metrics
from avsac_lit.run.wrapper import apply_extras, refusals_in_one_line, task_wrapper

log = logging.getLogger(__name__)

# Overrides that may differ at test time: the keys themselves, or groups and their keys.
TEST_TIME = (
    "ckpt_path", "config", "test_audio", "seed", "task_name", "project", "group", "tags",
    "data.root", "data.eval_batch_size", "data.num_workers", "data.pin_memory",
    "data.cache_dir", "trainer", "logger", "paths", "extras", "hydra", "debug",
)  # fmt: skip


def check_checkpoint(checkpoint: Path, config: str | None) -> None:
    """Refuse, before anything is built, what eval cannot score as it is: a file of bare tensors
    (Lightning tests a checkpoint, and no config makes one of them), and ``config=`` for a
    checkpoint that carries its own (the model scored is the one the checkpoint trained)."""
    contents = read_checkpoint(checkpoint, mmap=True)
    lightning = (
        isinstance(contents, Mapping)
        and isinstance(contents.get("state_dict"), Mapping)
        and "pytorch-lightning_version" in contents
    )
    if not lightning:
        raise ValueError(bare_tensors_advice(checkpoint, contents))
    if config is not None and (contents.get("avsac_lit") or {}).get("config") is not None:
        raise ValueError(
            f"config={config}: {checkpoint} carries the config of the run that wrote it, and "
            "avsac_lit.eval scores the model as it was trained. config= is for checkpoints "
            "written before checkpoints carried their config. Leave config= out."
        )


def bare_tensors_advice(checkpoint: Path, contents: object) -> str:
    """What to do with a file of tensors only: convert a published AVSegFormer file (its task and
    backbone filled in where the keys tell them), else pass the checkpoint training wrote."""
    tensors = contents
    for key in ("state_dict", "model"):  # the wrappers avsac_lit.convert also accepts
        if isinstance(tensors, Mapping) and isinstance(tensors.get(key), Mapping):
            tensors = tensors[key]
    keys = [str(k).removeprefix("module.") for k in tensors] if isinstance(tensors, Mapping) else []
    backbones = [
        name
        for name, marker in BACKBONE_MARKERS.items()
        if any(key.startswith(marker) for key in keys)
    ]
    converted = checkpoint.with_name(f"{checkpoint.stem}_converted.ckpt")
    said = (
        f"ckpt_path={checkpoint} holds only tensors (a bare state dict: no Lightning checkpoint "
        "around them, no run config), so avsac_lit.eval has no model to build and no checkpoint "
        "to test."
    )
    if len(backbones) == 1 and any(key.startswith("head.") for key in keys):
        head = next((k for k in tensors if str(k).endswith("head.fc.4.weight")), None)
        classes = int(tensors[head].shape[0]) if head is not None else None
        experiment = {None: "<s4|ms3|avss>", 1: "<s4|ms3>"}.get(classes, "avss")
        return (
            f"{said} Its keys (backbone.*, vggish.*, head.*) are those of a published "
            "AVSegFormer checkpoint: convert it into a checkpoint of this suite (with the task "
            "it was trained on), then evaluate that:\n"
            f"  python -m avsac_lit.convert +experiment={experiment} backbone={backbones[0]} "
            f"source={checkpoint} output={converted}\n"
            f"  python -m avsac_lit.eval ckpt_path={converted}"
        )
    return (
        f"{said} Pass a checkpoint avsac_lit.train wrote: "
        "logs/train/runs/<time>/checkpoints/last.ckpt, or the best, epoch_*.ckpt. A published "
        "AVSegFormer file is converted first: python -m avsac_lit.convert "
        f"+experiment=<s4|ms3|avss> backbone=<pvt_v2_b5|resnet50> source={checkpoint} "
        f"output={converted}."
    )


def run_config_for_test(cfg: DictConfig, checkpoint: Path, rebuilt: dict[str, str]) -> DictConfig:
    """The checkpoint's run config (or ``config=``'s, for a checkpoint without one) with this
    evaluation's test-time settings on top; ``rebuilt``: the encoders the checkpoint left out
    (:func:`rebuilt_encoders`)."""
    run = checkpoint_config(checkpoint, cfg.get("config"))
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
        run.callbacks = None  # nor are the run's loggers built (checkpoint.NEVER_BUILT)
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
    check_checkpoint(checkpoint, cfg.get("config"))
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
@refusals_in_one_line("avsac_lit.eval")
def run(cfg: DictConfig) -> None:
    apply_extras(cfg)
    evaluate(cfg)


def with_config_key(argument: str) -> str:
    """``config=PATH`` as Hydra takes it for eval: ``conf/eval.yaml`` has no ``config`` key (only
    checkpoints written before they carried their config need one), so it is added (``++`` adds
    it, or sets it where a config has it)."""
    return f"++{argument}" if argument.startswith("config=") else argument


def main() -> None:
    refuse_overrides("avsac_lit.eval", sys.argv[1:], TEST_TIME)
    sys.argv[1:] = [with_config_key(argument) for argument in sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
