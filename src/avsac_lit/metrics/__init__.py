"""The AVSBench evaluation protocol, reproduced exactly, quirks included.

S4/MS3, per evaluation batch, then an unweighted mean over batches (``ProtocolJaccard``,
``ProtocolFScore``; quirk: a smaller last batch weighs as much as a full one):

* ``mask_iou`` (Jaccard, M_J): sigmoid > 0.5, per-frame inter / (union + 1e-7), mean over the
  batch's frames. Quirk: a frame with empty ground truth scores its true-negative fraction,
  rewarding an empty prediction. It is per frame, not a class mean.
* ``f_measure`` (M_F): beta^2 = 0.3, 255 thresholds ``linspace(0, 1 - 1e-10)`` (whose last value is
  exactly 1.0 in float32), eps 1e-20, NaN to 0, F curves averaged over the frames with non-empty
  ground truth, max over thresholds. Quirks: frames with empty ground truth are skipped; a batch
  without any scores 0 and still counts; the result depends on the evaluation batch size (2 clips
  = 10 frames in AVSegFormer). ``PooledFScore`` is the batch-independent variant, for sanity only.

AVSS, over a whole split (``AVSSMeanIoU``, ``AVSSFScore``):

* ``avss_frame_stats`` / ``avss_miou_fscore``: argmax of the softmax (not of the logits: float32
  ties go to the lower class id), per-frame, per-class IoU (eps 2.22e-16) and F (NaN to 0)
  summed, each divided by the number of frames in which the class is predicted or present, NaN to
  0, mean over all classes. Quirks: background is included in the mean; absent classes count 0;
  the reference scores the padding frames of 5-frame clips as all-background frames (the caller
  decides which frames to pass); its ``miou_noBg`` drops the last class, not background (not
  reported here).

Not part of the protocol: ``AudioShare``, the share of the audio in the final per-pixel feature,
measured with counterfactual inputs (:mod:`avsac_lit.metrics.audio_share`).

``docs/metrics.md`` explains each quirk and which class to report.
"""

from avsac_lit.metrics.audio_share import AudioShare, counterfactual_shifts
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
    "AudioShare",
    "PooledFScore",
    "ProtocolFScore",
    "ProtocolJaccard",
    "avss_frame_stats",
    "avss_miou_fscore",
    "counterfactual_shifts",
    "f_measure",
    "f_measure_curves",
    "mask_iou",
]
