"""The frozen encoders' outputs, computed once per input and kept on disk.

A frozen backbone in eval mode and a frozen VGGish give the same output for the same input in every
epoch of every run that uses the same weights: the PVT-v2-b5 forward alone is 9% of an AVSAC
training step at 224 px, and VGGish is the larger part of the CPU demo's step. The cache stores
each frame's outputs once (the backbone's four feature maps, the VGGish embedding) and reads them
back memory-mapped.

Keys. An entry is named by the SHA-256 of its input tensor's bytes (one normalised frame
[3, H, W], or one log-mel example [1, 96, 64]) inside a store named by the encoder's weight digest
(:func:`avsac_lit.models.weights.state_digest`), the stored dtype and, for frames, the input size.
Whatever changes the input (image size, resizing, normalisation, another file, another clip's
audio) changes the key, and other weights use another store, so a stale entry is never read.

Exactness. The cache is used only where it changes nothing but rounding: an encoder that is frozen
and in eval mode (AVSegFormer's official recipe keeps its frozen PVT in train mode, with drop path:
not cached; an encoder unfrozen mid-run stops using it). Entries are stored in ``dtype``:
``float32`` gives bit-identical features; ``float16`` (the default, half the disk) and ``bfloat16``
round them (docs/performance.md measures the effect on logits and losses). A computed entry is
rounded the same way before use, so a run sees the same features whether they were read or
computed.

Layout: ``{root}/{visual|audio}-{digest[:16]}-{dtype}[-{H}x{W}]/{key}.npy``, each file written to
a ``.partial`` name and renamed, so concurrent runs of a sweep can share the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from avsac_lit.atomic import atomic_path, remove_leftovers
from avsac_lit.models.weights import state_digest

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Bump when what an entry holds changes, so that old stores are never read.
FORMAT_VERSION = 1


def input_key(tensor: Tensor) -> str:
    """SHA-256 of one input's dtype and bytes."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(str(data.dtype).encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def frozen_and_eval(module: nn.Module) -> bool:
    """No parameter trains and no submodule is in train mode (no drop path, dropout or batch
    statistics): the module is a fixed function of its input."""
    submodules = list(module.modules())[1:]  # a wrapper's own mode changes nothing
    return not any(p.requires_grad for p in module.parameters()) and not any(
        m.training for m in submodules
    )


class EncoderFeatureCache:
    """Disk cache of the frozen encoders' outputs (see the module docstring).

    Args:
        root: the cache's folder (the runs' configs: ``${paths.cache_dir}/encoder_features``).
        dtype: ``float16``, ``bfloat16`` or ``float32`` (exact).
        enabled: off: the encoders run on every batch.
    """

    def __init__(self, *, root: str | Path, dtype: str = "float16", enabled: bool = True) -> None:
        if dtype not in DTYPES:
            raise ValueError(
                f"model.feature_cache.dtype={dtype!r}; expected one of {', '.join(DTYPES)}."
            )
        self.root, self.dtype, self.enabled = Path(root), dtype, enabled
        self.digests: dict[int, str] = {}  # id(encoder) -> weight digest, for the bound model
        self.hits = self.misses = 0

    def bind(self, net: nn.Module) -> None:
        """Read the encoders' weight digests (once per fit, eval or resume: weights loaded from a
        checkpoint after the module was built are the ones that count)."""
        self.digests = {}
        for encoder in (net.visual, net.audio.vggish):
            if frozen_and_eval(encoder):
                self.digests[id(encoder)] = state_digest(encoder)
        if self.bound:
            cached = [name for name, encoder in (("backbone", net.visual),
                      ("VGGish", net.audio.vggish)) if id(encoder) in self.digests]  # fmt: skip
            log.info(
                "The frozen %s outputs are cached in %s (%s; docs/performance.md lists the disk "
                "it takes); model.feature_cache.enabled=false turns the cache off.",
                " and ".join(cached), self.root, self.dtype,
            )  # fmt: skip
        for store in self.root.glob("*-*"):
            remove_leftovers(store, older_than_s=3600)

    def unbind(self) -> None:
        self.digests = {}

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` found an encoder to stand in for (and ``enabled``)."""
        return self.enabled and bool(self.digests)

    def outputs(self, net: nn.Module, frames: Tensor, audio: Tensor) -> dict[str, Tensor | list]:
        """The cached encoder outputs for flattened frames [N, 3, H, W] and log-mel examples
        [N, 1, 96, 64] (``visual``: the backbone's 4 feature maps, ``audio``: the VGGish
        embeddings, as ``AVSModel.encode`` takes them), for the encoders the cache may stand in
        for; an encoder it may not is left for the model to run."""
        outputs: dict[str, Tensor | list] = {}
        if self.usable(net.visual):
            outputs["visual"] = self.visual(net, frames)
        if self.usable(net.audio.vggish):
            outputs["audio"] = self.audio(net, audio)
        return outputs

    def usable(self, encoder: nn.Module) -> bool:
        # Bound when frozen; unfrozen (or switched to train mode) since, it no longer qualifies.
        return id(encoder) in self.digests and frozen_and_eval(encoder)

    def store(self, kind: str, encoder: nn.Module, size: tuple[int, ...] = ()) -> Path:
        name = f"{kind}-v{FORMAT_VERSION}-{self.digests[id(encoder)][:16]}-{self.dtype}"
        if size:
            name += "-" + "x".join(map(str, size))
        return self.root / name

    def visual(self, net: nn.Module, frames: Tensor) -> list[Tensor]:
        store = self.store("visual", net.visual, tuple(frames.shape[-2:]))
        shapes_file = store / "levels.json"
        shapes = json.loads(shapes_file.read_text()) if shapes_file.is_file() else None
        keys = [input_key(frame) for frame in frames]
        found = [self.read(store, key) if shapes else None for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            with torch.no_grad():
                levels = net.visual(frames[missing])
            shapes = [list(level.shape[1:]) for level in levels]
            if not shapes_file.is_file():
                with atomic_path(shapes_file) as partial:
                    partial.write_text(json.dumps(shapes))
            flat = torch.cat([level.flatten(1) for level in levels], dim=1)  # [n, sum C h w]
            for row, i in enumerate(missing):
                found[i] = self.write(store, keys[i], flat[row])
        self.count(len(keys), len(missing))
        flat = torch.stack(found).to(frames.device, frames.dtype)  # [N, sum C h w]
        sizes = [int(np.prod(shape)) for shape in shapes]
        return [
            part.reshape(len(frames), *shape)
            for part, shape in zip(flat.split(sizes, dim=1), shapes, strict=True)
        ]

    def audio(self, net: nn.Module, examples: Tensor) -> Tensor:
        store = self.store("audio", net.audio.vggish)
        keys = [input_key(example) for example in examples]
        found = [self.read(store, key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            with torch.no_grad():
                embeddings = net.audio.embed(examples[missing])  # [n, 128]
            for row, i in enumerate(missing):
                found[i] = self.write(store, keys[i], embeddings[row])
        self.count(len(keys), len(missing))
        return torch.stack(found).to(examples.device, examples.dtype)

    def read(self, store: Path, key: str) -> Tensor | None:
        path = store / f"{key}.npy"
        try:
            stored = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            return None
        tensor = torch.from_numpy(np.array(stored))
        if self.dtype == "bfloat16":  # NumPy has no bfloat16: stored as its 16 bits
            tensor = tensor.view(torch.bfloat16)
        return tensor.float()

    def write(self, store: Path, key: str, value: Tensor) -> Tensor:
        """Store one entry; returns it as a read gives it back (rounded to the dtype)."""
        rounded = value.detach().to("cpu", DTYPES[self.dtype]).contiguous()
        array = (rounded.view(torch.int16) if self.dtype == "bfloat16" else rounded).numpy()
        with atomic_path(store / f"{key}.npy") as partial, open(partial, "wb") as handle:
            np.save(handle, array)
        return rounded.float()

    def count(self, total: int, missing: int) -> None:
        self.hits += total - missing
        self.misses += missing
