"""A checkpoint as a trained model: its config, and its model rebuilt from that config.

A checkpoint written by ``avsac_lit.train`` (or ``avsac_lit.convert``) carries its run's resolved
config and, for AVSS, the class names, so it rebuilds its model on its own: no data, no pretrained
weight files (its own weights replace them). ``avsac_lit.eval`` and ``avsac_lit.predict`` use that
config, never one composed again from the command line. Older checkpoints take the run's
``config.yaml`` (found beside ``checkpoints/``, or passed explicitly).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from avsac_lit.build import build_module
from avsac_lit.data.avsbench import DATASETS
from avsac_lit.data.io import normalised_frame, resize_or_crop
from avsac_lit.integrity import verify
from avsac_lit.module import check_weights_fit

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
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
    module.restore_built_encoders(checkpoint)
    return module


def net_state(checkpoint: dict) -> dict[str, Tensor]:
    """The net's weights of a Lightning checkpoint, without the ``net.`` prefix."""
    return {
        name.removeprefix("net."): value
        for name, value in checkpoint["state_dict"].items()
        if name.startswith("net.")
    }


def rebuilt_encoders(ckpt_path: str | Path) -> dict[str, str]:
    """The encoders a checkpoint left out because its config rebuilds them (prefix -> sha256);
    empty for a self-contained checkpoint."""
    checkpoint = read_checkpoint(existing_checkpoint(ckpt_path), mmap=True)
    saved = (checkpoint.get("avsac_lit") or {}) if isinstance(checkpoint, dict) else {}
    return saved.get("rebuilt_encoders") or {}


@contextmanager
def encoder_files_needed(ckpt_path: str | Path, rebuilt: dict[str, str]):
    """Say, when a weight file is missing, that the checkpoint needs it and what to do.

    Only a file a constructor missed counts (Hydra wraps what a constructor raised): the block
    may also build the data (``avsac_lit.eval``), whose own missing files (a data root without
    the task's layout, :class:`DatasetLayoutError`) are the user's to fix as they say, not a
    reason to export the checkpoint."""
    from avsac_lit.data.avsbench import DatasetLayoutError

    try:
        yield
    except InstantiationException as raised:
        error = raised.__cause__
        if (
            not rebuilt
            or not isinstance(error, FileNotFoundError)
            or isinstance(error, DatasetLayoutError)
        ):
            raise
        raise FileNotFoundError(
            f"{ckpt_path} does not store its frozen encoders ({', '.join(rebuilt)}): they are "
            f"rebuilt from the weight files the training run used, and one is missing. {error} "
            "Put the file back where the run's config says, or, where the files are, write a "
            "self-contained checkpoint: python -m avsac_lit.export CKPT OUTPUT."
        ) from raised


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
    checksums (:mod:`avsac_lit.integrity`), or a ValueError that names the file instead of the
    reader's own message (an empty or truncated file, a damaged tensor)."""
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


class UntrustedConfigError(ValueError):
    """A config read from a file that names code the suite does not build, or a file to read."""


# Classes that configs of earlier versions name and :func:`upgraded` reads: version 0.1's BAVD
# (``model.net.bavd``, folded into the net) and its checkpoint callback.
EARLIER_TARGETS = frozenset(
    {"avsac_lit.models.bavd.BAVD", "lightning.pytorch.callbacks.ModelCheckpoint"}
)


# The nodes of a run config that no command builds from a file: eval takes its own loggers and
# none of the run's callbacks (eval.run_config_for_test), load_trained and export build the model
# only, and a resumed run builds from its command line. A run's own callbacks (FirstStepRecorder,
# a class of the user's) leave its checkpoints readable.
NEVER_BUILT = ("callbacks", "logger")


def targets(tree: object, key: str = "") -> Iterator[tuple[str, object]]:
    """Every ``_target_`` in a config's nested dicts and lists, with the key of the node that
    holds it (``model.net``; ``""`` for the top level)."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == "_target_":
                yield key, value
            else:
                yield from targets(value, f"{key}.{name}" if key else str(name))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from targets(value, f"{key}.{index}" if key else str(index))


@functools.cache
def suite_targets() -> frozenset[str]:
    """The classes the package's own configs name (``avsac_lit/conf``), read from them, and
    :data:`EARLIER_TARGETS`."""
    named = {
        target
        for path in CONFIG_DIR.rglob("*.yaml")
        for _, target in targets(OmegaConf.to_container(OmegaConf.load(path)))
    }
    return frozenset(named) | EARLIER_TARGETS


def buildable(target: object) -> bool:
    """Whether a config read from a file may name ``target``: a class of the suite's configs, or
    an optimiser or scheduler of ``torch.optim`` (a run may train with any, e.g.
    ``model.optimizer._target_=torch.optim.SGD``, and its checkpoint must still load). Decided
    without importing anything, which would run the module's code: the name is looked up in the
    modules already imported."""
    if not isinstance(target, str):
        return False
    if target in suite_targets():
        return True
    module_name, _, name = target.rpartition(".")
    if module_name != "torch.optim" and not module_name.startswith("torch.optim."):
        return False
    module = sys.modules.get(module_name)
    found = vars(module).get(name) if module is not None else None
    return isinstance(found, type) and issubclass(found, (Optimizer, LRScheduler))


def model_names() -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))


def trusted_config(loaded: DictConfig, source: str, to_build: bool = True) -> DictConfig:
    """``loaded``, a run config read from ``source``, resolved, once nothing in it would run code
    the suite does not: Hydra calls whatever a ``_target_`` names when the model is built (a
    checkpoint loaded with ``weights_only=True`` still carries its config), so every one must be
    :func:`buildable` (but in the nodes no command builds, :data:`NEVER_BUILT`). It is checked
    resolved (a resolver such as ``oc.create`` makes nodes) and
    returned resolved, so what is checked is what is built. A config of version 0.1's layout
    also names the model config :func:`upgraded` reads: it must be one the package ships.

    ``to_build=False``: the config is only read, never built (a resume compares it with the
    run's own, which its command line builds), so its targets are left unchecked: a run trained
    with a class of the user's (``model.net._target_=mylab.Net``) resumes from its own
    checkpoints."""
    try:
        tree = OmegaConf.to_container(loaded, resolve=True)
    except OmegaConfBaseException as error:
        raise UntrustedConfigError(
            f"Cannot read {source}: an interpolation in it does not resolve ({error}). The "
            "configs avsac_lit writes hold plain values: pass the config.yaml of the run that "
            "wrote the checkpoint (logs/train/runs/<time>/config.yaml)."
        ) from None
    if not isinstance(tree, dict):
        raise UntrustedConfigError(
            f"{source} is not a run config (a mapping with data, model, trainer, ...). Pass the "
            "config.yaml of the run that wrote the checkpoint."
        )
    built = {key: node for key, node in tree.items() if key not in NEVER_BUILT}
    refused = (
        [(key, target) for key, target in targets(built) if not buildable(target)]
        if to_build
        else []
    )
    if refused:
        named = "; ".join(
            f"{key + '.' if key else ''}_target_={target!r}" for key, target in refused[:3]
        )
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise UntrustedConfigError(
            f"Refusing {source}: it names {named}{more}, and avsac-lit builds only the classes "
            "of its own configs and torch.optim's optimisers and schedulers. Hydra calls "
            "whatever a _target_ names when the model is built, so a file naming anything else "
            "could run code; nothing was built from it. Use a checkpoint or config.yaml that "
            "avsac_lit wrote (train, convert or export) and that you trust; a model class of "
            "your own is built once the package's configs name it (conf/model/<name>.yaml, "
            "docs/architecture.md)."
        )
    model = tree.get("model")
    if (
        isinstance(model, dict)
        and "_target_" not in model
        and model.get("name") not in model_names()
    ):
        raise UntrustedConfigError(
            f"Refusing {source}: model.name={model.get('name')!r} is not a model of avsac-lit "
            f"({', '.join(model_names())}), and a config without model._target_ (version 0.1's "
            "layout) is completed from that model's config file. Pass the config.yaml of the run "
            "that wrote the checkpoint."
        )
    return OmegaConf.create(tree)


def upgraded(cfg: DictConfig) -> DictConfig:
    """A run config of version 0.1's layout (the BAVD under ``model.bavd``, the width as
    ``model.dim``, the module assembled by hand) in today's: ``model`` instantiates the
    LightningModule, the BAVD's settings are the net's. Today's configs pass unchanged."""
    model = cfg.model
    if "_target_" in model:
        return cfg
    current = OmegaConf.load(CONFIG_DIR / "model" / f"{model.name}.yaml")
    with open_dict(cfg):
        bavd = model.net.pop("bavd", None)
        if bavd is not None:
            model.net.decoder_layers = bavd.num_layers
            for key in ("bridge", "agca", "vga_ffn", "heads", "hidden_dim", "dropout"):
                model.net[key] = bavd[key]
        for stale in ("bavd", "dim"):
            model.pop(stale, None)
        for key, value in current.items():
            if key not in model:
                model[key] = value
    return cfg


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


@contextmanager
def quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def training_identity(cfg: DictConfig) -> dict:
    """What a resumed run must share with its checkpoint: the task and the model, flattened to
    dotted keys; weight-file paths excluded (the checkpoint holds the weights)."""
    net = OmegaConf.to_container(without_weight_files(cfg.model.net), resolve=True)
    identity = {"data.task": cfg.data.task, "model.name": cfg.model.name}

    def flatten(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                flatten(f"{prefix}.{key}", value)
        else:
            identity[prefix] = node

    flatten("model.net", net)
    return identity
