"""Loading published checkpoint files onto our modules, with errors that say what did not fit."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn


def load_checkpoint_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth`` file; unwraps ``{"state_dict": ...}`` / ``{"model": ...}``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} does not exist. Download the published checkpoint and point the "
            "setting at it (see README, 'Pretrained weights')."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Cannot read weights file {path}: {error}") from error
    for key in ("state_dict", "model"):
        if (
            isinstance(checkpoint, Mapping)
            and key in checkpoint
            and isinstance(checkpoint[key], Mapping)
        ):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"Weights file {path} holds a {type(checkpoint).__name__}, not a state dict."
        )
    return dict(checkpoint)


def load_matching(module: nn.Module, state_dict: Mapping[str, Tensor], *, source: str) -> None:
    """Load ``state_dict`` strictly; on a mismatch, raise listing the missing and unexpected keys
    and the shape mismatches, so that a wrong file is recognised at once."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {list(state_dict[k].shape)} vs model {list(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong_shape:

        def listing(keys: list[str]) -> str:
            shown = ", ".join(keys[:8])
            return f"{shown}, ... ({len(keys)} in all)" if len(keys) > 8 else shown or "none"

        raise ValueError(
            f"Weights {source} do not fit {type(module).__name__}.\n"
            f"  missing keys: {listing(missing)}\n"
            f"  unexpected keys: {listing(unexpected)}\n"
            f"  shape mismatches: {listing(wrong_shape)}"
        )
    module.load_state_dict(state_dict)


# The seed of randomly initialised encoders: fixed, so that an encoder without a weight file is the
# same tensors in every run (as a published file is), and a checkpoint need not store it.
ENCODER_INIT_SEED = 0


@contextmanager
def fixed_encoder_init() -> Iterator[None]:
    """Initialise what is built inside from :data:`ENCODER_INIT_SEED`, leaving the global random
    state as it was: the run's seed then governs only the trainable parts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ENCODER_INIT_SEED)
        yield


def state_digest(module: nn.Module, dtype: torch.dtype | None = None) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes): equal digests, equal
    tensors. With ``dtype``, of the state with its floating tensors cast to ``dtype`` where the
    cast loses nothing: a float64 copy of float32 weights (``trainer.precision=64-true``) has the
    float32 weights' digest under ``dtype=torch.float32``, a float32 module the same digest with
    or without it, and a tensor holding values the cast would round keeps a digest of its own.

    A run asks for the digests of its frozen encoders at every checkpoint it writes or reads
    (hundreds of MB each, 0.16 s for the VGGish), so the last digest of each module is kept with
    the identity and version counter of every tensor it was taken from: torch bumps a tensor's
    version on every in-place change (an optimiser step, ``load_state_dict``, ``nn.init``, any
    in-place op under ``no_grad``), and a replaced tensor has another address (the kept
    references stop the old one's memory from being reused). Writes that torch cannot see, through
    ``.data`` or a numpy view, are not noticed: change weights through torch. (Nor are those of
    kernels that skip the version counter: AdamW's ``fused=True``, which the suite does not use.)
    """
    state = module.state_dict()
    if dtype is not None and all(t.dtype == dtype for t in state.values() if t.is_floating_point()):
        dtype = None  # the same bytes: share the digest kept without a cast
    key = _identities(state)
    kept = _DIGESTS.setdefault(module, {}).get(dtype)
    if kept is not None and kept[0] == key:
        return kept[2]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            cast = tensor.to(dtype)
            if torch.equal(cast.to(tensor.dtype), tensor):  # else hashed as it is: no match
                tensor = cast
        tensor = tensor.contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer, not a copy
    _DIGESTS[module][dtype] = (key, list(state.values()), digest.hexdigest())
    return digest.hexdigest()


def remember_digest(module: nn.Module, digest: str) -> None:
    """Keep ``digest`` as :func:`state_digest` of ``module`` as it is now: for a module whose
    tensors were just copied from a state of known digest (the fixed random VGGish's clones)."""
    state = module.state_dict()
    _DIGESTS.setdefault(module, {})[None] = (_identities(state), list(state.values()), digest)


def floating_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first floating tensor (``None`` without one)."""
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _identities(state: Mapping[str, Tensor]) -> tuple:
    return tuple(
        (name, t.device, t.dtype, tuple(t.shape), t.stride(), t.data_ptr(), t._version)
        for name, t in state.items()
    )


# module -> {dtype cast to or None: (its tensors' identities and versions, the tensors, their
# digest)}; see state_digest.
_DIGESTS: weakref.WeakKeyDictionary[
    nn.Module, dict[torch.dtype | None, tuple[tuple, list[Tensor], str]]
] = weakref.WeakKeyDictionary()
