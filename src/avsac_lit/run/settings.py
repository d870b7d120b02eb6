"""Settings checked before anything is built: the trainer's counts and the numbers of the seed,
the optimiser, the scheduler, the module and the data. A string or an out-of-range number there
would fail deep inside (at the first step, or the first batch) in a library's words; here it is
refused naming the setting as the command line writes it, what is expected and an example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

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
