"""Log-mel examples computed from wavs once and kept on disk.

AVSS publishes only ``audio.wav``, and an S4/MS3 copy may lack some ``.pkl`` files. The reference
AVSS code runs the VGGish front end on every batch in the main process; we run it once per wav and
cache the result, keyed by the wav's absolute path and invalidated when the wav's size or
modification time changes. The cache lives outside the dataset tree (which may be read-only), in
the ``log_mel/`` folder of the suite's cache directory (``paths.cache_dir``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from avsac_lit.atomic import PARTIAL_SUFFIX, remove_leftovers
from avsac_lit.data.audio import wav_to_examples

# Bump when the front end's output changes, so that old caches are recomputed.
FRONTEND_VERSION = 1


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

    def remove_leftovers(self) -> None:
        """Delete what killed writers left here; an hour old, so no live writer's file."""
        if self.cache_dir.is_dir():
            for folder in self.cache_dir.iterdir():
                remove_leftovers(folder, older_than_s=3600)

    def path_for(self, wav_path: Path) -> Path:
        resolved = wav_path.resolve()
        digest = hashlib.sha1(str(resolved.parent).encode()).hexdigest()[:16]
        return self.cache_dir / digest / f"{resolved.stem}.pt"

    def load(self, wav_path: Path) -> torch.Tensor:
        if not wav_path.is_file():
            raise FileNotFoundError(f"Missing file: {wav_path}")
        stat = wav_path.stat()
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "version": FRONTEND_VERSION}
        cached_path = self.path_for(wav_path)
        if cached_path.is_file():
            try:
                cached = torch.load(cached_path, map_location="cpu", weights_only=True)
                if cached.get("key") == key:
                    return cached["examples"]
            except Exception:  # a torn or stale cache file is simply recomputed
                pass
        examples = wav_to_examples(wav_path)
        self._atomic_save(cached_path, {"key": key, "examples": examples})
        return examples

    @staticmethod
    def _atomic_save(path: Path, payload: dict) -> None:
        # Dataloader workers may compute the same wav at once; a rename is atomic, a write is not.
        # A per-process name: ``atomic_path``'s fixed one would be shared by those writers.
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        try:
            torch.save(payload, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
