"""The VGGish log-mel front end: a waveform to [N, 1, 96, 64] examples, as published.

AVSBench's S4/MS3 ``audio_log_mel/*.pkl`` files hold exactly these examples (computed from the
16 kHz ``audio_wav/*.wav``), and AVSegFormer computes them from AVSS's ``audio.wav`` at run time.
This module reimplements that front end from its published parameters (``vggish_params.py``,
``mel_features.py``, ``vggish_input.py``), so that a 16 kHz wav gives the examples of its
``.pkl`` (which AVSBench padded to 5 by repeating the last example when the audio was short):

* reading: int16 PCM divided by 32768 (as the reference reads it); every other sample format
  (8-, 24- and 32-bit PCM, 32- and 64-bit float) at its true level, scaled to [-1, 1] full scale
  by libsndfile; stereo is averaged to mono; a rate other than 16 kHz is resampled (with soxr,
  where the reference used resampy: see ``docs/audio.md``);
* STFT: 25 ms periodic Hann window (400 samples), 10 ms hop (160 samples), magnitude of a 512-point
  real FFT (257 bins), no padding (a trailing partial window is dropped);
* mel: 64 bands over 125-7500 Hz on the HTK scale ``1127 ln(1 + f / 700)``, triangles linear in
  mel, DC bin weight 0; ``log(mel + 0.01)``;
* examples: non-overlapping 96-frame (0.96 s) patches, no padding; output float32 [N, 1, 96, 64].

Time alignment: example k covers ``[0.96 k, 0.96 k + 0.975]`` s (95 hops of 10 ms plus one 25 ms
window: 15 600 samples). 5 s of audio gives 498 frames and 5 examples, 10 s gives 10;
0.96 s gives only 94 frames and no example. AVSBench pairs example k with video frame k.

The signal processing is NumPy in float64, like the reference; only the result is a torch tensor.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import soundfile
import torch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125
MEL_MAX_HZ = 7500
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_SECONDS = 0.96
EXAMPLE_HOP_SECONDS = 0.96

WINDOW_LENGTH = round(SAMPLE_RATE * STFT_WINDOW_SECONDS)  # 400 samples
HOP_LENGTH = round(SAMPLE_RATE * STFT_HOP_SECONDS)  # 160 samples
FFT_LENGTH = 2 ** int(np.ceil(np.log2(WINDOW_LENGTH)))  # 512, the next power of two
NUM_SPECTROGRAM_BINS = FFT_LENGTH // 2 + 1  # 257
FRAMES_PER_EXAMPLE = round(EXAMPLE_WINDOW_SECONDS / STFT_HOP_SECONDS)  # 96 frames
EXAMPLE_HOP_FRAMES = round(EXAMPLE_HOP_SECONDS / STFT_HOP_SECONDS)  # 96 frames

_EXPECTED_WAV = "Expected a PCM WAV file readable by libsndfile"
# An empty wav is usually an extraction that failed (no audio stream, a full disk): say how to
# make it again. The loaders need one VGGish example (0.975 s) at least, and pad a short clip by
# repeating its last example; AVSBench clips have 5 s (S4, MS3) or 10 s (AVSS), a second a frame.
_REEXTRACT_WAV = (
    "Expected 16 kHz PCM audio of the whole clip: at least 0.975 s (one VGGish example), and "
    "one second per video frame as AVSBench has (5 s for S4/MS3, 10 s for AVSS). Re-extract it "
    "from the clip's video, e.g. ffmpeg -i VIDEO -vn -ac 1 -ar 16000 -c:a pcm_s16le {path}"
)


def frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    """Windows of ``data`` along axis 0: [num_windows, window_length, *data.shape[1:]].

    Only whole windows are kept, ``max(0, 1 + (len(data) - window_length) // hop_length)`` of
    them, so a trailing partial window is dropped. The result is a read-only view of ``data``.
    """
    if window_length < 1 or hop_length < 1:
        raise ValueError(
            f"Expected positive window and hop lengths, got {window_length} and {hop_length}."
        )
    data = np.asarray(data)
    count = max(0, 1 + (data.shape[0] - window_length) // hop_length)
    shape = (count, window_length, *data.shape[1:])
    strides = (data.strides[0] * hop_length, *data.strides)
    # A strided view, not a copy: 10 s of audio would otherwise be duplicated 2.5 times.
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides, writeable=False)


def periodic_hann(window_length: int) -> np.ndarray:
    """Periodic Hann window [window_length]: ``0.5 - 0.5 cos(2 pi n / N)``, n = 0..N-1.

    Periodic (not symmetric, as ``np.hanning`` is) because that is what the reference uses.
    """
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / window_length * np.arange(window_length))


def stft_magnitude(
    signal: np.ndarray, fft_length: int, hop_length: int, window_length: int
) -> np.ndarray:
    """|STFT| of a 1-D signal [n]: [num_frames, fft_length // 2 + 1].

    Frames are Hann-windowed and zero-padded to ``fft_length``; no padding at the signal's ends.
    """
    frames = frame(np.asarray(signal, dtype=np.float64), window_length, hop_length)
    return np.abs(np.fft.rfft(frames * periodic_hann(window_length), int(fft_length)))


def hertz_to_mel(frequencies_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale ``1127 ln(1 + f / 700)``, elementwise; same shape as the input."""
    return 1127.0 * np.log(1.0 + np.asarray(frequencies_hz, dtype=np.float64) / 700.0)


def mel_matrix(
    num_mel_bins: int = NUM_MEL_BANDS,
    num_spectrogram_bins: int = NUM_SPECTROGRAM_BINS,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """Weights [num_spectrogram_bins, num_mel_bins] mapping an FFT magnitude row to mel bands.

    The ``num_mel_bins + 2`` band edges are evenly spaced in mel between ``lower_hz`` and
    ``upper_hz``; band i is the triangle on edges (i, i + 1, i + 2), linear in mel, evaluated at
    the mel value of each FFT bin's centre frequency (``linspace(0, sample_rate / 2)``). The DC
    bin gets weight 0 in every band, as in the reference.
    """
    nyquist = sample_rate / 2.0
    if num_mel_bins < 1 or num_spectrogram_bins < 2:
        raise ValueError(
            f"Expected at least 1 mel band and 2 spectrogram bins, got {num_mel_bins} and "
            f"{num_spectrogram_bins}."
        )
    if lower_hz < 0.0:
        raise ValueError(f"Expected lower_hz >= 0, got {lower_hz}.")
    if lower_hz >= upper_hz:
        raise ValueError(f"Expected lower_hz ({lower_hz}) below upper_hz ({upper_hz}).")
    if upper_hz > nyquist:
        raise ValueError(
            f"Expected upper_hz ({upper_hz}) at most the Nyquist frequency ({nyquist})."
        )
    bin_mels = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels[:, None] - lower) / (centre - lower)
    falling = (upper - bin_mels[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def log_mel_spectrogram(samples_16k: np.ndarray) -> np.ndarray:
    """``log(mel + 0.01)`` of mono 16 kHz samples [n]: [num_frames, 64] float64.

    ``num_frames = max(0, 1 + (n - 400) // 160)``.
    """
    magnitude = stft_magnitude(samples_16k, FFT_LENGTH, HOP_LENGTH, WINDOW_LENGTH)
    return np.log(magnitude @ mel_matrix() + LOG_OFFSET)


def _to_mono_16k(samples: np.ndarray, sample_rate: float) -> np.ndarray:
    """Validated float64 mono samples [n'] at 16 kHz."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim not in (1, 2):
        raise ValueError(
            f"Expected samples of shape [n] or [n, channels], got shape {list(samples.shape)}."
        )
    if samples.size == 0:
        raise ValueError("Expected a non-empty waveform, got no samples.")
    if not np.isfinite(samples).all():
        raise ValueError("Expected finite samples in [-1, 1], got NaN or infinite values.")
    if not sample_rate > 0:
        raise ValueError(f"Expected a positive sample rate in Hz, got {sample_rate}.")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        import soxr  # only needed off 16 kHz, which AVSBench's own wavs never are

        samples = soxr.resample(samples, sample_rate, SAMPLE_RATE, quality="HQ")
    return samples


def waveform_to_examples(samples: np.ndarray, sample_rate: int) -> torch.Tensor:
    """VGGish examples of a waveform: float32 [N, 1, 96, 64], N = 0 below 0.975 s of audio.

    Args:
        samples: float samples in [-1, 1], shape [n] or [n, channels] (channels are averaged).
        sample_rate: their rate in Hz; anything but 16 kHz is resampled with soxr ("HQ").

    Raises:
        ValueError: empty or non-finite samples, another shape, or a non-positive rate.
    """
    log_mel = log_mel_spectrogram(_to_mono_16k(samples, sample_rate))
    examples = frame(log_mel, FRAMES_PER_EXAMPLE, EXAMPLE_HOP_FRAMES)  # [N, 96, 64]
    return torch.from_numpy(np.ascontiguousarray(examples, dtype=np.float32)).unsqueeze(1)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples [n] or [n, channels] as float64 at their true level, and the rate.

    16-bit PCM is read as int16 / 32768, as the reference reads it; every other format
    libsndfile reads (8-, 24-, 32-bit PCM, 32- and 64-bit float WAV, ...) as float64 scaled to
    full scale 1. (The reference's ``dtype="int16"`` read does not scale float samples: a float
    wav would read as silence.) Float samples beyond [-1, 1] are kept as they are, with a
    warning (:func:`warn_beyond_full_scale`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not audio that libsndfile can read, holds no samples (0 bytes,
            or a header only) or non-finite ones: the front end's own error would not name the
            file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Missing audio file: {path}. {_EXPECTED_WAV}.")
    if path.stat().st_size == 0:
        raise ValueError(
            f"Audio file {path} is empty (0 bytes): it holds no audio samples. "
            + _REEXTRACT_WAV.format(path=path)
        )
    try:
        with soundfile.SoundFile(path) as audio:
            subtype, sample_rate = audio.subtype, audio.samplerate
            if subtype == "PCM_16":
                samples = audio.read(dtype="int16") / 32768.0
            else:
                samples = audio.read(dtype="float64")
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"Cannot read audio file {path}: {error}. {_EXPECTED_WAV}.") from error
    if samples.size == 0:
        raise ValueError(
            f"Audio file {path} has a WAV header but no audio samples. "
            + _REEXTRACT_WAV.format(path=path)
        )
    if not np.isfinite(samples).all():  # only float wavs can hold them
        bad = int((~np.isfinite(samples)).sum())
        raise ValueError(
            f"Audio file {path} holds {bad} NaN or infinite {subtype} sample(s) of "
            f"{samples.size}: they would make every log-mel value NaN. "
            + _REEXTRACT_WAV.format(path=path)
        )
    warn_beyond_full_scale(samples, path, subtype)
    return samples, int(sample_rate)


def warn_beyond_full_scale(samples: np.ndarray, path: Path, subtype: str) -> None:
    """Float samples may exceed full scale (float WAV has headroom); they are read as they are.

    Clipping them would distort the sound (what an int16 export of the file would do), and
    refusing would stop a run over a level; but AVSBench's wavs are int16, which cannot exceed
    full scale, so such a clip is louder than any the models were trained on: said once a file
    (a wav is read once, then its log-mel is cached).
    """
    peak = float(np.abs(samples).max())
    if peak <= 1.0:
        return
    gain_db = 20.0 * math.log10(peak)
    log.warning(
        "Audio file %s holds %s samples up to %.3g times full scale (%+.1f dB). They are read as "
        "they are, not clipped, so its log-mel is louder than AVSBench's int16 wavs can be. To "
        "match them, scale it below full scale, e.g. ffmpeg -i %s -af volume=%.1fdB -c:a "
        "pcm_s16le OUT.wav",
        path, subtype, peak, gain_db, path, -gain_db,
    )  # fmt: skip


def wav_to_examples(path: str | Path) -> torch.Tensor:
    """:func:`waveform_to_examples` of a wav file: float32 [N, 1, 96, 64]."""
    return waveform_to_examples(*read_wav(path))


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float samples [n] or [n, channels] in [-1, 1] as 16-bit PCM WAV.

    Values are scaled by 32768, rounded and clipped to the int16 range, so ``k / 32768`` survives
    a :func:`read_wav` round trip exactly. Parent folders are created.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(samples).all():
        raise ValueError(f"Expected finite samples to write to {path}, got NaN or infinite values.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
    soundfile.write(path, pcm, sample_rate, subtype="PCM_16", format="WAV")
