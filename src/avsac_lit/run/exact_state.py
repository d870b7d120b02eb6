"""The random state a resumed run continues from: saved into every checkpoint and restored where
the uninterrupted run would have drawn next, so that a resumed run trains exactly as one that was
never stopped (``tests/test_train.py``, ``tests/test_resume.py``).

A callback that every run's assembly adds (:func:`avsac_lit.run.assemble.build_run`), not one of
the ``callbacks`` config group, which ``+debug=...`` empties. Its ``on_save_checkpoint`` runs
before the module's, which keeps what it wrote under ``checkpoint["avsac_lit"]``; the module saves
and restores the rest of what an interrupted epoch needs (its training metrics' running sums).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def random_state() -> dict:
    """The random generators a run draws from: Python's, NumPy's, torch's (CPU and CUDA), in
    plain types, so that checkpoints still load with ``torch.load(weights_only=True)``."""
    # The legacy global NumPy generator is the one seed_everything seeds and libraries draw from.
    name, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_random_state(state: dict) -> None:
    """Put the generators back in ``state`` (:func:`random_state`)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    keys = np.asarray(keys, dtype=np.uint32)
    np.random.set_state((name, keys, position, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(Callback):
    """Saves the random state into every checkpoint (``avsac_lit.random_state``) and, resumed,
    restores it where the uninterrupted run had it: at the next epoch's start (before its loader
    draws a seed) or, resumed mid-epoch, before the next batch. A resumed run then draws its
    shuffles, dropout masks and augmentations as the uninterrupted one did."""

    def __init__(self) -> None:
        self.resumed: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint.setdefault("avsac_lit", {})["random_state"] = random_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.resumed = (checkpoint.get("avsac_lit") or {}).get("random_state")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.restore()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # A run resumed mid-epoch: Lightning continues the epoch without starting it again.
        self.restore()

    def restore(self) -> None:
        if self.resumed is not None:
            set_random_state(self.resumed)
            self.resumed = None
