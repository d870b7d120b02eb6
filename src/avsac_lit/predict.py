"""Segment the sounding objects of any video file:
``python -m avsac_lit.predict ckpt_path=PATH input=VIDEO output=DIR``.

The video is read with PyAV (anything FFmpeg reads: mp4, mkv, webm, avi, mov...) and prepared as
AVSBench prepared its clips:

* one frame per second, the one AVSBench's preprocessing keeps: for second l, the frame on screen
  at ``l + 15/16`` s, near the end of the second, found by the frames' presentation timestamps
  (measured from the first frame's). At a constant frame rate that is AVSBench's frame index
  ``int(l * fps + 15 / 16 * fps)``; at a variable one it is the frame shown at that moment. A
  second counts when a frame is on screen at its ``l + 15/16`` s (the video has not ended by then)
  and the audio covers the whole second;
* each frame turned upright as players show it: the video track's display matrix (a phone's
  portrait video is stored sideways with a rotation of -90 degrees) is applied to every frame;
* the audio track, mixed to mono and resampled to 16 kHz, through our VGGish front end, one
  log-mel example per second;
* consecutive windows of the training clip length (5 s for S4/MS3, 10 s for AVSS), each prepared
  as a clip of its own: example k of a window covers the window's [0.96 k, 0.96 k + 0.975] s and
  is paired with its frame k, as in training. The last window holds the seconds left (the models
  treat frames independently, so a shorter clip is a valid input), so any length works.

Frames are decoded and written window by window, so memory holds one window of frames (and the
audio track, 128 kB per second) whatever the video's length. Written to
``output``: ``overlay.mp4`` (the sampled frames with their masks, one per second, with the audio),
``masks/frame_NNNN.png`` (at the video's displayed resolution: 0/255 for S4/MS3, AVSS class ids
with their colour palette), and ``predictions.json`` (the rotation applied; per frame: its
timestamp, sounding-object area and scores; AVSS per class), all upright. ``task=s4|ms3|avss``
refuses a checkpoint trained for another task. docs/predict.md has the details.

``output`` must be a new or empty directory: one that already holds files (an earlier prediction,
anything) is refused before anything is read, so a prediction never writes over an earlier run nor
mixes two videos' masks. A NaN or an infinity in the model's logits (a damaged or diverged
checkpoint) stops the prediction at that frame and removes what it wrote: no masks computed from
them, and ``predictions.json`` never holds a NaN, an infinity or a null where a number belongs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Collection, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from avsac_lit.data.audio import SAMPLE_RATE, waveform_to_examples
from avsac_lit.inference.trained import TrainedModel, load_trained
from avsac_lit.run.assemble import CONFIG_PATH, refuse_overrides
from avsac_lit.run.wrapper import refusals_in_one_line
from avsac_lit.storage.atomic import PARTIAL_SUFFIX, atomic_path, disk_write_error
from avsac_lit.storage.checksums import leaves
from avsac_lit.viz.draw import mask_palette, overlay, predicted_masks

log = logging.getLogger(__name__)

FRAME_POSITION = Fraction(15, 16)  # AVSBench keeps sub-sample 15 of 16 in each second
READABLE = "Expected a video file with a video and an audio track that FFmpeg can read"


class VideoError(ValueError):
    """A video that cannot be segmented; the message names the file and what to do."""


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
    try:
        return f"of {json.loads((output / 'predictions.json').read_text())['input']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "of an unknown video"


def listing(names: list[str]) -> str:
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


class Sample(NamedTuple):
    """The frame sampled for one second of the video."""

    second: int
    index: int  # of the frame among the decoded frames
    time: Fraction  # its presentation time, in seconds from the first frame's
    image: np.ndarray  # RGB uint8 [H, W, 3], upright


class Shown(NamedTuple):
    """A decoded frame and when it is on screen, in seconds from the first frame's time."""

    index: int
    time: Fraction
    end: Fraction  # its time plus its duration: when the next frame replaces it at the latest
    frame: object  # av.VideoFrame


class VideoReader:
    """A video file checked and opened for sampling: its audio decoded (mono 16 kHz, as float
    int16 / 32768 like the reference reads wavs), the display matrix of its video track read, its
    frames sampled on demand by :meth:`seconds`.

    Raises:
        FileNotFoundError: no such file.
        VideoError: unreadable, no video or no audio track, less than a second of audio, a
            display matrix that is not a quarter turn.
    """

    def __init__(self, path: str | Path) -> None:

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"input={self.path} does not exist. {READABLE}.")
        with self.opened() as container:
            if not container.streams.video:
                raise VideoError(
                    f"{self.path} has no video track. AVS segments frames: pass a video file."
                )
            if not container.streams.audio:
                raise VideoError(
                    f"{self.path} has no audio track; the model needs the sound to know what "
                    "to segment. Add one, e.g. ffmpeg -i VIDEO -i AUDIO.wav -map 0:v -map 1:a "
                    "-c:v copy OUT.mp4."
                )
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise VideoError(f"{self.path}: the video track has no frame rate. {READABLE}.")
            self.rate = Fraction(rate)
            self.fps = float(self.rate)
            self.audio = decode_audio(container)
        if len(self.audio) < SAMPLE_RATE:
            raise self.too_short()
        # FFmpeg attaches the track's display matrix to every decoded frame; the first tells it.
        with self.opened() as container:
            first = next(container.decode(video=0), None)
        self.turn = display_turn(self.path, first)
        self.rotation = first.rotation if first is not None else 0
        a, b, c, d = self.turn
        self.mirrored = a * d - b * c < 0

    def opened(self):
        import av

        try:
            return av.open(str(self.path))
        except av.error.FFmpegError as error:
            raise VideoError(f"Cannot read {self.path}: {error}. {READABLE}.") from error

    def too_short(self) -> VideoError:
        return VideoError(
            f"{self.path} is shorter than one second ({len(self.audio) / SAMPLE_RATE:.2f} s of "
            "audio, or no frame at 15/16 s); the model takes one frame and one second of audio "
            "per second of video."
        )

    def seconds(self) -> Iterator[Sample]:
        """The frame of every whole second, in order (see :func:`on_screen`), upright."""
        with self.opened() as container:
            frames = timeline(container.decode(video=0), self.rate, self.path)
            for second, shown in on_screen(frames, len(self.audio) // SAMPLE_RATE):
                image = upright(shown.frame.to_ndarray(format="rgb24"), self.turn)
                yield Sample(second, shown.index, shown.time, image)


def timeline(frames: Iterable, rate: Fraction, path: Path) -> Iterator[Shown]:
    """The decoded ``frames`` (av.VideoFrame, in presentation order) with their times, in seconds
    from the first frame's timestamp. That is the stream's start but for AVI with B-frames, whose
    stream starts at the first decoding time, a frame earlier. A frame without a duration is
    taken to last 1 / ``rate``.

    A timestamp is rounded (or truncated) to a tick of its time base (Matroska and WebM count in
    milliseconds), so a time less than a tick from a frame time of the constant ``rate`` is taken
    as that frame time: a constant-rate video's frames are then exactly on AVSBench's grid.

    Raises:
        VideoError: a frame without a timestamp, naming the file and how to give it one.
    """
    start = None
    for index, frame in enumerate(frames):
        if frame.pts is None:
            raise VideoError(
                f"{path}: video frame {index} has no timestamp, so when it is shown is unknown. "
                f"Re-encode the video, which gives every frame one: ffmpeg -i {path} OUT.mp4."
            )
        time_base = Fraction(frame.time_base)
        start = frame.pts if start is None else start
        time = (frame.pts - start) * time_base
        duration = frame.duration * time_base if frame.duration else 1 / rate
        yield Shown(index, on_grid(time, time_base, rate),
                    on_grid(time + duration, time_base, rate), frame)  # fmt: skip


def on_grid(time: Fraction, time_base: Fraction, rate: Fraction) -> Fraction:
    """``time``, or the nearest multiple of 1 / ``rate`` when it is less than a tick of
    ``time_base`` away (as far as writing it in that time base can have moved it)."""
    grid = round(time * rate) / rate
    return grid if abs(grid - time) < time_base else time


def on_screen(frames: Iterable[Shown], seconds: int) -> Iterator[tuple[int, Shown]]:
    """(l, the frame on screen at ``l + 15/16`` s) for each second l < ``seconds`` in turn: the
    last of ``frames`` (in presentation order) whose time is at or before it. A frame shown
    through several such times is the frame of each of them. A second counts while the video
    has not ended: the last frame is on screen until its end."""
    second, shown = 0, None
    for frame in frames:
        while shown is not None and second < seconds and frame.time > second + FRAME_POSITION:
            yield second, shown
            second += 1
        if second >= seconds:
            return
        shown = frame
    while shown is not None and second < seconds and second + FRAME_POSITION < shown.end:
        yield second, shown
        second += 1


def display_turn(path: Path, frame) -> tuple[int, int, int, int]:
    """The quarter turn (and mirroring) of the display matrix on ``frame`` (an av.VideoFrame, or
    None), as the signs (a, b, c, d) of its linear part: the pixel at (x, y) is displayed at
    (a x + c y, b x + d y). (1, 0, 0, 1) without a matrix.

    Raises:
        VideoError: a matrix that turns the picture by anything but quarter turns.
    """
    matrix = None if frame is None else frame.side_data.get("DISPLAYMATRIX")
    if matrix is None:
        return 1, 0, 0, 1
    a, b, _, c, d = (int(value) for value in np.frombuffer(bytes(matrix)[:20], dtype=np.int32))
    if not (a and d and not b and not c) and not (b and c and not a and not d):
        raise VideoError(
            f"{path}: its display matrix turns the picture by {frame.rotation} degrees, not a "
            "multiple of 90; predict turns frames upright by quarter turns only. Re-encode it "
            f"upright (ffmpeg applies the rotation): ffmpeg -i {path} OUT.mp4."
        )
    return tuple(int(np.sign(value)) for value in (a, b, c, d))


def upright(image: np.ndarray, turn: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` [H, W, 3] as displayed under the quarter turn ``turn`` of :func:`display_turn`."""
    a, b, c, d = turn
    if a == 0:  # displayed rows run along stored columns: x' = c y, y' = b x
        image, a, d = image.transpose(1, 0, 2), c, b
    return np.ascontiguousarray(image[::d, ::a])


def decode_audio(container) -> np.ndarray:
    """The first audio track, mono 16 kHz, as float int16 / 32768 [n]."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks = []
    for frame in container.decode(audio=0):
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return samples.astype(np.float64) / 32768.0


def windows(items: Iterable, length: int) -> Iterator[list]:
    """Consecutive lists of ``length`` items, the last one shorter if need be."""
    iterator = iter(items)
    while window := list(itertools.islice(iterator, length)):
        yield window


def window_examples(audio: np.ndarray, begin: int, end: int) -> torch.Tensor:
    """Log-mel examples [end - begin, 1, 96, 64] of seconds [begin, end) as one clip."""
    samples = audio[begin * SAMPLE_RATE : end * SAMPLE_RATE]
    # n >= 1 whole seconds give (100 n - 2) // 96 >= n examples: never too few.
    return waveform_to_examples(samples, SAMPLE_RATE)[: end - begin]


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
    if num_classes == 1:
        image = Image.fromarray(mask * 255)
    else:
        image = Image.fromarray(mask, mode="P")
        image.putpalette(palette.flatten().tolist())
    with atomic_path(path) as partial:
        image.save(partial, format="PNG")


def predict(
    ckpt_path: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    config: str | Path | None = None,
    task: str | None = None,
    threshold: float = 0.5,
    device: str = "cpu",
    own: Collection[str] = (),
) -> dict[str, Path]:
    """Segment the sounding objects of the video ``input`` with the checkpoint ``ckpt_path`` and
    write the results into ``output`` (see the module docstring); returns the files by kind.
    Everything is checked before anything is written, ``output`` (new or empty, but for the
    names in ``own``: the command's own record, already there) before anything is read; a
    prediction that fails midway removes the files it wrote.

    Raises:
        OutputInUseError: ``output`` already holds files.
        NonFiniteError: the model's logits for a frame hold a NaN or an infinity.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold}: expected a probability strictly between 0 and 1.")
    output = Path(output)
    check_output(output, own)
    model = load_trained(ckpt_path, config=config, task=task, device=device)
    reader = VideoReader(input)
    seconds = reader.seconds()
    first = next(seconds, None)
    if first is None:
        raise reader.too_short()
    made = [folder for folder in (output / "masks", output) if not folder.exists()]
    (output / "masks").mkdir(parents=True, exist_ok=True)
    height, width = first.image.shape[:2]
    palette = mask_palette(model.num_classes)
    records: list[dict] = []
    written: list[Path] = []
    video = None
    try:
        video = OverlayVideo(output / "overlay.mp4", height, width)
        for window in windows(itertools.chain([first], seconds), model.clip_frames):
            begin, end = window[0].second, window[-1].second + 1
            frames = torch.stack([model.frame_tensor(Image.fromarray(sample.image))
                                  for sample in window])  # fmt: skip
            audio = window_examples(reader.audio, begin, end)
            logits = model(frames, audio)["logits"].float()  # [T, K, S, S]
            check_finite(logits, window, reader, model, output)
            logits = F.interpolate(logits, size=(height, width), mode="bilinear",
                                   align_corners=False)  # fmt: skip
            for sample, frame_logits in zip(window, logits.cpu(), strict=True):
                mask, record = read_logits(frame_logits, model, threshold)
                written.append(output / "masks" / f"frame_{sample.second + 1:04d}.png")
                save_mask(written[-1], mask, palette, model.num_classes)
                video.add(overlay(sample.image, mask, palette))
                frame = {"frame": sample.second + 1, "time_s": round(float(sample.time), 4)}
                records.append(frame | {"source_frame_index": sample.index} | record)
            log.info("Seconds %d-%d done", begin + 1, end)
        video.close(reader.audio[: len(records) * SAMPLE_RATE])
        write_predictions(output / "predictions.json", summary(reader, model, records, threshold))
    except BaseException as error:
        # Half a prediction beside nothing to say so is worse than none; output was empty.
        if video is not None:
            video.discard()
        for path in written:
            with contextlib.suppress(OSError):  # gone, or on a read-only disk
                path.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: something else wrote into it
                folder.rmdir()
        named = disk_write_error(error, advice=OUTPUT_ADVICE)
        if named is None or named is error:
            raise
        raise named from error
    return {
        "video": output / "overlay.mp4",
        "masks": output / "masks",
        "json": output / "predictions.json",
    }


def summary(
    reader: VideoReader, model: TrainedModel, records: list[dict], threshold: float
) -> dict:
    """``predictions.json``'s content."""
    return {
        "input": str(reader.path.resolve()),
        "checkpoint": str(model.checkpoint.resolve()),
        "task": model.task,
        "model": str(model.config.model.name),
        "fps": reader.fps,
        "rotation": reader.rotation,
        "mirrored": reader.mirrored,
        "seconds": len(records),
        "window_seconds": model.clip_frames,
        "threshold": threshold,
        "frames": records,
    }


OUTPUT_ADVICE = "Free space there, or pass another output= (a new or empty directory)."

# What the command line may set; the model comes from the checkpoint.
SETTINGS = ("ckpt_path", "input", "output", "config", "task", "threshold", "device", "hydra")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@refusals_in_one_line("avsac_lit.predict")
def run(cfg: DictConfig) -> None:
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    files = predict(
        cfg.ckpt_path, cfg.input, cfg.output, config=cfg.get("config"), task=cfg.get("task"),
        threshold=cfg.threshold, device=device, own=hydra_record(Path(cfg.output)),
    )  # fmt: skip
    for kind, path in files.items():
        log.info("%s: %s", kind, path)


def hydra_record(output: Path) -> tuple[str, ...]:
    """The names Hydra wrote into ``output`` for this command (``.hydra/``, ``predict.log``) when
    ``output`` is its run directory (the default: ``hydra.run.dir=${output}``), else none. They
    are this run's own: :func:`check_output_argument` found the directory empty before Hydra
    started."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ()
    hydra_cfg = HydraConfig.get()
    if Path(hydra_cfg.runtime.output_dir).resolve() != output.resolve():
        return ()
    log_file = OmegaConf.select(hydra_cfg, "job_logging.handlers.file.filename")
    names = (hydra_cfg.output_subdir, Path(log_file).name if log_file else None)
    return tuple(name for name in names if name)


def check_output_argument(arguments: list[str]) -> None:
    """Check ``output`` before Hydra starts: Hydra logs into it first, so one that cannot be a
    directory would fail there with "Unable to configure handler 'file'" and no path, and one
    already used would get this run's log appended to the earlier run's before predict could
    refuse it."""
    for argument in arguments:
        if argument.lstrip("+").startswith("output="):
            output = Path(argument.split("=", 1)[1]).expanduser()
            existing = next(path for path in (output, *output.parents) if path.exists())
            if not existing.is_dir() or not os.access(existing, os.W_OK):
                raise SystemExit(
                    f"avsac_lit.predict: output={output} cannot be written: {existing} is not a "
                    "writable directory. Pass a directory you can write to (it is created)."
                )
            try:
                check_output(output)
            except OutputInUseError as error:
                raise SystemExit(f"avsac_lit.predict: {error}") from None


def main() -> None:
    refuse_overrides("avsac_lit.predict", sys.argv[1:], SETTINGS)
    check_output_argument(sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
