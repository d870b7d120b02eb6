"""A checkpoint as a trained model: its config, and its model rebuilt from that config.

A checkpoint written by ``avsac_lit.train`` (or ``avsac_lit.convert``) carries its run's resolved
config and, for AVSS, the class names, so it rebuilds its model on its own: no data, no pretrained
weight files (its own weights replace them). ``avsac_lit.eval`` and ``avsac_lit.predict`` use that
config, never one composed again from the command line. Older checkpoints take the run's
``config.yaml`` (found beside ``checkpoints/``, or passed explicitly).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from avsac_lit.checkpoints.trust import trusted_config
from avsac_lit.checkpoints.versions import renamed_value, upgraded
from avsac_lit.storage.checksums import verify


def net_state(checkpoint: dict) -> dict[str, Tensor]:
    """The net's weights of a Lightning checkpoint, without the ``net.`` prefix."""
    return {
        name.removeprefix("net."): value
        for name, value in checkpoint["state_dict"].items()
        if name.startswith("net.")
    }


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` as a Path, or a FileNotFoundError that says what to pass."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={path} does not exist. Pass a checkpoint written by avsac_lit.train, "
            "e.g. logs/train/runs/<time>/checkpoints/last.ckpt."
        )
    return path


def read_checkpoint(ckpt_path: Path, mmap: bool = False) -> dict:
    """The checkpoint file's contents (``mmap``: tensors mapped, not read), verified against its
    checksums (:mod:`avsac_lit.storage.checksums`), or a ValueError that names the file instead
    of the reader's own message (an empty or truncated file, a damaged tensor)."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise ValueError(
            f"Cannot read checkpoint {ckpt_path}: {error}. Expected a .ckpt file written by "
            "avsac_lit.train."
        ) from error
    verify(checkpoint, ckpt_path)
    return checkpoint


def checkpoint_config(
    ckpt_path: str | Path, config: str | Path | None = None, *, to_build: bool = True
) -> DictConfig:
    """The config of the run that wrote ``ckpt_path`` (see :func:`run_config`), read without
    loading the weights (the file is memory-mapped). ``to_build=False``: only read, never built
    (a resume compares it with the run's own config), so its targets are not checked."""
    ckpt_path = existing_checkpoint(ckpt_path)
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    saved = (checkpoint.get("avsac_lit") or {}) if isinstance(checkpoint, dict) else {}
    return run_config(ckpt_path, saved.get("config"), config, to_build=to_build)


def run_config(
    ckpt_path: Path, saved: dict | None, explicit: str | Path | None, *, to_build: bool = True
) -> DictConfig:
    """The run's config: ``explicit``, else the one saved in the checkpoint, else the run
    directory's ``config.yaml``. The advice for a checkpoint without one, ``config=``, is what
    ``avsac_lit.eval`` and ``avsac_lit.predict`` take (and :func:`load_trained`, ``config``).
    Whichever it is, it was read from a file and is checked before anything is built from it
    (:func:`trusted_config`)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(
                f"config={path} does not exist. Pass the config.yaml of the run that wrote "
                f"{ckpt_path}: config=logs/train/runs/<time>/config.yaml."
            )
        return upgraded(trusted_config(OmegaConf.load(path), f"config={path}", to_build))
    if saved is not None:
        return upgraded(
            trusted_config(OmegaConf.create(saved), f"the config stored in {ckpt_path}", to_build)
        )
    path = ckpt_path.resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{ckpt_path} carries no config and there is no {path}. Pass the config.yaml of the "
            "run that wrote the checkpoint: config=logs/train/runs/<time>/config.yaml."
        )
    source = f"{path} (the run's config, read for {ckpt_path}, which carries none)"
    return upgraded(trusted_config(OmegaConf.load(path), source, to_build))


def check_classes(ckpt_path: Path, state_dict: dict[str, Tensor], cfg: DictConfig) -> None:
    """The classifier's output channels must be the config's classes (a config from another
    run would otherwise fail with a wall of shape mismatches)."""
    weights = [v for k, v in state_dict.items() if k.startswith("head.to_mask.") and v.dim() == 4]
    if not weights:
        raise ValueError(f"{ckpt_path} holds no AVS model of this suite (no net.head.to_mask).")
    classes = weights[-1].shape[0]
    if classes != cfg.model.num_classes:
        raise ValueError(
            f"{ckpt_path} predicts {classes} classes but its config ({cfg.data.task}) says "
            f"{cfg.model.num_classes}: the config belongs to another run. Pass the config.yaml "
            "of the run that wrote this checkpoint."
        )


def without_weight_files(net_config: DictConfig) -> DictConfig:
    """The net's config with every pretrained-weight file and hub download turned off."""
    net_config = OmegaConf.create(OmegaConf.to_container(net_config, resolve=True))
    for node in (net_config.get("visual"), net_config.get("audio")):
        if node is not None:
            if "weights" in node:
                node.weights = None
            if "pretrained" in node:
                node.pretrained = False
    return net_config


def training_identity(cfg: DictConfig) -> dict:
    """What a resumed run must share with its checkpoint: the task and the model, flattened to
    dotted keys, renamed values by today's names (``true`` and ``cross_attention`` are one AGCA);
    weight-file paths excluded (the checkpoint holds the weights)."""
    net = OmegaConf.to_container(without_weight_files(cfg.model.net), resolve=True)
    identity = {"data.task": cfg.data.task, "model.name": cfg.model.name}

    def flatten(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                flatten(f"{prefix}.{key}", value)
        else:
            identity[prefix] = renamed_value(prefix, node)

    flatten("model.net", net)
    return identity
