"""What the suite reads back, it verifies; what a disk refuses, it names (docs/bad_inputs.md rows
47-58): checkpoint and cache checksums, unique temporary names, full and read-only disks."""

from __future__ import annotations

import errno
import io
import logging
import multiprocessing
import os
import shutil
import subprocess
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from avsac_lit.checkpoints.io import read_checkpoint
from avsac_lit.data.audio import wav_to_examples
from avsac_lit.data.logmel import LogMelCache
from avsac_lit.eval import evaluate
from avsac_lit.inference.trained import load_trained
from avsac_lit.run.assemble import note_run
from avsac_lit.run.record import write_metrics
from avsac_lit.run.resume import check_resumable
from avsac_lit.storage import atomic
from avsac_lit.storage.atomic import DiskWriteError, atomic_path
from avsac_lit.storage.checksums import DamagedCheckpointError, seal, verify, write_checkpoint
from avsac_lit.system.feature_cache import EncoderFeatureCache
from avsac_lit.train import train
from tests.helpers import compose_config, eval_run, tiny_run
from tests.test_cheaper_steps import s4_train_batch, small_module

HEAD = "net.head.to_mask.0.weight"


def damaged_copy(source: Path, destination: Path, tensor: str = HEAD) -> Path:
    """``source`` with 64 bytes flipped inside the stored bytes of ``tensor`` (as a disk fault
    would leave it: the zip's structure intact, the tensor's content changed)."""
    weights = read_checkpoint(source)["state_dict"][tensor].contiguous()
    data = bytearray(source.read_bytes())
    offset = data.find(weights.numpy().tobytes())
    assert offset > 0, "the tensor's bytes are stored contiguously in the file"
    for i in range(offset, offset + 64):
        data[i] ^= 0xFF
    destination.write_bytes(bytes(data))
    return destination


def test_a_damaged_checkpoint_is_refused_by_eval_predict_and_resume_naming_the_tensor(
    trained_runs, tmp_path
):
    """64 flipped bytes in one weight tensor: it used to score mIoU 0.0 in eval, predict empty
    masks with max_score NaN, and fail a resume blaming the data clips."""
    run = trained_runs / "0"
    damaged = damaged_copy(run / "checkpoints" / "last.ckpt", tmp_path / "damaged.ckpt")
    named = rf"Checkpoint {damaged} is damaged: its tensor state_dict/{HEAD} does not match"
    with pytest.raises(DamagedCheckpointError, match=named):
        evaluate(eval_run(damaged, tmp_path / "eval"))
    assert not (tmp_path / "eval" / "metrics.json").exists()
    with pytest.raises(DamagedCheckpointError, match=named):
        load_trained(damaged)  # what avsac_lit.predict loads with
    resumed = tiny_run("ms3", trained_runs.parent / "data", tmp_path / "resume",
                       [f"ckpt_path={damaged}"])  # fmt: skip
    with pytest.raises(DamagedCheckpointError, match=named):
        check_resumable(resumed, damaged)
    # The intact file passes, and every tensor of it is covered (optimiser states too).
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    checksums = checkpoint["avsac_lit"]["checksums"]
    assert f"state_dict/{HEAD}" in checksums
    assert any(name.startswith("optimizer_states/") for name in checksums)


def test_a_checkpoint_without_checksums_is_still_read(trained_runs, tmp_path):
    """Checkpoints written before checksums existed load as they are."""
    checkpoint = read_checkpoint(trained_runs / "0" / "checkpoints" / "last.ckpt")
    del checkpoint["avsac_lit"]["checksums"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert load_trained(tmp_path / "old.ckpt").num_classes == 1


def test_a_sealed_checkpoint_names_a_missing_tensor(tmp_path):
    checkpoint = seal({"state_dict": {"a": torch.ones(3), "b": torch.zeros(2)}})
    del checkpoint["state_dict"]["b"]
    with pytest.raises(DamagedCheckpointError, match="its tensor state_dict/b is not in it"):
        verify(checkpoint, tmp_path / "x.ckpt")


# --- The feature cache ------------------------------------------------------------------------


def cache_and_module(root: Path, dtype: str = "float32"):
    cache = EncoderFeatureCache(root=root, dtype=dtype)
    module = small_module(cache=cache).eval()
    cache.bind(module.net)
    return cache, module


def test_damaged_cache_entries_are_logged_deleted_recomputed_and_rewritten(tmp_path, caplog):
    """A flipped byte, a truncated entry, a broken header, another dtype and another length:
    each is logged once with its path and recomputed, and the outputs equal a clean cache's. A
    truncated entry used to crash every later run with numpy's 'EOF: reading array header'."""
    batch = s4_train_batch(clips=2, frames=3)
    frames, audio = batch["frames"].flatten(0, 1), batch["audio"].flatten(0, 1)
    cache, module = cache_and_module(tmp_path / "cache")
    clean = cache.outputs(module.net, frames, audio)
    visual = sorted((tmp_path / "cache").glob("visual-*/*.npy"))
    audio_entries = sorted((tmp_path / "cache").glob("audio-*/*.npy"))
    assert len(visual) == 6 and len(audio_entries) == 6
    flipped, truncated, header, other_dtype, other_length = visual[:5]
    data = bytearray(flipped.read_bytes())
    data[200] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:100])
    header.write_bytes(b"not an npy" + header.read_bytes()[10:])
    # Well-formed entries with valid checksums, of another dtype and of another length.
    body = io.BytesIO()
    np.save(body, np.zeros(10, dtype=np.float64))
    raw = body.getvalue()
    other_dtype.write_bytes(raw + zlib.crc32(raw).to_bytes(4, "little"))
    cache.write(other_length.parent, other_length.stem, torch.zeros(7))
    audio_entries[0].write_bytes(b"")

    caplog.set_level(logging.WARNING, logger="avsac_lit.system.feature_cache")
    again = cache.outputs(module.net, frames, audio)
    # Recomputed in a batch of other frames than the first time: the same up to float rounding
    # (the CPU kernels round batches of other sizes differently; docs/design_log.md 0.6.0).
    for level_clean, level_again in zip(clean["visual"], again["visual"], strict=True):
        torch.testing.assert_close(level_again, level_clean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again["audio"], clean["audio"], rtol=1e-4, atol=1e-5)
    warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    for path in (flipped, truncated, header, other_dtype, other_length, audio_entries[0]):
        assert sum(str(path) in message for message in warned) == 1, path
    assert "checksum does not match" in " ".join(warned)
    # Rewritten whole: a third pass reads every entry, warning about none.
    caplog.clear()
    hits = cache.hits
    cache.outputs(module.net, frames, audio)
    assert cache.hits == hits + 12
    assert not [r for r in caplog.records if "is damaged" in r.getMessage()]


def test_a_run_with_damaged_cache_entries_ends_with_the_clean_runs_metrics(
    synth_trees, tmp_path, monkeypatch, caplog
):
    """A validation clip's entry with flipped bytes used to turn val/loss into null and change
    val/f; a training clip's stopped every rerun at the NaN guard."""
    caplog.set_level(logging.WARNING, logger="avsac_lit.system.feature_cache")
    monkeypatch.setenv("AVSAC_CACHE_DIR", str(tmp_path / "cache"))
    run = ["trainer.max_epochs=2", "backbone.freeze=true", "model.feature_cache.dtype=float32"]
    clean = train(tiny_run("ms3", synth_trees["ms3"], tmp_path / "clean", run))
    entries = sorted((tmp_path / "cache" / "encoder_features").glob("*/*.npy"))
    for entry in entries[:: max(1, len(entries) // 8)]:  # every store's entries, several clips
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0x55
        entry.write_bytes(bytes(data))
    damaged = entries[:: max(1, len(entries) // 8)]
    again = train(tiny_run("ms3", synth_trees["ms3"], tmp_path / "again", run))
    # The damaged entries are computed again in other batches than the first time, which rounds
    # their last bits differently (docs/design_log.md 0.6.0): equal to 1e-5, not to every digit.
    assert again.keys() == clean.keys()
    for name, value in clean.items():
        assert again[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert len(list((tmp_path / "cache" / "encoder_features").glob("*/*.npy"))) == len(entries)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"Feature cache entry {entry} is damaged" in warned for entry in damaged)


def write_many(path: str, count: int, queue) -> None:
    failures = 0
    for i in range(count):
        try:
            with atomic_path(path) as partial:
                partial.write_bytes(str(i).encode() * 100)
        except OSError:
            failures += 1
    queue.put(failures)


def test_writers_of_one_file_never_share_a_temporary_name(tmp_path):
    """Two processes writing one cache entry 1,000 times each: with one fixed .partial name,
    about a quarter of the writes failed (FileNotFoundError)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    target = str(tmp_path / "entry.npy")
    workers = [context.Process(target=write_many, args=(target, 1000, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [queue.get(timeout=5), queue.get(timeout=5)] == [0, 0]
    assert not list(tmp_path.glob("*.partial"))


# --- Full and read-only disks -----------------------------------------------------------------


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


needs_root = pytest.mark.skipif(
    not can_mount(), reason="mounting a small tmpfs and a read-only bind needs root (CI is root)"
)


@contextmanager
def mounted(*arguments: str, target: Path):
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", *arguments, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(arguments)} failed here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB tmpfs."""
    with mounted("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=tmp_path / "small") as disk:
        yield disk


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` but ``leave`` bytes (a few KB more or less: blocks)."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(bytes(max(0, free - leave)))


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only bind mount of a directory holding one file."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "kept.txt").write_text("earlier")
    target = tmp_path / "ro"
    with mounted("--bind", str(source), target=target):
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(target)],
                                 capture_output=True, text=True)  # fmt: skip
        if remount.returncode != 0:
            pytest.skip(f"a read-only remount failed here: {remount.stderr.strip()}")
        yield target


@needs_root
def test_a_checkpoint_on_a_full_disk_names_the_space_the_last_checkpoint_and_the_way_on(
    small_disk, tmp_path
):
    """It used to be torch's 'RuntimeError: [enforce fail at inline_container.cc:672] .
    unexpected pos'; the previous checkpoint stays intact, no temporary file is left."""
    run = small_disk / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    write_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, last)
    before = last.read_bytes()
    atomic.note_run_directory(run)
    try:
        with pytest.raises(DiskWriteError) as raised:
            write_checkpoint({"state_dict": {"w": torch.zeros(1_000_000)}}, last)
    finally:
        atomic.note_run_directory(None)
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert f"Cannot write {last}: the disk of {run / 'checkpoints'} is full (" in message
    assert "MB free; it needs about 3.8 MB)" in message
    assert f"The run's last good checkpoint is {last}" in message
    assert f"hydra.run.dir={run}" in message and f"ckpt_path={last}" in message
    assert last.read_bytes() == before
    assert not list((run / "checkpoints").glob("*.partial"))


@needs_root
def test_a_read_only_directory_is_named_for_metrics(read_only_dir):
    with pytest.raises(DiskWriteError, match=rf"Cannot write {read_only_dir}/metrics.json: "
                       rf"{read_only_dir} is on a read-only file system"):  # fmt: skip
        write_metrics(read_only_dir / "metrics.json", {"test/miou": 0.5})
    assert (read_only_dir / "kept.txt").read_text() == "earlier"


@needs_root
def test_a_read_only_tensorboard_directory_is_named(read_only_dir, synth_trees, tmp_path):
    """TensorBoard's writer names its file in bytes: the translation of its error used to fail
    with 'argument should be a str object or an os.PathLike object returning str'."""
    extra = ["logger=tensorboard", f"logger.tensorboard.save_dir={read_only_dir}"]
    with pytest.raises(DiskWriteError, match=rf"Cannot write {read_only_dir}/events\.out\.tfevents"
                       rf"\S+: {read_only_dir} is on a read-only file system"):  # fmt: skip
        train(tiny_run("ms3", synth_trees["ms3"], tmp_path / "run", extra))
    assert (read_only_dir / "kept.txt").read_text() == "earlier"


@needs_root
def test_a_cache_on_a_full_or_read_only_disk_turns_itself_off_with_a_warning(
    small_disk, read_only_dir, caplog
):
    """A bare OSError used to end the run."""
    batch = s4_train_batch(clips=2, frames=3, size=64)
    frames, audio = batch["frames"].flatten(0, 1), batch["audio"].flatten(0, 1)
    caplog.set_level(logging.WARNING, logger="avsac_lit.system.feature_cache")
    fill(small_disk, leave=16 * 1024)  # less than the 6 frames' entries
    for root, why in ((small_disk / "cache", "is full"), (read_only_dir, "read-only")):
        caplog.clear()
        cache, module = cache_and_module(root)
        outputs = cache.outputs(module.net, frames, audio)  # the batch still gets its features
        assert len(outputs["visual"]) == 4 and outputs["audio"].shape == (6, 128)
        assert not cache.bound
        warning = " ".join(r.getMessage() for r in caplog.records)
        assert "The feature cache is off for the rest of this run" in warning and why in warning
        assert "model.feature_cache.enabled=false" in warning


def flip_byte(path: Path) -> bytes:
    """Flip one bit in the middle of ``path`` (inside the stored values of a cache entry);
    returns the damaged bytes."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return bytes(data)


@needs_root
def test_a_damaged_entry_of_a_read_only_cache_is_named_and_computed_once_in_memory(
    read_only_dir, caplog
):
    """A shared cache, read-only to the run, with one damaged entry: deleting it used to stop
    the run (a read-only DiskWriteError advising another log directory)."""
    batch = s4_train_batch(clips=2, frames=3)
    frames, audio = batch["frames"].flatten(0, 1), batch["audio"].flatten(0, 1)
    owners_view = read_only_dir.parent / "source" / "cache"  # the mount's writable source
    cache, module = cache_and_module(owners_view)
    clean = cache.outputs(module.net, frames, audio)
    entry = sorted(owners_view.glob("visual-*/*.npy"))[0]
    damaged_bytes = flip_byte(entry)
    shared = EncoderFeatureCache(root=read_only_dir / "cache", dtype="float32")
    shared.bind(module.net)
    caplog.set_level(logging.WARNING, logger="avsac_lit.system.feature_cache")
    for _ in range(2):
        again = shared.outputs(module.net, frames, audio)
        for level_clean, level_again in zip(clean["visual"], again["visual"], strict=True):
            torch.testing.assert_close(level_again, level_clean, rtol=1e-4, atol=1e-5)
    assert (shared.hits, shared.misses) == (2 * 12 - 1, 1)  # computed once, then from memory
    assert shared.bound  # the other entries are still read
    (warning,) = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "cache" in r.getMessage()
    ]
    damaged = read_only_dir / "cache" / entry.relative_to(owners_view)
    assert warning.startswith(f"Feature cache entry {damaged} is damaged: its checksum")
    assert "It cannot be deleted there (Read-only file system)" in warning
    assert "owned by root" in warning and "paths.cache_dir=DIR" in warning
    assert entry.read_bytes() == damaged_bytes


@needs_root
def test_a_damaged_entry_of_a_read_only_log_mel_cache_is_named_and_computed_once_in_memory(
    read_only_dir, synth_trees, caplog
):
    wav = sorted(synth_trees["ms3"].rglob("*.wav"))[0]
    owners_view = LogMelCache(read_only_dir.parent / "source")
    owners_view.load(wav)
    damaged_bytes = flip_byte(owners_view.path_for(wav))
    shared = LogMelCache(read_only_dir)
    caplog.set_level(logging.WARNING, logger="avsac_lit.data.logmel")
    for _ in range(2):
        assert torch.equal(shared.load(wav), wav_to_examples(wav))
    (warning,) = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "cache" in r.getMessage()
    ]
    assert warning.startswith(f"Log-mel cache entry {shared.path_for(wav)} is damaged: its "
                              "checksum does not match")  # fmt: skip
    assert "It cannot be deleted there (Read-only file system)" in warning
    assert "paths.cache_dir=DIR" in warning
    assert shared.writable and owners_view.path_for(wav).read_bytes() == damaged_bytes


@needs_root
def test_a_training_run_on_a_full_disk_ends_with_the_named_error(synth_trees, tmp_path):
    """Whichever write fills the disk (the CSV log, a checkpoint), the run ends with one error
    that names the directory and the way on."""
    with mounted("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=tmp_path / "tiny") as disk:
        cfg = tiny_run("ms3", synth_trees["ms3"], disk / "run",
                       ["trainer.max_epochs=2", "logger=csv"])  # fmt: skip
        with pytest.raises(DiskWriteError, match=r"Cannot write .*: the disk of .* is full"):
            train(cfg)
        assert not list(disk.rglob("*.partial"))


@needs_root
def test_predict_on_a_full_disk_names_it_and_leaves_nothing_half_written(trained_runs, tmp_path):
    from avsac_lit.predict import predict
    from tests.test_predict import encode, synthetic_video

    frames, audio = synthetic_video(trained_runs.parent / "data", seconds=7)
    video = encode(tmp_path / "clip.mp4", frames, audio)
    with mounted("-t", "tmpfs", "-o", "size=16k", "tmpfs", target=tmp_path / "tiny") as disk:
        output = disk / "predicted"
        with pytest.raises(DiskWriteError, match=r"Cannot write .*predicted.*: the disk of .* is "
                           r"full \(.*\)\. .*output="):  # fmt: skip
            predict(trained_runs / "0" / "checkpoints" / "last.ckpt", video, output)
        assert not output.exists() or not list(output.rglob("*.*"))


def test_the_full_disk_advice_names_the_setting_that_moves_the_run(tmp_path):
    """Its way on, `paths.log_dir=/another/disk ckpt_path=...`, did nothing for a run whose
    hydra.run.dir was set: the command went to the same full disk, into a directory that then
    held another command's run. Where the run directory is set, the advice moves it."""
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"weights")
    advice = {}
    try:
        for name, extra in (("default", []), ("set", [f"hydra.run.dir={run}"])):
            compose_config("train", ["+experiment=synthetic_ms3", *extra], run)
            note_run(run)  # as the run's assembly does
            advice[name] = str(DiskWriteError(errno.ENOSPC, last))
    finally:
        atomic.note_run_directory(None)
    assert advice["set"].endswith(
        f"Free space there and continue the run: run the same command with hydra.run.dir={run}; "
        f"or go on in a new directory on another disk: hydra.run.dir=/another/disk/run "
        f"ckpt_path={last}."
    )
    assert "paths.log_dir" not in advice["set"]
    assert advice["default"].endswith(f": paths.log_dir=/another/disk ckpt_path={last}.")
