"""Layer 0. Files written whole and read back verified: atomic writes and the disk's refusals named
(``atomic``), checksums of checkpoints and cache entries (``checksums``), names from data joined
only inside their directory (``safe_paths``). Standard library and torch only.
"""
