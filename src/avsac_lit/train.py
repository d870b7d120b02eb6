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

import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from avsac_lit.analysis.listening import report_listening
from avsac_lit.run.assemble import CONFIG_PATH, build_run
from avsac_lit.run.conditions import audio_conditions, test_conditions
from avsac_lit.run.devices import claim_gpu, use_allocated_cpus
from avsac_lit.run.job import in_a_multirun, this_command
from avsac_lit.run.lock import run_directory_held
from avsac_lit.run.record import Stopwatch, process_facts, run_facts, scalar_metrics, write_metrics
from avsac_lit.run.resume import (
    FIT_METRICS,
    RunFinished,
    carry_csv_history,
    resume_point,
    save_fit_metrics,
)
from avsac_lit.run.stop import RunStopped, StopAndResume, StopSignals, stop_message, stopped_worker
from avsac_lit.run.wrapper import apply_extras, refusals_in_one_line, task_wrapper

log = logging.getLogger(__name__)


@task_wrapper
def train(cfg: DictConfig, signals: StopSignals | None = None) -> dict[str, float]:
    """Fit (``train``), then test the best checkpoint (``test``) under each ``test_audio``
    condition. Returns the final metrics, also written to ``metrics.json``.

    The run directory is held by this process meanwhile (the command holds it already), and stop
    signals are noted and acted on where the run resumes exactly: by ``signals``, the command's
    handler, or else by one installed for the run."""
    with ExitStack() as stack:
        stack.enter_context(run_directory_held(cfg.paths.output_dir, this_command()))
        if signals is None:
            run_dir = cfg.paths.output_dir
            signals = stack.enter_context(StopSignals(cfg.get("requeue_signal", "USR2"), run_dir))
        return train_with(cfg, signals)


def train_with(cfg: DictConfig, signals: StopSignals) -> dict[str, float]:
    """:func:`train`'s run, in its held directory, with ``signals`` installed."""
    clock = Stopwatch()
    if cfg.get("gpus") and in_a_multirun():  # before anything touches CUDA
        claim_gpu(Path(HydraConfig.get().sweep.dir) / ".gpus", int(cfg.gpus))
    use_allocated_cpus()
    facts = run_facts(cfg)  # before the run: the code version is the one that runs
    conditions = audio_conditions(cfg)
    try:
        start = resume_point(cfg)
    except RunFinished:
        if not in_a_multirun():
            raise
        # A multirun submitted again into its sweep directory: this job had finished.
        output = Path(cfg.paths.output_dir)
        log.info("%s holds this job's finished run: its results are kept.", output)
        signals.ended = True
        return json.loads((output / "metrics.json").read_text())["metrics"]
    datamodule, module, trainer = build_run(
        cfg, callbacks=cfg.get("callbacks"), extra_callbacks=[StopAndResume(signals)]
    )
    signals.children = trainer.strategy.launcher  # ddp_spawn's workers hear them too
    carry_csv_history(trainer, start.history)
    try:
        metrics, best = fit_and_test(cfg, trainer, module, datamodule, conditions, start)
    except RunStopped:
        raise
    except BaseException as error:
        # Worker processes (ddp_spawn) that stopped on a signal end the main one here.
        received = signals.received or stopped_worker(error)
        if received is None:
            raise
        where = "in the training processes"
        message = stop_message(received, where, cfg.paths.output_dir, requeued=False)
        raise RunStopped(message, received) from error
    signals.ended = True  # a signal from now on has nothing to stop

    # Logged by the module, so that it also reaches ddp_spawn's main process, whose fit loop
    # never ran an epoch.
    epochs_trained = int(metrics.pop("epochs_trained", None) or trainer.current_epoch)
    output_dir = Path(cfg.paths.output_dir)
    write_metrics(
        output_dir / "metrics.json",
        metrics,
        **facts,
        **process_facts(trainer),
        resumed_from=start.ckpt_path,
        best_checkpoint=best or None,
        epochs_trained=epochs_trained,
        wall_time_s=clock.seconds,
    )
    (output_dir / FIT_METRICS).unlink(missing_ok=True)  # metrics.json holds them now
    if cfg.get("test") and len(conditions) > 1:
        report_listening(metrics, conditions, datamodule.hparams.root, output_dir)
    return metrics


def fit_and_test(cfg, trainer, module, datamodule, conditions, start) -> tuple[dict, str]:
    """Train (from ``start``), then test the best checkpoint under each audio condition.
    Returns the metrics and the best checkpoint's path."""
    if cfg.get("train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=start.ckpt_path)
    metrics = scalar_metrics(trainer.callback_metrics) | start.fit_metrics
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test"):
        if not best:
            log.warning("No best checkpoint (fast_dev_run or no checkpointing): testing the "
                        "current weights.")  # fmt: skip
        try:
            metrics |= test_conditions(trainer, module, datamodule, conditions, best or None)
        except RunStopped:
            save_fit_metrics(cfg.paths.output_dir, metrics, trainer.global_step)
            raise
    return metrics, best


def check_experiment_argument(arguments: list[str]) -> None:
    """A table's recipe puts the experiment in the defaults list, so a run of a table picks
    another with ``experiment=NAME``; ``+experiment=`` would only fail in Hydra's words."""
    keys = {argument.split("=", 1)[0] for argument in arguments}
    if "+table" in keys and "+experiment" in keys:
        raise SystemExit(
            "avsac_lit.train: +table=... already chooses the experiment (its recipe starts from "
            "one), so pick another with experiment=NAME, without the +: e.g. +table=table2 "
            "experiment=ms3. Outside a table, +experiment=NAME appends one."
        )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@refusals_in_one_line("avsac_lit.train")
def run(cfg: DictConfig) -> float | None:
    # The stop signals' handler, for the rest of this process: a signal that comes as the
    # process ends, after the run, is noted too instead of killing it.
    signals = StopSignals(cfg.get("requeue_signal", "USR2"), cfg.paths.output_dir)
    signals.install()
    apply_extras(cfg)
    metrics = train(cfg, signals)
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s was not logged; logged: %s", name, ", ".join(metrics))
    return metrics.get(name) if name else None


def main() -> None:
    check_experiment_argument(sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
