"""The Hydra configs, shipped with the package and found as ``pkg://avsac_lit.conf``."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
