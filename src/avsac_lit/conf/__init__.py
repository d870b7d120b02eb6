"""The Hydra configs, shipped with the package and found as ``pkg://avsac_lit.conf``."""
