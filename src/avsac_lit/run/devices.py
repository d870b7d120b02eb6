"""One GPU per job when a multirun's jobs run side by side on one machine.

``python -m avsac_lit.train -m hydra/launcher=local_gpus gpus=4 ...`` runs the sweep's jobs in
``gpus`` worker processes at once (Hydra's joblib launcher). Each worker, at its first job, takes
the first GPU no other worker holds (an exclusive lock on ``<sweep dir>/.gpus/<i>.lock``, released
when the process ends) and sees only that one (``CUDA_VISIBLE_DEVICES``), so every job runs on
``cuda:0`` of its own device. A worker keeps its GPU for its later jobs: CUDA, once started in a
process, keeps the devices it saw. Launchers that assign devices themselves (SLURM) need none of
this. submitit's local executor is not used: it gives every job the same first GPUs.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_held: tuple[str, IO] | None = None  # (device, lock file) of this process


def claim_gpu(pool: str | Path, gpus: int) -> str:
    """This process's GPU from a pool of ``gpus`` (the first free one), made the only visible
    device; the same one on later calls. Returns its id as ``CUDA_VISIBLE_DEVICES`` names it."""
    global _held
    if _held is not None:
        return _held[0]
    # A machine may already restrict the visible devices; the pool is then those.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(gpus)]
    if len(devices) < gpus:
        raise ValueError(
            f"gpus={gpus} but CUDA_VISIBLE_DEVICES={visible} names {len(devices)}; set gpus to "
            "the number of devices the sweep may use."
        )
    pool = Path(pool)
    pool.mkdir(parents=True, exist_ok=True)
    for index, device in enumerate(devices[:gpus]):
        handle = (pool / f"{index}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held = (device, handle)
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        log.info("This job's process runs on GPU %s (pool %s).", device, pool)
        return device
    raise RuntimeError(
        f"All {gpus} GPUs of the pool {pool} are held by other jobs: more jobs run at once than "
        "there are GPUs. Keep hydra.launcher.n_jobs at gpus (hydra/launcher=local_gpus does)."
    )


def use_allocated_cpus() -> int | None:
    """In a SLURM job, run torch on the CPUs SLURM allocated to the task (``--cpus-per-task``)
    rather than on every core of the node: os.cpu_count() sees them all, and several tasks
    sharing a node would each start that many threads. ``OMP_NUM_THREADS``, if set, wins; it is
    set here otherwise, so that Lightning, which sets the threads when a distributed run starts
    unless it is set, keeps this count. Returns the count, or None outside a SLURM job."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK")
    if allocated is None or "OMP_NUM_THREADS" in os.environ:
        return None
    import torch

    os.environ["OMP_NUM_THREADS"] = allocated
    torch.set_num_threads(int(allocated))
    log.info("Using the %s CPU(s) SLURM allocated to this task.", allocated)
    return int(allocated)
