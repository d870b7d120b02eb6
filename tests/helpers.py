"""Composing the training and evaluation configs in tests, shrunk to CPU seconds."""

from __future__ import annotations

import atexit
import os
import signal as signal_module
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

import avsac_lit
from avsac_lit.run.assemble import compose_config

# The package's configs: the tests compose what the installed package ships.
CONF = Path(avsac_lit.__file__).resolve().parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# The real architecture at its smallest: 32 px, width 32, one decoder layer, 4 queries.
TINY_RUN = [
    # The trainable tiny PVT (the twins'); the demo's frozen pretrained one has its own tests.
    "backbone=tiny",
    "data.img_size=32",
    "data.num_workers=0",
    "data.synthetic=null",
    "model.net.dim=32",
    "model.net.num_queries=4",
    "model.net.generator_layers=1",
    "model.net.mlp_hidden=32",
    "model.net.decoder_layers=1",
    "model.net.hidden_dim=64",
    "model.net.heads=4",
    # The demo validates once, after its last epoch, without a sanity check; tests look at every
    # epoch.
    "trainer.check_val_every_n_epoch=1",
    "trainer.num_sanity_val_steps=2",
    "extras.print_config=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "~logger",
]


def tiny_run(
    task: str, root: Path, output_dir: Path, extra: list[str] = (), name: str = "train"
) -> DictConfig:
    """A synthetic experiment on a test tree, with the tiny model and no logger."""
    overrides = [f"+experiment=synthetic_{task}", f"data.root={root}", *TINY_RUN, *extra]
    if name == "eval" or any(o.startswith("+debug") for o in extra):
        overrides = [o for o in overrides if "callbacks" not in o]  # none to remove
    if any(o.startswith("logger=") for o in extra):
        overrides.remove("~logger")
    return compose_config(name, overrides, output_dir)


def eval_run(ckpt_path: Path, output_dir: Path, extra: list[str] = ()) -> DictConfig:
    """``avsac_lit.eval`` of a checkpoint: the model and data come from the checkpoint's config,
    the command line names only the checkpoint and test-time settings."""
    overrides = [f"ckpt_path={ckpt_path}", "data.num_workers=0", "extras.print_config=false"]
    return compose_config("eval", [*overrides, "~logger", *extra], output_dir)


class SignalAt(Callback):
    """Sends this process ``signal`` at the end of training step ``step`` (or at the first test
    batch with ``step=-1``): a scheduler's signal at a known point, for the stop-and-resume
    tests. Add it with ``+callbacks.signal_at._target_=tests.helpers.SignalAt``."""

    def __init__(self, step: int, signal: str = "SIGUSR2") -> None:
        self.step, self.signum = step, getattr(signal_module, signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        if self.step == -1 and batch_idx == 0:
            os.kill(os.getpid(), self.signum)


class SignalAtExit(Callback):
    """Sends this process ``signal`` as it exits, after its run has ended (an ``atexit``
    function, registered as training ends): a scheduler's signal that comes while a job that
    finished shuts down. Add it with ``+callbacks.signal_at_exit._target_=tests.helpers.
    SignalAtExit``."""

    def __init__(self, signal: str = "SIGUSR2") -> None:
        self.signum = getattr(signal_module, signal)

    def on_fit_end(self, trainer, pl_module) -> None:
        atexit.register(os.kill, os.getpid(), self.signum)


def assert_trains_as_one_process(
    first_step: Path, reference_step: Path, metrics: dict, reference_metrics: dict
) -> None:
    """A run over several processes against one process with the summed batch, in float64: the
    first step's loss and every gradient (FirstStepRecorder's files) and the final validation and
    test metrics (metrics.json's) agree to 1e-10."""
    first, step = torch.load(first_step), torch.load(reference_step)
    assert abs(first["loss"] - step["loss"]) < 1e-10
    assert step["gradients"].keys() == first["gradients"].keys()
    difference = max((g - first["gradients"][n]).abs().max().item()
                     for n, g in step["gradients"].items())  # fmt: skip
    assert difference < 1e-10
    for key in ("val/miou", "val/f", "val/loss", "val/miou_best", "test/miou", "test/f"):
        assert metrics[key] == pytest.approx(reference_metrics[key], abs=1e-10), key
