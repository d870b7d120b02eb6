"""What a prediction writes into its ``output`` directory, and the checks on the way:

* ``overlay.mp4`` (:class:`OverlayVideo`: the sampled frames with their masks, one per second,
  with the audio), ``masks/frame_NNNN.png`` (:func:`save_mask`: at the video's displayed
  resolution, 0/255 for S4/MS3, AVSS class ids with their colour palette) and
  ``predictions.json`` (:func:`write_predictions`; per frame, :func:`read_logits`: its
  sounding-object area and scores, AVSS per class), all upright;
* ``output`` must be a new or empty directory (:func:`check_output`): one that already holds
  files (an earlier prediction, anything) is refused before anything is read, so a prediction
  never writes over an earlier run nor mixes two videos' masks;
* a NaN or an infinity in the model's logits (a damaged or diverged checkpoint) stops the
  prediction at that frame (:func:`check_finite`): no masks computed from them, and
  ``predictions.json`` never holds a NaN, an infinity or a null where a number belongs.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Collection, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avsac_lit.data.audio import SAMPLE_RATE
from avsac_lit.inference.trained import TrainedModel
from avsac_lit.inference.video import Sample, VideoReader
from avsac_lit.storage.atomic import PARTIAL_SUFFIX, atomic_path
from avsac_lit.storage.checksums import leaves
from avsac_lit.viz.draw import predicted_masks


class OutputInUseError(FileExistsError):
    """An ``output`` that already holds files. Writing into it would write over an earlier run or
    leave two videos' masks side by side, indistinguishable."""


class NonFiniteError(ValueError):
    """A NaN or an infinity where a score belongs. Masks thresholded from NaN are silently empty
    (and +inf silently sounding), so the prediction stops instead of writing them."""


# What a prediction writes into ``output``; names that tell an earlier prediction in it.
RESULTS = ("overlay.mp4", "masks", "predictions.json")
LISTED = 5  # entries a refusal names before "and N more"


def output_contents(output: Path, own: Collection[str] = ()) -> str | None:
    """What the directory ``output`` holds, in words (for the refusal); None when it does not
    exist or holds nothing but ``own`` (names this same command wrote: Hydra's record)."""
    if not output.is_dir():
        return None
    entries = sorted(path for path in output.iterdir() if path.name not in own)
    if not entries:
        return None
    names = [path.name + "/" if path.is_dir() else path.name for path in entries]
    if any(path.name in RESULTS for path in entries):
        masks = len(list((output / "masks").glob("frame_*.png")))
        names = [f"{masks} masks in masks/" if name == "masks/" else name for name in names]
        kind = "a" if (output / "predictions.json").is_file() else "an unfinished"
        return f"{kind} prediction ({earlier_input(output)}; {listing(names)})"
    if set(names) <= {".hydra/", "predict.log"}:
        return f"the record of an earlier predict that wrote no results ({listing(names)})"
    return f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'} ({listing(names)})"


def earlier_input(output: Path) -> str:
    """``of VIDEO``, the input an earlier prediction in ``output`` names, for the refusal."""
    try:
        return f"of {json.loads((output / 'predictions.json').read_text())['input']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "of an unknown video"


def listing(names: list[str]) -> str:
    """The first names, then how many more there are."""
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def check_output(output: Path, own: Collection[str] = ()) -> None:
    """Refuse an ``output`` that is a file or a directory holding anything but ``own``.

    Raises:
        OutputInUseError: naming the directory, what it holds and the way on.
    """
    if output.exists() and not output.is_dir():
        raise OutputInUseError(
            f"output={output} is a file, not a directory. Pass a new or empty directory as "
            "output= (it is created)."
        )
    holds = output_contents(output, own)
    if holds is not None:
        raise OutputInUseError(
            f"output={output} already holds {holds}. predict writes only into a new or empty "
            "directory, so that it never writes over an earlier run nor mixes two videos' "
            f"results. Pass another output= (a new or empty directory), or delete {output} "
            "yourself if you no longer need what it holds."
        )


def read_logits(logits: torch.Tensor, model: TrainedModel, threshold: float):
    """One frame's logits [K, H, W] -> (mask [H, W] uint8 class ids, record)."""
    classes = predicted_masks(logits, threshold)  # [H, W]
    mask = classes.numpy().astype(np.uint8)
    if logits.shape[0] == 1:
        probability = logits[0].sigmoid()
        sounding = classes.bool()
        return mask, {
            "area": round(sounding.float().mean().item(), 6),
            "score": round(probability[sounding].mean().item(), 6) if sounding.any() else 0.0,
            "max_score": round(probability.max().item(), 6),
        }
    probabilities = logits.softmax(dim=0)
    names = model.class_names or [str(c) for c in range(logits.shape[0])]
    found = []
    for c in torch.unique(classes).tolist():
        if c == 0:
            continue
        where = classes == c
        found.append({
            "class": names[c] if c < len(names) else str(c),
            "class_id": c,
            "area": round(where.float().mean().item(), 6),
            "score": round(probabilities[c][where].mean().item(), 6),
        })  # fmt: skip
    record = {
        "area": round((classes > 0).float().mean().item(), 6),
        "classes": sorted(found, key=lambda item: -item["area"]),
    }
    return mask, record


class OverlayVideo:
    """``overlay.mp4``: H.264 at one frame per second (each sampled frame shown during its
    second), then the audio as AAC. Odd frame sizes lose their last row or column (H.264 needs
    even sizes)."""

    def __init__(self, path: Path, height: int, width: int) -> None:
        import av

        # Written as overlay.mp4.partial, renamed when closed; the format cannot come from that
        # name.
        self.path, self.partial = path, path.with_name(path.name + PARTIAL_SUFFIX)
        self.container = av.open(str(self.partial), mode="w", format="mp4")
        self.height, self.width = (height // 2) * 2, (width // 2) * 2
        self.video = self.container.add_stream("libx264", rate=1)
        self.video.width, self.video.height, self.video.pix_fmt = self.width, self.height, "yuv420p"
        # Every stream is added before the first packet is written.
        self.audio = self.container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")

    def add(self, image: np.ndarray) -> None:
        import av

        pixels = np.ascontiguousarray(image[: self.height, : self.width])
        self.container.mux(self.video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))

    def close(self, audio: np.ndarray) -> None:
        import av

        self.container.mux(self.video.encode())
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        self.container.mux(self.audio.encode(frame))
        self.container.mux(self.audio.encode())
        self.container.close()
        self.partial.replace(self.path)

    def discard(self) -> None:
        """Remove the video, written or not: a prediction that failed keeps none of its files."""
        import av

        # Closing writes the trailer, which an unfinished stream may refuse; the file goes anyway.
        with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
            self.container.close()
        for path in (self.partial, self.path):
            with contextlib.suppress(OSError):  # gone, or on a read-only disk
                path.unlink(missing_ok=True)


def check_finite(
    logits: torch.Tensor,
    window: list[Sample],
    reader: VideoReader,
    model: TrainedModel,
    output: Path,
) -> None:
    """Stop at the first frame of ``window`` whose logits [T, K, S, S] hold a NaN or an
    infinity: its mask would be empty (NaN) or full (+inf) and its scores NaN, written as if
    valid.

    Raises:
        NonFiniteError: naming the video, the frame and its time, what was not finite and the
            checkpoint to check.
    """
    finite = torch.isfinite(logits).flatten(1).all(dim=1)
    if bool(finite.all()):
        return
    t = int((~finite).nonzero()[0])
    sample = window[t]
    values = logits[t]
    counts = {
        "NaN": int(values.isnan().sum()),
        "+inf": int(values.isposinf().sum()),
        "-inf": int(values.isneginf().sum()),
    }
    what = ", ".join(f"{n} of {values.numel()} values {'is' if n == 1 else 'are'} {kind}"
                     for kind, n in counts.items() if n)  # fmt: skip
    raise NonFiniteError(
        f"{reader.path}: the model's logits for frame {sample.second + 1} (at "
        f"{round(float(sample.time), 3):g} s) are not finite: {what}. Masks and scores computed "
        "from them would be meaningless, so predict stopped: no predictions.json was written and "
        f"the masks and video written so far were removed from {output}. A model gives NaN or "
        "inf when its weights are broken: check the checkpoint with `python -m avsac_lit.eval "
        f"ckpt_path={model.checkpoint}` (NaN or zero scores there confirm it). A damaged "
        "checkpoint file or a run that diverged needs another checkpoint (the run's "
        "checkpoints/ holds the best and the last one)."
    )


def non_numbers(tree: object) -> Iterator[tuple[str, object]]:
    """(place, value) of every NaN, infinity or None in nested dicts and lists."""
    for where, value in leaves(tree):
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            yield where, value


def write_predictions(path: Path, summary: dict) -> None:
    """Write ``summary`` as JSON, whole or not at all. Python's json writes a NaN or an infinity
    as ``NaN``/``Infinity`` (not JSON: strict readers fail on them) and None as ``null`` (read as
    a missing value), so neither is ever written where a number belongs.

    Raises:
        NonFiniteError: naming the file and the first such value's place.
    """
    found = next(non_numbers(summary), None)
    if found is not None:
        where, value = found
        raise NonFiniteError(
            f"Not writing {path}: its {where} is {value!r}, not a number. The model's logits "
            "were checked finite, so this is a fault of avsac_lit.predict: please report it "
            "with the command and its predict.log."
        )
    text = json.dumps(summary, indent=2, allow_nan=False)
    with atomic_path(path) as partial:
        partial.write_text(text + "\n")


def save_mask(path: Path, mask: np.ndarray, palette: np.ndarray, num_classes: int) -> None:
    """Write one frame's ``mask`` (class ids [H, W]) as a PNG, whole or not at all: 0/255 for a
    binary model, else the class ids with the colour ``palette``."""
    if num_classes == 1:
        image = Image.fromarray(mask * 255)
    else:
        image = Image.fromarray(mask, mode="P")
        image.putpalette(palette.flatten().tolist())
    with atomic_path(path) as partial:
        image.save(partial, format="PNG")
