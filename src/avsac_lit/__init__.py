"""avsac-lit: AVSAC and AVSegFormer for audio-visual segmentation, on Lightning + Hydra."""

__version__ = "0.1.0"
