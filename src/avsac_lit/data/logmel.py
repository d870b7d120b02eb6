"""Log-mel examples computed from wavs once and kept on disk.

AVSS publishes only ``audio.wav``, and an S4/MS3 copy may lack some ``.pkl`` files. The reference
AVSS code runs the VGGish front end on every batch in the main process; we run it once per wav and
cache the result, keyed by the wav's absolute path and invalidated when the wav's size or
modification time changes. Each entry carries the checksum of its tensor: a damaged one is
computed again (in a cache this process cannot delete from, a shared one read-only to it, the
entry stays, and the process keeps the log-mels it computed instead in memory). The cache lives
outside the dataset tree (which may be read-only), in the ``log_mel/`` folder of the suite's cache
directory (``paths.cache_dir``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from avsac_lit.data.audio import wav_to_examples
from avsac_lit.storage.atomic import atomic_path, remove_leftovers, unrepairable
from avsac_lit.storage.checksums import tensor_checksum
from avsac_lit.storage.safe_paths import inside

log = logging.getLogger(__name__)

# Bump when the front end's output or the entry's format changes, so that old caches are
# recomputed (2: entries carry their checksum).
FRONTEND_VERSION = 2


PATHS_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "paths" / "default.yaml"


def default_cache_dir() -> Path:
    """The suite's cache directory as the configs set it by default (``paths.cache_dir``:
    ``$AVSAC_CACHE_DIR``, else ``data/.cache`` under ``$AVSAC_ROOT`` or the working directory),
    for the tools that run without a composed config."""
    paths = OmegaConf.create({"paths": OmegaConf.load(PATHS_CONFIG)}).paths
    return Path(paths.cache_dir)


class LogMelCache:
    """Returns the VGGish log-mel examples [N, 1, 96, 64] of a wav, computing them at most once.

    Args:
        cache_dir: the suite's cache directory; the tensors go into its ``log_mel/``. ``None``
            uses :func:`default_cache_dir`.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_dir = root / "log_mel"
        self.writable = True
        # Damaged entries this process cannot delete, and the entries computed here instead.
        self.unrepairable: set[Path] = set()
        self.in_memory: dict[Path, dict] = {}

    def remove_leftovers(self) -> None:
        """Delete what killed writers left here; an hour old, so no live writer's file."""
        if self.cache_dir.is_dir():
            for folder in self.cache_dir.iterdir():
                remove_leftovers(folder, older_than_s=3600)

    def path_for(self, wav_path: Path) -> Path:
        resolved = wav_path.resolve()
        digest = hashlib.sha1(str(resolved.parent).encode()).hexdigest()[:16]
        return inside(self.cache_dir / digest, f"{resolved.stem}.pt")

    def load(self, wav_path: Path) -> torch.Tensor:
        if not wav_path.is_file():
            raise FileNotFoundError(f"Missing file: {wav_path}")
        stat = wav_path.stat()
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "version": FRONTEND_VERSION}
        cached_path = self.path_for(wav_path)
        if cached_path in self.unrepairable:
            cached = self.in_memory.get(cached_path)
        else:
            cached = self.read(cached_path)
        if cached is not None and cached.get("key") == key:  # else stale: the wav changed
            return cached["examples"]
        examples = wav_to_examples(wav_path)
        self.write(cached_path, {"key": key, "examples": examples})
        return examples

    def read(self, path: Path) -> dict | None:
        """A cached entry, or None when there is none; a damaged one (torn, changed on disk: its
        checksum does not match) is logged, deleted and computed again."""
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as error:
            return self.damaged(path, f"unreadable ({error})")
        examples = cached.get("examples") if isinstance(cached, dict) else None
        if not isinstance(examples, torch.Tensor) or tensor_checksum(examples) != cached.get(
            "checksum"
        ):
            return self.damaged(path, "its checksum does not match its content")
        return cached

    def damaged(self, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
            outcome = "Deleted; it is computed from its wav again."
        except OSError as error:
            self.unrepairable.add(path)
            instead = "this process computes its log-mels from the wav itself, once"
            outcome = unrepairable(path, error, instead)
        log.warning("Log-mel cache entry %s is damaged: %s. %s", path, why, outcome)

    def write(self, path: Path, payload: dict) -> None:
        """Cache an entry; a disk that refuses it turns the cache's writes off, with a warning
        (dataloader workers may compute the same wav at once: each writes its own temporary
        file, and the rename is atomic)."""
        if path in self.unrepairable:
            self.in_memory[path] = payload
            return
        if not self.writable:
            return
        payload = payload | {"checksum": tensor_checksum(payload["examples"])}
        try:
            with atomic_path(path) as partial, open(partial, "wb") as handle:
                torch.save(payload, handle)
        except OSError as error:
            self.writable = False
            log.warning("The log-mel cache in %s takes no more entries in this process: %s. The "
                        "log-mels are computed from the wavs when needed. Free space there, or "
                        "choose another directory: paths.cache_dir=DIR.", self.cache_dir,
                        error)  # fmt: skip
