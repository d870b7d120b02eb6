"""The AVSBench evaluation protocol, reproduced exactly, quirks included.

S4/MS3, per evaluation batch (then averaged over batches):

* ``mask_iou`` (Jaccard, M_J): sigmoid > 0.5, per-frame IoU, mean over the batch's frames. Quirk: a
  frame with empty ground truth scores its true-negative fraction, rewarding an empty prediction.
* ``f_measure`` (M_F): beta^2 = 0.3, 255 thresholds ``linspace(0, 1 - 1e-10)`` (whose last value is
  exactly 1.0 in float32), F curves averaged over the frames with non-empty ground truth, max over
  thresholds. Quirks: frames with empty ground truth are skipped; a batch without any scores 0 and
  still counts; the result depends on the evaluation batch size (2 clips in AVSegFormer).

AVSS, over a whole split:

* ``avss_miou_fscore``: per-frame, per-class IoU and F summed, each divided by the number of frames
  in which the class is predicted or present, NaN to 0, mean over all classes, background included.
  Quirks: absent classes count 0; the reference scores the padding frames of 5-frame clips as
  all-background frames; its ``miou_noBg`` drops the last class, not background (not reported here).

``docs/metrics.md`` explains each quirk and which class to report.
"""

from avsac_lit.metrics.functional import (
    avss_frame_stats,
    avss_miou_fscore,
    f_measure,
    f_measure_curves,
    mask_iou,
)
from avsac_lit.metrics.protocol import (
    AVSSFScore,
    AVSSMeanIoU,
    PooledFScore,
    ProtocolFScore,
    ProtocolJaccard,
)

__all__ = [
    "AVSSFScore",
    "AVSSMeanIoU",
    "PooledFScore",
    "ProtocolFScore",
    "ProtocolJaccard",
    "avss_frame_stats",
    "avss_miou_fscore",
    "f_measure",
    "f_measure_curves",
    "mask_iou",
]
