"""A run that ``torchrun`` (TorchElastic) starts, on one machine or several: what it is told by
its environment, and the settings it refuses before anything is written.

torchrun starts the same command in every process, and each process composes its own config: a
run directory Hydra stamps with the time would differ between processes (and machines), so each
would write its own. Under torchrun the run directory is therefore named on the command line
(the same on every machine, on storage they share), the command is one run (a multirun's jobs
would each need their own processes), and the trainer's processes match the ones torchrun
started. An elastic restart (``--max-restarts``) starts the command again in every process: it
continues from the run's ``checkpoints/last.ckpt``, as a requeued SLURM job does.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

# What torchrun sets in every process it starts (besides RANK, WORLD_SIZE, MASTER_ADDR, ...).
RUN_ID = "TORCHELASTIC_RUN_ID"


def under_torchrun() -> bool:
    """Whether torchrun (an elastic agent) started this process."""
    return RUN_ID in os.environ and "LOCAL_WORLD_SIZE" in os.environ


def torchrun_run_id() -> str | None:
    """The rendezvous id (``--rdzv-id``) naming this run among torchrun's, when it names one:
    torchrun's default, ``none``, names none."""
    run_id = os.environ.get(RUN_ID, "")
    return run_id if under_torchrun() and run_id not in ("", "none") else None


def torchrun_facts() -> dict:
    """What metrics.json records about the torchrun that started the run. Not its restarts: an
    agent whose own processes did not fail restarts them without counting, so the first
    process's count may be 0 after a restart (``resumed_from`` says that the run continued)."""
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
    return {
        "run_id": os.environ.get(RUN_ID),
        "max_restarts": int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")),
        "nodes": world // local,
        "processes_per_node": local,
        "world_size": world,
        "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
    }


def launcher() -> str:
    """What started the run's processes: ``torchrun``, ``slurm`` (a SLURM job's tasks) or
    ``local`` (the command itself, and Lightning's or ddp_spawn's processes)."""
    if under_torchrun():
        return "torchrun"
    if "SLURM_JOB_ID" in os.environ:
        return "slurm"
    return "local"


def torchrun_refusal(config: DictConfig, multirun: bool = False) -> str | None:
    """Why this command cannot run under the torchrun that started it, or None (also outside
    torchrun). ``config`` is the command's config, Hydra's settings under ``hydra``."""
    if not under_torchrun():
        return None
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
    started = (f"torchrun started {world} process(es), {local} per machine "
               f"(--nnodes={world // local} --nproc-per-node={local})")  # fmt: skip
    if multirun:
        return (
            f"{started} for a multirun (-m): under torchrun a command is one run. Start "
            "torchrun once per run (each with its own hydra.run.dir), or sweep with "
            "hydra/launcher=slurm, which starts each run's processes itself."
        )
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return (
            f"{started} with --max-restarts={restarts}, sharing its rendezvous store with them: "
            "after a restart the new processes read there the addresses of the processes they "
            "replace, and wait on them (measured with torch 2.14: a hang, or 'Gloo "
            "connectFullMesh failed ... Connection refused'), so the run would not survive the "
            "restart it asks for. Start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in "
            "its environment on every machine (a fresh store each restart), or without "
            "--max-restarts."
        )
    directory = OmegaConf.to_container(config.hydra.run, resolve=False)["dir"]
    if "${now:" in str(directory):
        return (
            f"{started}, and each would make its own run directory from the time it started "
            f"(hydra.run.dir is {directory}). Name one on the command line, the same for every "
            "machine and on storage they all reach: hydra.run.dir=/shared/runs/NAME. Run again "
            "with the same directory, the run continues from its last checkpoint."
        )
    trainer = config.trainer
    strategy = str(trainer.get("strategy", "auto"))
    if not strategy.startswith("ddp") or strategy.startswith("ddp_spawn"):
        return (
            f"{started}, but trainer.strategy={strategy} does not run on processes started "
            "for it. Use trainer=torchrun (DDP over the processes torchrun started)."
        )
    nodes, devices = trainer.get("num_nodes", 1), trainer.get("devices", 1)
    if not (isinstance(nodes, int) and isinstance(devices, int)) or (nodes, devices) != (
        world // local,
        local,
    ):
        return (
            f"{started}, but the trainer asks for trainer.num_nodes={nodes} x "
            f"trainer.devices={devices}. Set them to what torchrun starts: "
            f"trainer.num_nodes={world // local} trainer.devices={local}."
        )
    return None
