"""avsac-lit: AVSAC and AVSegFormer for audio-visual segmentation, on Lightning + Hydra.

The Python API for notebooks and scripts::

    from avsac_lit import load_trained, ProtocolJaccard, ProtocolFScore

    model = load_trained("logs/train/runs/<time>/checkpoints/last.ckpt")
    outputs = model(frames, audio)  # frames [T, 3, S, S], log-mels [T, 1, 96, 64] -> logits ...

:func:`compose_config` composes the suite's configs as the command line would.

Importing the package imports nothing else: each name is imported when it is first asked for
(PEP 562), so ``import avsac_lit.data`` does not load Lightning, Hydra and every model, and the
commands (``python -m avsac_lit.train``, ...) load what they use. ``docs/architecture.md`` draws
the subpackages and the order in which they may import each other.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

__version__ = version("avsac-lit")

# Public name -> the module that defines it.
_PUBLIC = {
    "TrainedModel": "avsac_lit.inference.trained",
    "load_trained": "avsac_lit.inference.trained",
    "compose_config": "avsac_lit.run.assemble",
    "AudioShare": "avsac_lit.metrics",
    "AVSSFScore": "avsac_lit.metrics",
    "AVSSMeanIoU": "avsac_lit.metrics",
    "ProtocolFScore": "avsac_lit.metrics",
    "ProtocolJaccard": "avsac_lit.metrics",
    "avss_miou_fscore": "avsac_lit.metrics",
    "f_measure": "avsac_lit.metrics",
    "mask_iou": "avsac_lit.metrics",
}

__all__ = [
    "AVSSFScore",
    "AVSSMeanIoU",
    "AudioShare",
    "ProtocolFScore",
    "ProtocolJaccard",
    "TrainedModel",
    "avss_miou_fscore",
    "compose_config",
    "f_measure",
    "load_trained",
    "mask_iou",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'avsac_lit' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:
    from avsac_lit.inference.trained import TrainedModel, load_trained
    from avsac_lit.metrics import (
        AudioShare,
        AVSSFScore,
        AVSSMeanIoU,
        ProtocolFScore,
        ProtocolJaccard,
        avss_miou_fscore,
        f_measure,
        mask_iou,
    )
    from avsac_lit.run.assemble import compose_config
