"""The frozen encoders a checkpoint leaves out because its config rebuilds them (the published
weight files, timm's hub, or the fixed random init): left out as a checkpoint is written and put
back as it is read (the system's own checkpoint hooks call these), which ones a file left out,
recorded with their digests, and the message for a weight file that has gone.

They are put back by the module's ``on_load_checkpoint``, not by a callback: Lightning calls it
before the strict state-dict load, and the callbacks' hooks only after it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from torch import nn

from avsac_lit.checkpoints.io import existing_checkpoint, read_checkpoint
from avsac_lit.models.weights import floating_dtype, state_digest


def encoders(module: nn.Module) -> dict[str, nn.Module]:
    """The pretrained encoders of a system (a module holding an AVS ``net``) by state-dict
    prefix: ``net.visual`` and ``net.audio.vggish``."""
    net = getattr(module, "net", None)
    found = {"net.visual": getattr(net, "visual", None)}
    found["net.audio.vggish"] = getattr(getattr(net, "audio", None), "vggish", None)
    return {prefix: encoder for prefix, encoder in found.items() if encoder is not None}


@dataclass(frozen=True)
class BuiltEncoders:
    """What a system's encoders are when built from its config (a weight file, a hub, or the
    fixed init), by prefix: a checkpoint leaves out an encoder that still matches, and rebuilds
    it on loading. Compared in the dtype they were built in, so that a float64 copy (64-true)
    still matches and is left out."""

    dtypes: dict[str, torch.dtype | None]
    digests: dict[str, str]

    @classmethod
    def of(cls, module: nn.Module) -> BuiltEncoders:
        built = encoders(module)
        return cls(
            dtypes={prefix: floating_dtype(encoder) for prefix, encoder in built.items()},
            digests={prefix: state_digest(encoder) for prefix, encoder in built.items()},
        )


def leave_out_built_encoders(module: nn.Module, checkpoint: dict) -> None:
    """Remove from the checkpoint the encoders of ``module`` that are still what its config
    builds (its ``built_encoders``, :class:`BuiltEncoders`), recording their digests
    (``avsac_lit.rebuilt_encoders``): most of a checkpoint's bytes otherwise (the frozen VGGish
    alone is 97% of the demo's)."""
    built: BuiltEncoders = module.built_encoders
    rebuilt = {}
    for prefix, encoder in encoders(module).items():
        digest = state_digest(encoder, built.dtypes.get(prefix))
        if digest == built.digests.get(prefix):
            state_dict = checkpoint["state_dict"]
            for key in [k for k in state_dict if k.startswith(prefix + ".")]:
                del state_dict[key]
            rebuilt[prefix] = digest
    checkpoint["avsac_lit"]["rebuilt_encoders"] = rebuilt


def restore_built_encoders(module: nn.Module, checkpoint: dict) -> None:
    """Put back the encoders a checkpoint left out, from ``module``'s, which its config built,
    after checking they are the same tensors."""
    rebuilt = (checkpoint.get("avsac_lit") or {}).get("rebuilt_encoders") or {}
    built, dtypes = encoders(module), module.built_encoders.dtypes
    for prefix, digest in rebuilt.items():
        encoder = built.get(prefix)
        if encoder is None or state_digest(encoder, dtypes.get(prefix)) != digest:
            raise ValueError(
                f"The checkpoint does not store {prefix} (its weights come from the run's "
                "config: a weight file, timm's hub or the fixed random init), and the one "
                "built here is not the one it was trained with (another weight file, or "
                f"another version of it; expected sha256 {digest[:16]}...). Use the weight "
                "files of the training run, or a self-contained checkpoint written where "
                "they are: python -m avsac_lit.export CKPT OUTPUT."
            )
        for name, tensor in built[prefix].state_dict().items():
            checkpoint["state_dict"][f"{prefix}.{name}"] = tensor
    if "avsac_lit" in checkpoint:
        checkpoint["avsac_lit"]["rebuilt_encoders"] = {}


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
    from avsac_lit.data.metadata import DatasetLayoutError

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
