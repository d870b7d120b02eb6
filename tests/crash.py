"""A callback that kills its own process (SIGKILL, as the kernel's OOM killer or a lost machine
would end it) at a training step, on one rank, in a run's first attempt only: an elastic restart
then runs on. Used by tests/test_torchrun.py through the command line."""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback


class KillAtStep(Callback):
    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
