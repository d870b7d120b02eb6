"""avsac-lit: AVSAC and AVSegFormer for audio-visual segmentation, on Lightning + Hydra."""

__version__ = "0.1.0"

from avsac_lit.searchpath import register as _register_search_path

_register_search_path()
