"""Segment the sounding objects of any video file:
``python -m avsac_lit.predict ckpt_path=PATH input=VIDEO output=DIR``.

The video is read with PyAV (anything FFmpeg reads: mp4, mkv, webm, avi, mov...) and prepared as
AVSBench prepared its clips:

* one frame per second, the one AVSBench's preprocessing keeps: for second l, frame index
  ``int(l * fps + 15 / 16 * fps)``, near the end of the second;
* the audio track, mixed to mono and resampled to 16 kHz, through our VGGish front end, one
  log-mel example per second;
* windows of the training clip length (5 s for S4/MS3, 10 s for AVSS), each with its own audio
  as a clip of that length: example k of a window covers its seconds [0.96 k, 0.96 k + 0.975],
  paired with the window's frame k as in training. A video of any length is covered by
  consecutive windows; the last one ends at the video's last whole second (it overlaps the one
  before it when the length is not a multiple), and a video shorter than one window is one
  shorter window.

Written to ``output``: ``overlay.mp4`` (the sampled frames with their masks, one per second, with
the audio), ``masks/frame_NNNN.png`` (at the video's resolution: 0/255 for S4/MS3, AVSS class ids
with their colour palette), and ``predictions.json`` (per frame: time, sounding-object area and
scores; AVSS per class). ``task=s4|ms3|avss`` refuses a checkpoint trained for another task.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image

from avsac_lit.data.audio import SAMPLE_RATE, waveform_to_examples
from avsac_lit.inference import TrainedModel, load_trained
from avsac_lit.viz import mask_palette, overlay

log = logging.getLogger(__name__)

FRAME_POSITION = 15 / 16  # AVSBench keeps sub-sample 15 of 16 in each second
READABLE = "Expected a video file with a video and an audio track that FFmpeg can read"


@dataclass
class Video:
    """What predict reads from a file: one RGB frame per whole second, and the audio."""

    path: Path
    frames: list[np.ndarray]  # uint8 [H, W, 3], frame l sampled in second l
    frame_indices: list[int]
    fps: float
    audio: np.ndarray  # float mono samples at 16 kHz, int16 / 32768 as the reference reads
    seconds: int


class VideoError(ValueError):
    """A video that cannot be segmented; the message names the file and what to do."""


def read_video(path: str | Path) -> Video:
    """Sample ``path`` as AVSBench did (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        VideoError: unreadable, no video or audio track, or shorter than one second.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input={path} does not exist. {READABLE}.")
    try:
        with av.open(str(path)) as container:
            video_streams, audio_streams = container.streams.video, container.streams.audio
            if not video_streams:
                raise VideoError(
                    f"{path} has no video track. AVS segments frames: pass a video file."
                )
            if not audio_streams:
                raise VideoError(
                    f"{path} has no audio track; the model needs the sound to know what to "
                    "segment. Add one, e.g. ffmpeg -i VIDEO -i AUDIO.wav -map 0:v -map 1:a "
                    "-c:v copy OUT.mp4."
                )
            rate = video_streams[0].average_rate or video_streams[0].guessed_rate
            if not rate:
                raise VideoError(f"{path}: the video track has no frame rate. {READABLE}.")
            fps = float(Fraction(rate))
            frames, indices, total = sample_frames(container.decode(video=0), fps)
        with av.open(str(path)) as container:
            audio = decode_audio(container)
    except av.error.FFmpegError as error:
        raise VideoError(f"Cannot read {path}: {error}. {READABLE}.") from error
    seconds = min(math.floor(total / fps), len(audio) // SAMPLE_RATE)
    if seconds < 1:
        raise VideoError(
            f"{path} is shorter than one second ({total} frames at {fps:g} fps, "
            f"{len(audio) / SAMPLE_RATE:.2f} s of audio); the model takes one frame and one "
            "second of audio per second of video."
        )
    return Video(path, frames[:seconds], indices[:seconds], fps, audio, seconds)


def sample_frames(decoded, fps: float) -> tuple[list[np.ndarray], list[int], int]:
    """Keep frame ``int(l * fps + 15/16 * fps)`` of each second l; also count all frames."""
    frames, indices, total = [], [], 0
    wanted = int(FRAME_POSITION * fps)
    for index, frame in enumerate(decoded):
        total = index + 1
        if index == wanted:
            frames.append(frame.to_ndarray(format="rgb24"))
            indices.append(index)
            wanted = int(len(frames) * fps + FRAME_POSITION * fps)
    return frames, indices, total


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


def windows(seconds: int, length: int) -> list[tuple[int, int, int]]:
    """(start, end, first new second) of each window of ``length`` seconds covering
    ``seconds``: consecutive, the last one moved back to end at the last second."""
    spans, start = [], 0
    while start < seconds:
        begin = max(0, min(start, seconds - length))
        end = min(begin + length, seconds)
        spans.append((begin, end, start))
        start = end
    return spans


def window_examples(audio: np.ndarray, begin: int, end: int) -> torch.Tensor:
    """Log-mel examples [end - begin, 1, 96, 64] of seconds [begin, end) as one clip."""
    samples = audio[begin * SAMPLE_RATE : end * SAMPLE_RATE]
    examples = waveform_to_examples(samples, SAMPLE_RATE)[: end - begin]
    # A second's worth of audio always gives at least one example per second; keep it safe.
    missing = (end - begin) - len(examples)
    return torch.cat([examples, examples[-1:].expand(missing, -1, -1, -1)]) if missing else examples


def predict_video(
    model: TrainedModel, video: Video, threshold: float = 0.5
) -> tuple[list[np.ndarray], list[dict]]:
    """Masks at the video's resolution ([H, W] class ids) and per-frame records."""
    height, width = video.frames[0].shape[:2]
    masks, records = [], []
    for begin, end, first_new in windows(video.seconds, model.clip_frames):
        images = video.frames[begin:end]
        frames = torch.stack([model.frame_tensor(Image.fromarray(image)) for image in images])
        logits = model(frames, window_examples(video.audio, begin, end))["logits"]  # [T, K, S, S]
        logits = F.interpolate(
            logits[first_new - begin :].float(), size=(height, width), mode="bilinear",
            align_corners=False,
        )  # fmt: skip
        for offset, frame_logits in enumerate(logits.cpu()):
            second = first_new + offset
            mask, record = read_logits(frame_logits, model, threshold)
            record |= {
                "frame": second + 1,
                "time_s": round(video.frame_indices[second] / video.fps, 4),
                "source_frame_index": video.frame_indices[second],
            }
            masks.append(mask)
            records.append(record)
    return masks, records


def read_logits(logits: torch.Tensor, model: TrainedModel, threshold: float):
    """One frame's logits [K, H, W] -> (mask [H, W] uint8 class ids, record)."""
    if logits.shape[0] == 1:
        probability = logits[0].sigmoid()
        sounding = probability > threshold
        return sounding.numpy().astype(np.uint8), {
            "area": round(sounding.float().mean().item(), 6),
            "score": round(probability[sounding].mean().item(), 6) if sounding.any() else 0.0,
            "max_score": round(probability.max().item(), 6),
        }
    probabilities = logits.softmax(dim=0)
    classes = probabilities.argmax(dim=0)
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
    return classes.numpy().astype(np.uint8), record


def write_outputs(
    output: Path, model: TrainedModel, video: Video, masks: list[np.ndarray], records: list[dict]
) -> dict[str, Path]:
    output.mkdir(parents=True, exist_ok=True)
    (output / "masks").mkdir(exist_ok=True)
    palette = mask_palette(model.num_classes)
    for second, mask in enumerate(masks):
        path = output / "masks" / f"frame_{second + 1:04d}.png"
        if model.num_classes == 1:
            Image.fromarray(mask * 255).save(path)
        else:
            image = Image.fromarray(mask, mode="P")
            image.putpalette(palette.flatten().tolist())
            image.save(path)
    drawn = [overlay(frame, mask, palette) for frame, mask in zip(video.frames, masks, strict=True)]
    write_overlay_video(output / "overlay.mp4", drawn, video.audio[: video.seconds * SAMPLE_RATE])
    summary = {
        "input": str(video.path.resolve()),
        "checkpoint": str(model.checkpoint.resolve()),
        "task": model.task,
        "model": str(model.config.model.name),
        "fps": video.fps,
        "seconds": video.seconds,
        "window_seconds": model.clip_frames,
        "frames": records,
    }
    (output / "predictions.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {
        "video": output / "overlay.mp4",
        "masks": output / "masks",
        "json": output / "predictions.json",
    }


def write_overlay_video(path: Path, frames: list[np.ndarray], audio: np.ndarray) -> None:
    """H.264 at one frame per second (each sampled frame shown during its second), with the
    audio as AAC. Odd frame sizes lose their last row or column (H.264 needs even sizes)."""
    import av

    height, width = (frames[0].shape[0] // 2) * 2, (frames[0].shape[1] // 2) * 2
    with av.open(str(path), mode="w") as container:
        video_stream = container.add_stream("libx264", rate=1)
        video_stream.width, video_stream.height, video_stream.pix_fmt = width, height, "yuv420p"
        audio_stream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")  # before muxing
        for image in frames:
            pixels = np.ascontiguousarray(image[:height, :width])
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(video_stream.encode(frame))
        container.mux(video_stream.encode())
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)[None]
        audio_frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        audio_frame.sample_rate, audio_frame.pts = SAMPLE_RATE, 0
        audio_frame.time_base = Fraction(1, SAMPLE_RATE)
        container.mux(audio_stream.encode(audio_frame))
        container.mux(audio_stream.encode())


def predict(
    ckpt_path: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    config: str | Path | None = None,
    task: str | None = None,
    threshold: float = 0.5,
    device: str = "cpu",
) -> dict[str, Path]:
    """Segment the sounding objects of the video ``input`` with the checkpoint ``ckpt_path`` and
    write the results into ``output`` (see the module docstring); returns the files by kind."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold}: expected a probability strictly between 0 and 1.")
    model = load_trained(ckpt_path, config=config, task=task, device=device)
    video = read_video(input)
    log.info(
        "%s: %d s at %.3g fps, %d windows of %d s", video.path, video.seconds, video.fps,
        len(windows(video.seconds, model.clip_frames)), model.clip_frames,
    )  # fmt: skip
    masks, records = predict_video(model, video, threshold)
    return write_outputs(Path(output), model, video, masks, records)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    files = predict(
        cfg.ckpt_path, cfg.input, cfg.output, config=cfg.get("config"), task=cfg.get("task"),
        threshold=cfg.threshold, device=device,
    )  # fmt: skip
    for kind, path in files.items():
        log.info("%s: %s", kind, path)


if __name__ == "__main__":
    main()
