"""A trained model outside Lightning: :func:`load_trained` rebuilds a checkpoint's model from the
config it carries (checked: :mod:`avsac_lit.checkpoints.trust`) and its weights, for
``avsac_lit.predict``, the notebooks and scripts.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch import Tensor, nn

from avsac_lit.checkpoints.encoders import encoder_files_needed, restore_built_encoders
from avsac_lit.checkpoints.io import (
    check_classes,
    existing_checkpoint,
    net_state,
    read_checkpoint,
    run_config,
    without_weight_files,
)
from avsac_lit.checkpoints.versions import check_weights_fit
from avsac_lit.data.avsbench import DATASETS
from avsac_lit.data.io import normalised_frame, resize_or_crop
from avsac_lit.run.assemble import build_module

AVSBENCH_FRAME_SIZE = 224  # S4/MS3 frames were stored resized to 224 x 224 by the preprocessing


@dataclass
class TrainedModel:
    """A model in eval mode with what is needed to feed it and read its output."""

    net: nn.Module
    config: DictConfig
    checkpoint: Path
    class_names: list[str] | None = None

    @property
    def task(self) -> str:
        return str(self.config.data.task)

    @property
    def num_classes(self) -> int:
        return int(self.config.model.num_classes)

    @property
    def img_size(self) -> int:
        return int(self.config.data.img_size)

    @property
    def clip_frames(self) -> int:
        """Frames of a training clip: 5 for S4/MS3, 10 for AVSS."""
        return DATASETS[self.task].num_frames

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def frame_tensor(self, image: Image.Image) -> Tensor:
        """An RGB image as the model's input [3, S, S]: as the loaders prepare AVSBench frames
        (S4/MS3 frames were first stored at 224 x 224, then resized to the run's size)."""
        image = image.convert("RGB")
        if self.task != "avss":
            image = resize_or_crop(image, AVSBENCH_FRAME_SIZE, crop=False, is_mask=False)
        return normalised_frame(resize_or_crop(image, self.img_size, crop=False, is_mask=False))

    @torch.no_grad()
    def __call__(self, frames: Tensor, audio: Tensor) -> dict[str, Tensor]:
        """One clip: frames [T, 3, S, S], log-mels [T, 1, 96, 64] -> the net's outputs for it,
        without the batch dimension (``logits`` [T, K, S, S], ...)."""
        device = self.device
        valid = torch.ones(1, len(frames), dtype=torch.bool, device=device)
        outputs = self.net(frames[None].to(device), audio[None].to(device), valid)
        return {name: value[0] for name, value in outputs.items()}


def load_trained(
    ckpt_path: str | Path,
    *,
    config: str | Path | None = None,
    task: str | None = None,
    device: str | torch.device = "cpu",
) -> TrainedModel:
    """Rebuild the model of a checkpoint written by ``avsac_lit.train``.

    Args:
        ckpt_path: the ``.ckpt`` file.
        config: the run's ``config.yaml``, for checkpoints that do not carry their config.
        task: refuse a checkpoint trained for another task (``s4``, ``ms3`` or ``avss``).
        device: where the model runs.

    Raises:
        FileNotFoundError: no checkpoint, or no config for it.
        ValueError: not a checkpoint of this suite, another task, or a config whose model does not
            match the weights.
    """
    ckpt_path = existing_checkpoint(ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"{ckpt_path} is not a Lightning checkpoint (no state_dict): a bare state dict has no "
            "run config to rebuild its model from. Pass a checkpoint avsac_lit.train wrote "
            "(logs/train/runs/<time>/checkpoints/last.ckpt, or the best, epoch_*.ckpt); a "
            "published AVSegFormer file is converted first: python -m avsac_lit.convert "
            f"+experiment=<s4|ms3|avss> backbone=<pvt_v2_b5|resnet50> source={ckpt_path} "
            "output=CONVERTED.ckpt."
        )
    saved = checkpoint.get("avsac_lit") or {}
    cfg = run_config(ckpt_path, saved.get("config"), config)
    trained_task = str(cfg.data.task)
    if task is not None and task != trained_task:
        raise ValueError(
            f"{ckpt_path} was trained for task {trained_task!r} ({cfg.model.name} on "
            f"{cfg.data.root}), but task={task!r} was asked for. Use a checkpoint trained on "
            f"{task}, or leave task unset to predict with this one."
        )
    check_classes(ckpt_path, net_state(checkpoint), cfg)
    net = module_with_encoders(ckpt_path, checkpoint, cfg).net
    weights = {
        name: value for name, value in checkpoint["state_dict"].items() if name.startswith("net.")
    }
    expected = {f"net.{name}": value for name, value in net.state_dict().items()}
    check_weights_fit(weights, expected, ckpt_path, saved.get("version"))
    net.load_state_dict(net_state(checkpoint))
    return TrainedModel(
        net=net.to(device).eval(),
        config=cfg,
        checkpoint=ckpt_path,
        class_names=saved.get("class_names"),
    )


def module_with_encoders(ckpt_path: Path, checkpoint: dict, cfg: DictConfig) -> nn.Module:
    """The LightningModule of ``cfg``, with the encoders ``checkpoint`` left out put back into
    its state dict (built from the config's weight files, checked by digest). A checkpoint that
    holds every weight is built without any weight file."""
    rebuilt = (checkpoint.get("avsac_lit") or {}).get("rebuilt_encoders") or {}
    if not rebuilt:
        with open_dict(cfg):
            cfg.model.net = without_weight_files(cfg.model.net)
    with quiet("avsac_lit"), encoder_files_needed(ckpt_path, rebuilt):  # weights come next
        module = build_module(cfg)
    restore_built_encoders(module, checkpoint)
    return module


@contextmanager
def quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
