"""A video file read as the models' input, the way AVSBench prepared its clips: one upright frame
and one log-mel example a second, in windows of the training clip length. Used by
``avsac_lit.predict`` (:class:`VideoReader`, :func:`windows`, :func:`window_examples`).

The video is read with PyAV (anything FFmpeg reads: mp4, mkv, webm, avi, mov...):

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

Frames are decoded on demand, window by window, so memory holds one window of frames (and the
audio track, 128 kB per second) whatever the video's length.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from avsac_lit.data.audio import SAMPLE_RATE, waveform_to_examples

FRAME_POSITION = Fraction(15, 16)  # AVSBench keeps sub-sample 15 of 16 in each second
READABLE = "Expected a video file with a video and an audio track that FFmpeg can read"


class VideoError(ValueError):
    """A video that cannot be segmented; the message names the file and what to do."""


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
