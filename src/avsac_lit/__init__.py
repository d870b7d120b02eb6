"""avsac-lit: AVSAC and AVSegFormer for audio-visual segmentation, on Lightning + Hydra.

The Python API for notebooks and scripts::

    from avsac_lit import load_trained, ProtocolJaccard, ProtocolFScore

    model = load_trained("logs/train/runs/<time>/checkpoints/last.ckpt")
    outputs = model(frames, audio)  # frames [T, 3, S, S], log-mels [T, 1, 96, 64] -> logits ...

:func:`compose_config` composes the suite's configs as the command line would.
"""

__version__ = "0.8.0"

from avsac_lit.build import compose_config
from avsac_lit.checkpoint import TrainedModel, load_trained
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
