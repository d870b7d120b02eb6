"""The frozen encoders' outputs, computed once per input and kept on disk.

A frozen backbone in eval mode and a frozen VGGish give the same output for the same input in every
epoch of every run that uses the same weights: the PVT-v2-b5 forward alone is 9% of an AVSAC
training step at 224 px, and VGGish is the larger part of the CPU demo's step. The cache stores
each frame's outputs once (the backbone's four feature maps, the VGGish embedding) and reads them
back.

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

Integrity. An entry is a ``.npy`` array (1-D, the parts' values in a row) followed by the CRC-32
of its bytes (4 bytes, little-endian; NumPy's reader ignores them). A read checks the checksum,
the header, the dtype and the length against the store's ``layout.json`` (the parts' shapes); an
entry that fails (truncated, torn, changed on disk) is logged once with its path, deleted,
computed again and rewritten, so the run goes on as with a clean cache. In a cache this process
cannot delete from (a shared one, read-only to it) the damaged entry stays: the warning says how
to repair it, and the run computes that entry once and keeps it in memory. A disk that refuses a
write (full, read-only) turns the cache off for the rest of the run, with a warning.

Layout: ``{root}/{visual|audio}-v{version}-{digest[:16]}-{dtype}[-{H}x{W}]/{key}.npy`` and
``layout.json``, each file written to a unique temporary name and renamed, so concurrent runs of
a sweep can share the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from avsac_lit.models.weights import state_digest
from avsac_lit.storage.atomic import DiskWriteError, atomic_path, remove_leftovers, unrepairable
from avsac_lit.storage.safe_paths import inside

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STORED_AS = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}
# Bump when what an entry holds changes, so that old stores are never read (2: CRC-32 trailer).
FORMAT_VERSION = 2
CHECKSUM_BYTES = 4


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
        verify: check each entry's checksum when it is read (off: only its length and header;
            the switch exists to measure the check's cost, docs/performance.md).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        dtype: str = "float16",
        enabled: bool = True,
        verify: bool = True,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(
                f"model.feature_cache.dtype={dtype!r}; expected one of {', '.join(DTYPES)}."
            )
        self.root, self.dtype, self.enabled, self.verify = Path(root), dtype, enabled, verify
        self.digests: dict[int, str] = {}  # id(encoder) -> weight digest, for the bound model
        self.reported: set[Path] = set()  # damaged entries, logged once each
        # Damaged entries this process cannot delete, and their values as computed here.
        self.unrepairable: set[Path] = set()
        self.in_memory: dict[Path, Tensor] = {}
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
        return inside(self.root, name)

    def visual(self, net: nn.Module, frames: Tensor) -> list[Tensor]:
        store = self.store("visual", net.visual, tuple(frames.shape[-2:]))
        flat, shapes = self.entries(store, frames, lambda missing: net.visual(frames[missing]))
        sizes = [int(np.prod(shape)) for shape in shapes]
        return [
            part.reshape(len(frames), *shape)
            for part, shape in zip(flat.split(sizes, dim=1), shapes, strict=True)
        ]

    def audio(self, net: nn.Module, examples: Tensor) -> Tensor:
        store = self.store("audio", net.audio.vggish)
        flat, _ = self.entries(
            store, examples, lambda missing: [net.audio.embed(examples[missing])]
        )
        return flat

    def entries(self, store: Path, inputs: Tensor, encode) -> tuple[Tensor, list[list[int]]]:
        """The stored outputs of ``inputs`` [N, ...], flattened [N, sum of the parts' sizes], and
        the parts' shapes; the missing (or damaged) ones computed by ``encode(indices)``, which
        returns the parts [n, ...], and written."""
        layout = self.read_layout(store)
        keys = [input_key(item) for item in inputs]
        found = [self.read(store, key, layout) if layout else None for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            with torch.no_grad():
                parts = encode(missing)
            layout = [list(part.shape[1:]) for part in parts]
            self.write_layout(store, layout)
            flat = torch.cat([part.flatten(1) for part in parts], dim=1)  # [n, sum C h w]
            for row, i in enumerate(missing):
                found[i] = self.write(store, keys[i], flat[row])
        self.count(len(keys), len(missing))
        return torch.stack(found).to(inputs.device, inputs.dtype), layout

    def read_layout(self, store: Path) -> list[list[int]] | None:
        """The shapes of an entry's parts (the backbone's 4 levels, or VGGish's one embedding),
        or None for a store without (or with an unreadable) ``layout.json``."""
        path = store / "layout.json"
        try:
            layout = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            self.damaged(path, f"unreadable ({error})")
            return None
        if not (isinstance(layout, list) and all(isinstance(s, list) for s in layout)):
            self.damaged(path, "not a list of shapes")
            return None
        return layout

    def write_layout(self, store: Path, layout: list[list[int]]) -> None:
        if self.read_layout(store) != layout:
            self.guarded_write(store / "layout.json", json.dumps(layout).encode())

    def read(self, store: Path, key: str, layout: list[list[int]]) -> Tensor | None:
        """One entry (float32), or None when it is missing or damaged (a damaged one is logged
        and deleted, to be computed and written again)."""
        path = inside(store, f"{key}.npy")
        if path in self.unrepairable:
            return self.in_memory.get(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            self.damaged(path, f"unreadable ({error})")
            return None
        body, trailer = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
        if len(data) < CHECKSUM_BYTES or (
            self.verify and zlib.crc32(body) != int.from_bytes(trailer, "little")
        ):
            self.damaged(path, "its checksum does not match its content (torn or changed)")
            return None
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            self.damaged(path, f"not a .npy array ({error})")
            return None
        expected = (sum(int(np.prod(shape)) for shape in layout),)
        stored = STORED_AS[self.dtype]
        if array.dtype != stored or array.shape != expected:
            self.damaged(path, f"{array.dtype} {array.shape}, expected {stored} {expected}")
            return None
        tensor = torch.from_numpy(array.copy())
        if self.dtype == "bfloat16":  # NumPy has no bfloat16: stored as its 16 bits
            tensor = tensor.view(torch.bfloat16)
        return tensor.float()

    def damaged(self, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
            outcome = "Deleted; it is computed and written again."
        except OSError as error:
            self.unrepairable.add(path)
            outcome = unrepairable(path, error, "this run computes what it holds itself, once")
        if path not in self.reported:
            self.reported.add(path)
            log.warning("Feature cache entry %s is damaged: %s. %s", path, why, outcome)

    def write(self, store: Path, key: str, value: Tensor) -> Tensor:
        """Store one entry; returns it as a read gives it back (rounded to the dtype)."""
        rounded = value.detach().to("cpu", DTYPES[self.dtype]).contiguous()
        array = (rounded.view(torch.int16) if self.dtype == "bfloat16" else rounded).numpy()
        path = inside(store, f"{key}.npy")
        if path in self.unrepairable:
            self.in_memory[path] = rounded.float()
            return self.in_memory[path]
        body = io.BytesIO()
        np.save(body, array, allow_pickle=False)
        data = body.getvalue()
        self.guarded_write(path, data + zlib.crc32(data).to_bytes(CHECKSUM_BYTES, "little"))
        return rounded.float()

    def guarded_write(self, path: Path, data: bytes) -> None:
        """Write a file of the cache; a disk that refuses it (full, read-only, no permission)
        turns the cache off for the rest of the run, with a warning: the run goes on without."""
        if not self.enabled:
            return
        try:
            with atomic_path(path) as partial:
                partial.write_bytes(data)
        except OSError as error:
            self.enabled = False
            reason = error.strerror if isinstance(error, DiskWriteError) else str(error)
            log.warning(
                "The feature cache is off for the rest of this run: %s. The encoders run on "
                "every batch instead (slower, same results up to the cache's %s rounding). Free "
                "space there, or choose another directory with paths.cache_dir=DIR, or turn the "
                "cache off with model.feature_cache.enabled=false.",
                reason, self.dtype,
            )  # fmt: skip

    def count(self, total: int, missing: int) -> None:
        self.hits += total - missing
        self.misses += missing
