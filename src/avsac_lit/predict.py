"""Segment the sounding objects of any video file:
``python -m avsac_lit.predict ckpt_path=PATH input=VIDEO output=DIR``.

The command ties the inference layer together: the checkpoint's model
(:func:`~avsac_lit.inference.trained.load_trained`), the video read as AVSBench prepared its clips
(:mod:`avsac_lit.inference.video`: one upright frame a second, the one on screen at ``l + 15/16``
s, and the audio through our VGGish front end, in consecutive windows of the training clip
length, so any length works) and what is written (:mod:`avsac_lit.inference.outputs`).

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
import logging
import os
import sys
from collections.abc import Collection
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from avsac_lit.data.audio import SAMPLE_RATE
from avsac_lit.inference.outputs import (
    OutputInUseError,
    OverlayVideo,
    check_finite,
    check_output,
    read_logits,
    save_mask,
    write_predictions,
)
from avsac_lit.inference.trained import TrainedModel, load_trained
from avsac_lit.inference.video import VideoReader, window_examples, windows
from avsac_lit.run.assemble import CONFIG_PATH, refuse_overrides
from avsac_lit.run.wrapper import refusals_in_one_line
from avsac_lit.storage.atomic import disk_write_error
from avsac_lit.viz.draw import mask_palette, overlay

log = logging.getLogger(__name__)


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
