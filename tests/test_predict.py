"""``avsac_lit.predict`` on video files that the tests encode from synthetic frames and tones."""

from __future__ import annotations

import json
import math
import re
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image

from avsac_lit.data.audio import read_wav
from avsac_lit.export import export
from avsac_lit.inference.outputs import NonFiniteError, OutputInUseError, write_predictions
from avsac_lit.inference.trained import TrainedModel, load_trained
from avsac_lit.inference.video import (
    VideoError,
    VideoReader,
    on_screen,
    timeline,
    window_examples,
    windows,
)
from avsac_lit.predict import predict
from avsac_lit.viz.draw import mask_palette, overlay
from tests import commands

FPS = 8
RATE = 22050  # not 16 kHz, so predict has to resample


def encode(
    path: Path,
    frames: list[np.ndarray] | None,
    audio: np.ndarray | None,
    *,
    fps: float | Fraction = FPS,
    times_ms: list[int] | None = None,
    rotation: int = 0,
    hflip: bool = False,
) -> Path:
    """A video (mp4, or the container ``path``'s suffix names) of ``frames`` (uint8 [H, W, 3]) at
    ``fps``, or shown at ``times_ms`` (a variable frame rate: ``fps`` is then only the nominal
    rate), with a display matrix that turns them ``rotation`` degrees counterclockwise and then
    mirrors them left to right if ``hflip``, and ``audio`` (mono float) at RATE."""
    with av.open(str(path), mode="w") as container:
        # Every stream is added before the first packet is written.
        if frames is not None:
            video = container.add_stream("libx264", rate=fps)
            video.height, video.width = frames[0].shape[:2]
            video.pix_fmt = "yuv420p"
            if times_ms is not None:
                video.codec_context.time_base = Fraction(1, 1000)
            if rotation or hflip:
                video.set_display_rotation(rotation, hflip=hflip)
        if audio is not None:
            sound = container.add_stream("aac", rate=RATE, layout="mono")
        if frames is not None:
            for k, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                if times_ms is not None:
                    frame.pts, frame.time_base = times_ms[k], Fraction(1, 1000)
                container.mux(video.encode(frame))
            container.mux(video.encode())
        if audio is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, 0, Fraction(1, RATE)
            container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def tone(seconds: float, hertz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.3 * np.sin(2 * np.pi * hertz * t)


def synthetic_video(data: Path, seconds: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Second l shows frame (l mod 5) of a SynthAVS-MS3 test clip on its last video frame only
    (the one AVSBench samples at 8 fps: index 8 l + 7) and grey before it; the clip's own
    sounds, looped, are the audio track (resampled to RATE)."""
    name = next((data / "ms3_data" / "audio_wav" / "test").glob("*.wav")).stem
    folder = data / "ms3_data" / "visual_frames" / name
    clip = [
        np.asarray(Image.open(folder / f"{name}.mp4_{k}.png").convert("RGB")) for k in range(1, 6)
    ]
    frames = []
    for second in range(seconds):
        grey = np.full_like(clip[0], 128)
        frames += [grey] * (FPS - 1) + [clip[second % 5]]
    samples, rate = read_wav(data / "ms3_data" / "audio_wav" / "test" / f"{name}.wav")
    looped = np.tile(samples, seconds // 5 + 1)[: seconds * rate]
    resampled = np.interp(np.arange(seconds * RATE) * rate / RATE, np.arange(len(looped)), looped)
    return frames, resampled


@pytest.fixture(scope="module")
def checkpoint(trained_runs) -> Path:
    return trained_runs / "0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def seven_seconds(trained_runs, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    frames, audio = synthetic_video(trained_runs.parent / "data", seconds=7)
    path = encode(tmp_path_factory.mktemp("video") / "clip.mp4", frames, audio)
    return path, frames


def test_windows_cover_any_length_with_clips_of_the_training_length():
    assert list(windows(range(7), 5)) == [[0, 1, 2, 3, 4], [5, 6]]
    assert list(windows(range(10), 5)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert list(windows(range(3), 10)) == [[0, 1, 2]]
    assert list(windows([], 5)) == []


def test_frames_are_sampled_at_the_avsbench_position_and_audio_resampled(seven_seconds):
    path, frames = seven_seconds
    reader = VideoReader(path)
    sampled = list(reader.seconds())
    assert reader.fps == FPS and [second for second, *_ in sampled] == list(range(7))
    assert [index for _, index, *_ in sampled] == [8 * s + 7 for s in range(7)]  # int(8 l + 7.5)
    for second, index, _, image in sampled:
        # The sampled frame is the clip's frame, not the grey around it (H.264 is lossy).
        assert np.abs(image.astype(int) - frames[index]).mean() < 8, second
    assert abs(len(reader.audio) - 7 * 16000) < 2048  # at 16 kHz, up to the AAC padding


def numbered(k: int) -> np.ndarray:
    """A 32 x 32 frame that shows ``k`` < 256 in binary, stripe b (4 pixels wide) white when bit b
    is set: a pattern H.264 keeps readable."""
    stripes = np.repeat((k >> np.arange(8)) & 1, 4) * 255
    return np.ascontiguousarray(np.broadcast_to(stripes[None, :, None], (32, 32, 3)), np.uint8)


def number_shown(image: np.ndarray) -> int:
    return sum(int(image[:, 4 * b + 1 : 4 * b + 3].mean() > 128) << b for b in range(8))


def avsbench_index(second: int, fps: float | Fraction) -> int:
    """The frame index AVSBench's preprocessing (and predict up to 0.7.1) took for ``second``."""
    return int(second * float(fps) + 15 / 16 * float(fps))


@pytest.mark.parametrize(
    ("fps", "suffix", "frames"),
    [
        (24, "mp4", 96),
        (25, "mp4", 98),  # ends at 3.92 s, before 3 + 15/16 s: 3 seconds
        (Fraction(30000, 1001), "mp4", 118),  # ends 0.23 ms before 3 + 15/16 s: 3 seconds
        (30, "mp4", 119),  # its last frame is on screen at 3 + 15/16 s: 4 seconds
        # At 48 fps l + 15/16 s is exactly the time of frame 48 l + 45, which Matroska's
        # milliseconds put half a millisecond late; 141 frames end exactly at 2 + 15/16 s.
        (48, "mkv", 141),
        (48, "mkv", 142),
    ],
)
def test_a_constant_rate_video_gives_the_frames_of_avsbench_frame_index(
    fps, suffix, frames, tmp_path
):
    """Frames chosen by their timestamps are the frames 0.7.1 (and AVSBench) chose by index."""
    path = encode(tmp_path / f"clip.{suffix}", [numbered(k) for k in range(frames)], tone(4.2),
                  fps=fps)  # fmt: skip
    reader = VideoReader(path)
    indices = [avsbench_index(second, fps) for second in range(4)]
    expected = [(second, index) for second, index in enumerate(indices) if index < frames]
    sampled = list(reader.seconds())
    # Which frame (its index and the number it shows) for which second; then its time.
    assert [(second, index) for second, index, *_ in sampled] == expected
    assert [number_shown(image) for *_, image in sampled] == [index for _, index in expected]
    assert reader.rate == fps
    assert [sample.time for sample in sampled] == [index / Fraction(fps) for _, index in expected]


def constant_rate(fps: Fraction, time_base: Fraction, frames: int) -> list[SimpleNamespace]:
    """What a decoder gives for ``frames`` frames at ``fps`` in ``time_base``: timestamps and
    durations rounded to the nearest tick, as FFmpeg's muxers write them."""
    ticks = 1 / (fps * time_base)  # a frame's length in ticks

    def nearest(value: Fraction) -> int:
        return math.floor(value + Fraction(1, 2))

    return [SimpleNamespace(pts=nearest(k * ticks), duration=nearest(ticks), time_base=time_base)
            for k in range(frames)]  # fmt: skip


@pytest.mark.parametrize(
    ("fps", "time_base", "seconds"),
    [
        # At 29.97 fps l + 15/16 s is first exactly a frame time at l = 437 (frame 13125), at 48
        # fps every second (frame 48 l + 45); milliseconds put both half a millisecond late.
        (Fraction(30000, 1001), Fraction(1, 1000), 440),
        (Fraction(48), Fraction(1, 1000), 60),
    ],
)
def test_timestamps_give_avsbench_frame_index_at_every_second_of_a_long_video(
    fps, time_base, seconds
):
    """Minutes of frames, as the decoder gives their timestamps (encoding them would take long):
    at every second the frame chosen by timestamp is AVSBench's frame index."""
    frames = constant_rate(fps, time_base, int(seconds * fps))
    chosen = [shown.index for _, shown in on_screen(timeline(frames, fps, Path("x")), seconds)]
    assert chosen == [avsbench_index(second, fps) for second in range(seconds)]


VFR_TIMES_MS = [0, 100, 900, 950, 1200, 2980, 3000, 3500, 3920, 3950]


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_a_variable_rate_video_gives_the_frame_on_screen_at_each_sampling_time(suffix, tmp_path):
    """Frames shown at irregular times (a nominal 4 fps): second l's frame is the one on screen at
    l + 15/16 s. Frame 4 (shown at 1.2 s) stays until 2.98 s, so it is the frame of seconds 1 and
    2, and the last second counts: frame 8 is on screen at 3 + 15/16 s."""
    frames = [numbered(k) for k in range(len(VFR_TIMES_MS))]
    path = encode(tmp_path / f"vfr.{suffix}", frames, tone(4.2), fps=4, times_ms=VFR_TIMES_MS)
    sampled = list(VideoReader(path).seconds())
    # (second, frame index, the number the frame shows): which frame was sampled for which second.
    assert [(second, index, number_shown(image)) for second, index, *_, image in sampled] == [
        (0, 2, 2), (1, 4, 4), (2, 4, 4), (3, 8, 8)
    ]  # fmt: skip
    assert [float(sample.time) for sample in sampled] == [0.9, 1.2, 1.2, 3.92]


def portrait() -> np.ndarray:
    """An upright 64 x 48 picture that any turn or mirror changes: red grows to the right, green
    downwards."""
    y, x = np.mgrid[0:64, 0:48]
    return np.stack([x * 5, y * 4, np.full_like(x, 60)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    ("rotation", "hflip", "reported", "stored"),
    [
        (90, False, 90, lambda picture: np.rot90(picture, -1)),  # stored turned clockwise
        (270, False, -90, lambda picture: np.rot90(picture, 1)),  # a phone's portrait video
        (90, True, 90, lambda picture: np.rot90(picture[:, ::-1], -1)),
    ],
)
def test_a_rotated_video_is_sampled_upright(rotation, hflip, reported, stored, tmp_path):
    """The display matrix turns the stored (sideways) frames upright, as players show them."""
    picture = portrait()
    frames = [np.ascontiguousarray(stored(picture))] * (FPS * 2)
    path = encode(tmp_path / "phone.mp4", frames, tone(2.1), rotation=rotation, hflip=hflip)
    reader = VideoReader(path)
    images = [image for *_, image in reader.seconds()]
    assert len(images) == 2
    for image in images:
        assert image.shape == picture.shape  # 64 high, 48 wide: not sideways
        assert np.abs(image.astype(int) - picture).mean() < 6  # and not upside down nor mirrored
    assert (reader.rotation, reader.mirrored) == (reported, hflip)


def test_a_rotation_by_other_than_quarter_turns_is_refused(tmp_path):
    path = encode(tmp_path / "askew.mp4", [portrait()] * FPS * 2, tone(2), rotation=-45)
    with pytest.raises(VideoError, match="turns the picture by -45 degrees, not a multiple of 90"):
        VideoReader(path)


def test_predict_on_a_rotated_variable_rate_video_writes_upright_results_at_the_frame_times(
    checkpoint, tmp_path
):
    """A phone's portrait video (stored sideways, rotation -90) with frames at irregular times:
    the masks and the overlay are upright at the displayed size, and predictions.json gives the
    rotation and each frame's index and timestamp."""
    picture = portrait()
    frames = [np.ascontiguousarray(np.rot90(picture, 1))] * len(VFR_TIMES_MS)
    path = encode(tmp_path / "phone.mp4", frames, tone(4.2), fps=4, times_ms=VFR_TIMES_MS,
                  rotation=-90)  # fmt: skip
    files = predict(checkpoint, path, tmp_path / "out", task="ms3")
    record = json.loads(files["json"].read_text())
    assert [(f["frame"], f["source_frame_index"], f["time_s"]) for f in record["frames"]] == [
        (1, 2, 0.9), (2, 4, 1.2), (3, 4, 1.2), (4, 8, 3.92)
    ]  # fmt: skip
    masks = []
    for k in range(1, 5):
        with Image.open(files["masks"] / f"frame_{k:04d}.png") as mask:
            assert mask.size == (48, 64)  # width, height as displayed
            masks.append(np.asarray(mask) // 255)
    with av.open(str(files["video"])) as container:
        shown = list(container.decode(video=0))
        assert [frame.rotation for frame in shown] == [0] * 4  # upright pixels, no matrix
        images = [frame.to_ndarray(format="rgb24") for frame in shown]
    for image, mask in zip(images, masks, strict=True):
        assert image.shape == picture.shape
        expected = overlay(picture, mask, mask_palette(1))
        assert np.abs(image.astype(int) - expected).mean() < 8
    assert (record["rotation"], record["mirrored"]) == (-90, False)


def test_predict_writes_the_overlay_video_masks_and_json(checkpoint, seven_seconds, tmp_path):
    path, _ = seven_seconds
    files = predict(checkpoint, path, tmp_path / "out", task="ms3")
    masks = sorted(files["masks"].glob("*.png"))
    assert [m.name for m in masks] == [f"frame_{k:04d}.png" for k in range(1, 8)]
    with Image.open(masks[0]) as mask:
        assert mask.size == (64, 64) and set(np.unique(np.asarray(mask))) <= {0, 255}
    record = json.loads(files["json"].read_text())
    assert record["task"] == "ms3" and record["seconds"] == 7 and record["window_seconds"] == 5
    frames = record["frames"]
    assert [f["frame"] for f in frames] == list(range(1, 8))
    assert [f["time_s"] for f in frames] == pytest.approx([s + 7 / 8 for s in range(7)])
    for frame, mask_path in zip(frames, masks, strict=True):
        with Image.open(mask_path) as mask:
            area = (np.asarray(mask) > 0).mean()
        assert frame["area"] == pytest.approx(area, abs=1e-6)
        assert 0.0 <= frame["score"] <= frame["max_score"] <= 1.0
        assert (frame["score"] > 0.5) == (area > 0)
    with av.open(str(files["video"])) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        assert sum(1 for _ in container.decode(video=0)) == 7
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 64)


def test_predictions_are_the_model_on_the_window_clips(checkpoint, seven_seconds, tmp_path):
    """Frame 7 comes from the second window (seconds 6-7): its mask is the model's prediction for
    that 2-second clip's second frame, upsampled to the video's size."""
    path, _ = seven_seconds
    files = predict(checkpoint, path, tmp_path / "out")
    model = load_trained(checkpoint)
    reader = VideoReader(path)
    images = [image for *_, image in reader.seconds()][5:7]
    frames = torch.stack([model.frame_tensor(Image.fromarray(image)) for image in images])
    logits = model(frames, window_examples(reader.audio, 5, 7))["logits"][1]  # [1, S, S]
    expected = torch.nn.functional.interpolate(logits[None], size=(64, 64), mode="bilinear")
    expected = (expected[0, 0].sigmoid() > 0.5).numpy()
    with Image.open(files["masks"] / "frame_0007.png") as mask:
        assert ((np.asarray(mask) > 0) == expected).mean() == 1.0


def test_avss_predictions_name_their_classes_and_avss_runs_draw_overlays(synth_trees, tmp_path):
    from avsac_lit.train import train
    from tests.helpers import tiny_run

    run = tmp_path / "run"
    train(tiny_run("avss", synth_trees["avss"], run, ["trainer.max_epochs=1",
          "trainer.limit_train_batches=1", "test=false"]))  # fmt: skip
    assert list((run / "overlays" / "epoch_000").glob("*.png"))  # AVSS overlays, class colours
    frames, audio = [np.full((48, 80, 3), 90, np.uint8)] * (FPS * 3), tone(3.2)
    files = predict(run / "checkpoints" / "last.ckpt", encode(tmp_path / "a.mp4", frames, audio),
                    tmp_path / "out")  # fmt: skip
    record = json.loads(files["json"].read_text())
    assert record["task"] == "avss" and record["window_seconds"] == 10 and record["seconds"] == 3
    names = load_trained(run / "checkpoints" / "last.ckpt").class_names
    assert names[0] == "background" and len(names) == 11
    for frame in record["frames"]:
        assert all(c["class"] == names[c["class_id"]] for c in frame["classes"])
        assert frame["area"] == pytest.approx(sum(c["area"] for c in frame["classes"]), abs=1e-5)
    with Image.open(files["masks"] / "frame_0001.png") as mask:
        assert mask.mode == "P" and mask.size == (80, 48)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no_audio", "has no audio track"),
        ("no_video", "has no video track"),
        ("garbage", "Cannot read"),
        ("short", "shorter than one second"),
        ("short_video", "shorter than one second"),
    ],
)
def test_videos_that_cannot_be_segmented_are_refused(kind, message, checkpoint, tmp_path):
    frames = [np.zeros((32, 32, 3), np.uint8)] * (FPS * 2)
    path = tmp_path / "bad.mp4"
    if kind == "no_audio":
        encode(path, frames, None)
    elif kind == "no_video":
        encode(path, None, tone(2))
    elif kind == "garbage":
        path.write_bytes(b"this is not a video" * 100)
    elif kind == "short":
        encode(path, frames[: FPS // 2], tone(0.5))
    else:  # two seconds of sound, but no frame at 15/16 s
        encode(path, frames[: FPS // 2], tone(2))
    with pytest.raises(VideoError, match=message) as error:
        predict(checkpoint, path, tmp_path / "out")
    assert str(path) in str(error.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_missing_video_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input=.*nowhere\.mp4"):
        VideoReader(tmp_path / "nowhere.mp4")


def test_a_checkpoint_of_another_task_is_refused(checkpoint, seven_seconds, tmp_path):
    with pytest.raises(ValueError, match=r"trained for task 'ms3'.*task='avss'"):
        predict(checkpoint, seven_seconds[0], tmp_path / "out", task="avss")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_checkpoints_without_their_config_use_the_run_directory_or_say_what_to_pass(
    checkpoint, tmp_path
):
    # A checkpoint of 0.1: every weight, nothing of the suite's own.
    saved = torch.load(export(checkpoint, tmp_path / "whole.ckpt"), weights_only=True)
    del saved["avsac_lit"]
    old = tmp_path / "run" / "checkpoints" / "old.ckpt"
    old.parent.mkdir(parents=True)
    torch.save(saved, old)
    with pytest.raises(FileNotFoundError, match="config=logs/train/runs"):
        load_trained(old)
    (tmp_path / "run" / "config.yaml").write_text(
        (checkpoint.parents[1] / "config.yaml").read_text()
    )
    assert load_trained(old).task == "ms3"
    other = tmp_path / "avss.yaml"
    other.write_text((checkpoint.parents[1] / "config.yaml").read_text().replace(
        "num_classes: 1", "num_classes: 11"))  # fmt: skip
    with pytest.raises(ValueError, match="predicts 1 classes but its config"):
        load_trained(old, config=other)


def predict_command(checkpoint: Path, video: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "avsac_lit.predict", f"ckpt_path={checkpoint}",
        f"input={video}", f"output={out}", "device=cpu",
    ]  # fmt: skip


def test_cli(checkpoint, seven_seconds, tmp_path):
    out = tmp_path / "cli"
    command = predict_command(checkpoint, seven_seconds[0], out)
    commands.run(command, check=True, timeout=300)
    assert (out / "overlay.mp4").is_file() and (out / "predictions.json").is_file()
    assert (out / "predict.log").is_file() and (out / ".hydra" / "overrides.yaml").is_file()


# Slow: its second process only repeats what two cheaper tests below check in this process:
# main() refuses a used output before Hydra writes into it, and predict() leaves an earlier
# prediction whole.
@pytest.mark.slow
def test_cli_run_again_into_its_output_is_refused_and_changes_nothing(
    checkpoint, seven_seconds, tmp_path
):
    out = tmp_path / "cli"
    command = predict_command(checkpoint, seven_seconds[0], out)
    commands.run(command, check=True, timeout=300)
    # The same command again must not write over the first run (nor append to its log).
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    again = commands.run(command, timeout=300)
    assert again.returncode != 0
    assert f"output={out} already holds a prediction" in again.stderr
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_predict_refuses_an_output_that_cannot_be_a_directory(tmp_path, monkeypatch):
    from avsac_lit.predict import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    arguments = ["predict", "ckpt_path=x.ckpt", "input=x.mp4", f"output={blocker}/out"]
    monkeypatch.setattr(sys, "argv", arguments)
    with pytest.raises(
        SystemExit, match=rf"output={re.escape(str(blocker))}/out cannot be written"
    ):
        main()


def test_predict_refuses_an_output_directory_that_holds_an_earlier_prediction(
    checkpoint, seven_seconds, tmp_path
):
    """Two videos' masks in one directory cannot be told apart: a used output is refused, before
    the checkpoint is even read (here it does not exist), and the first prediction stays whole."""
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is fine
    predict(checkpoint, seven_seconds[0], out)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    with pytest.raises(OutputInUseError) as error:
        predict(tmp_path / "no.ckpt", seven_seconds[0], out)
    message = str(error.value)
    assert f"output={out} already holds a prediction" in message
    assert str(seven_seconds[0].resolve()) in message  # of which video
    assert "7 masks" in message and "another output=" in message and "delete" in message
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_predict_refuses_an_output_directory_that_holds_other_files(tmp_path):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "results.csv").write_text("keep me")
    with pytest.raises(OutputInUseError, match=r"already holds 2 entries .*notes/, results\.csv"):
        predict(tmp_path / "no.ckpt", tmp_path / "no.mp4", out)
    assert (out / "results.csv").read_text() == "keep me"


def test_cli_refuses_a_used_output_before_hydra_writes_into_it(tmp_path, monkeypatch):
    from avsac_lit.predict import main

    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "frame_0001.png").write_bytes(b"png")
    (out / "predictions.json").write_text(json.dumps({"input": "/videos/first.mp4"}))
    arguments = ["predict", "ckpt_path=x.ckpt", "input=x.mp4", f"output={out}"]
    monkeypatch.setattr(sys, "argv", arguments)
    with pytest.raises(SystemExit, match=rf"output={re.escape(str(out))} already holds a "
                       r"prediction \(of /videos/first\.mp4; 1 masks"):  # fmt: skip
        main()
    assert sorted(path.name for path in out.iterdir()) == ["masks", "predictions.json"]


def nan_model(checkpoint: Path) -> TrainedModel:
    """The trained model with one weight of its prediction head NaN: what a checkpoint of a run
    that diverged holds (set in the loaded model, so no checksum is involved)."""
    model = load_trained(checkpoint)
    weight = next(p for n, p in model.net.named_parameters() if n.startswith("head."))
    with torch.no_grad():
        weight.fill_(float("nan"))
    return model


def test_nan_weights_stop_predict_naming_the_video_and_frame(
    checkpoint, seven_seconds, tmp_path, monkeypatch
):
    model = nan_model(checkpoint)
    monkeypatch.setattr("avsac_lit.predict.load_trained", lambda *args, **kwargs: model)
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError) as error:
        predict(checkpoint, seven_seconds[0], out)
    message = str(error.value)
    assert str(seven_seconds[0]) in message and "frame 1 (at 0.875 s)" in message
    assert re.search(r"(\d+) of \1 values are NaN", message)  # the whole frame
    assert f"python -m avsac_lit.eval ckpt_path={checkpoint}" in message
    assert not out.exists()  # nothing half-written is left, no predictions.json with NaN


def test_an_inf_in_a_later_window_stops_predict_and_removes_what_it_wrote(
    checkpoint, seven_seconds, tmp_path, monkeypatch
):
    """An inf logit still gives a probability of 1, so without the check it would pass silently;
    the first window's masks, already written, are removed rather than left without their json."""
    call = TrainedModel.__call__

    def second_window_inf(self, frames, audio):
        outputs = call(self, frames, audio)
        if len(frames) == 2:  # seconds 6-7
            outputs["logits"][1, 0, 3, 4] = float("inf")
        return outputs

    monkeypatch.setattr(TrainedModel, "__call__", second_window_inf)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        NonFiniteError, match=r"frame 7 \(at 6\.875 s\).*: 1 of \d+ values is \+inf\."
    ):
        predict(checkpoint, seven_seconds[0], out)
    assert list(out.iterdir()) == []  # the existing directory is kept, empty


def test_predictions_json_never_holds_a_non_finite_number(tmp_path):
    path = tmp_path / "predictions.json"
    with pytest.raises(NonFiniteError, match=r"predictions\.json.*frames/1/max_score is nan"):
        write_predictions(path, {"frames": [{"max_score": 0.5}, {"max_score": float("nan")}]})
    with pytest.raises(NonFiniteError, match=r"frames/0/score is None"):
        write_predictions(path, {"frames": [{"score": None}]})
    assert not path.exists()
    write_predictions(path, {"frames": [{"max_score": 0.5, "class": "dog"}]})
    assert json.loads(path.read_text()) == {"frames": [{"max_score": 0.5, "class": "dog"}]}


def test_predict_of_a_bare_state_dict_says_what_to_pass(tmp_path):
    torch.save({"head.to_mask.0.weight": torch.zeros(1, 4, 1, 1)}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare\.pth is not a Lightning checkpoint .* "
                       r"python -m avsac_lit\.convert"):  # fmt: skip
        predict(tmp_path / "bare.pth", tmp_path / "clip.mp4", tmp_path / "out")
