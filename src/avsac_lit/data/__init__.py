"""AVSBench data: the S4, MS3 and AVSS datasets as published, and a synthetic twin.

Every dataset returns one item format, whatever the task, so that models, losses and metrics never
branch on the layout:

==============  =====================  ==========================================================
key             shape / type           meaning
==============  =====================  ==========================================================
``frames``      float [T, 3, H, W]     ImageNet-normalised frames; AVSS padding frames are zeros
``audio``       float [T, 1, 96, 64]   VGGish log-mel example k for frame k (AVSS padding: zeros)
``masks``       [T, H, W]              S4/MS3: float 0/1 sounding-object masks; AVSS: long class
                                       ids (0 = background). Zeros where no ground truth exists
``mask_valid``  bool [T]               True where a ground-truth mask exists (S4 train: frame 0)
``frame_valid`` bool [T]               False on AVSS padding frames (v1s/v1m clips padded to 10)
``name``        str                    the clip's name (S4/MS3) or uid (AVSS)
==============  =====================  ==========================================================

T is 5 for S4 and MS3 and 10 for AVSS. H = W = ``img_size``.

Build a dataset with :func:`build_dataset` or, for training, :class:`AVSDataModule`. The names
below are imported when first asked for (PEP 562): a module of the package (``data.manifest``,
``data.io``) loads without the datasets, and the datasets without the data module's Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_PUBLIC = {
    "SPLITS": "avsac_lit.data.metadata",
    "TASKS": "avsac_lit.data.metadata",
    "AVSBenchDataset": "avsac_lit.data.avsbench",
    "AVSSDataset": "avsac_lit.data.avsbench",
    "DatasetLayoutError": "avsac_lit.data.metadata",
    "MS3Dataset": "avsac_lit.data.avsbench",
    "S4Dataset": "avsac_lit.data.avsbench",
    "build_dataset": "avsac_lit.data.avsbench",
    # The configs name it as avsac_lit.data.AVSDataModule; Hydra finds it here.
    "AVSDataModule": "avsac_lit.data.datamodule",
}

__all__ = [
    "SPLITS",
    "TASKS",
    "AVSBenchDataset",
    "AVSDataModule",
    "AVSSDataset",
    "DatasetLayoutError",
    "MS3Dataset",
    "S4Dataset",
    "build_dataset",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'avsac_lit.data' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from avsac_lit.data.avsbench import (
        AVSBenchDataset,
        AVSSDataset,
        MS3Dataset,
        S4Dataset,
        build_dataset,
    )
    from avsac_lit.data.datamodule import AVSDataModule
    from avsac_lit.data.metadata import SPLITS, TASKS, DatasetLayoutError
