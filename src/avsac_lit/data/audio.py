"""The VGGish log-mel front end, equal to the published one that made AVSBench's ``.pkl`` files.

Parameters (anchors: ``vggish_params.py`` / ``mel_features.py`` / ``vggish_input.py``):

* mono 16 kHz input; stereo is averaged, other rates are resampled;
* STFT: 25 ms periodic Hann window (400 samples), 10 ms hop (160), 512-point FFT magnitude,
  no padding (a trailing partial window is dropped);
* 64 mel bands over 125-7500 Hz on the HTK scale ``1127 ln(1 + f / 700)``, triangles linear in mel,
  DC bin weight 0; ``log(mel + 0.01)``;
* non-overlapping examples of 96 frames: output ``[N, 1, 96, 64]`` float32.

Example k covers ``[0.96 k, 0.96 k + 0.975]`` s, so 5 s of audio gives 498 frames and 5 examples,
10 s gives 10; AVSBench pairs example k with frame k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_SECONDS = 0.96
EXAMPLE_HOP_SECONDS = 0.96

WINDOW_LENGTH = round(SAMPLE_RATE * STFT_WINDOW_SECONDS)  # 400
HOP_LENGTH = round(SAMPLE_RATE * STFT_HOP_SECONDS)  # 160
FFT_LENGTH = 2 ** int(np.ceil(np.log2(WINDOW_LENGTH)))  # 512
FRAMES_PER_EXAMPLE = round(EXAMPLE_WINDOW_SECONDS / STFT_HOP_SECONDS)  # 96
EXAMPLE_HOP_FRAMES = round(EXAMPLE_HOP_SECONDS / STFT_HOP_SECONDS)  # 96


def frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    """Overlapping windows of ``data`` along axis 0: [num_windows, window_length, ...].

    Only whole windows are kept: ``1 + (len - window_length) // hop_length`` of them, or none.
    """
    count = max(0, 1 + (data.shape[0] - window_length) // hop_length)
    shape = (count, window_length, *data.shape[1:])
    strides = (data.strides[0] * hop_length, *data.strides)
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides, writeable=False)


def periodic_hann(window_length: int) -> np.ndarray:
    """The periodic Hann window ``0.5 - 0.5 cos(2 pi n / N)``, n = 0..N-1 (not the symmetric)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length))


def stft_magnitude(
    signal: np.ndarray, fft_length: int, hop_length: int, window_length: int
) -> np.ndarray:
    """|STFT| of a 1-D signal: [num_frames, fft_length // 2 + 1]."""
    frames = frame(signal, window_length, hop_length)
    return np.abs(np.fft.rfft(frames * periodic_hann(window_length), int(fft_length)))


def hertz_to_mel(frequencies_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(frequencies_hz, dtype=np.float64) / 700.0)


def mel_matrix(
    num_mel_bins: int = NUM_MEL_BANDS,
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """Weights [num_spectrogram_bins, num_mel_bins] mapping an FFT magnitude row to mel bands.

    Band edges are evenly spaced in mel; each band is a triangle, linear in mel, evaluated at the
    mel value of every FFT bin's centre frequency. The DC bin gets weight 0 in every band.
    """
    nyquist = sample_rate / 2.0
    if lower_hz < 0.0:
        raise ValueError(f"lower_hz must be >= 0, got {lower_hz}.")
    if lower_hz >= upper_hz:
        raise ValueError(f"lower_hz ({lower_hz}) must be below upper_hz ({upper_hz}).")
    if upper_hz > nyquist:
        raise ValueError(
            f"upper_hz ({upper_hz}) must not exceed the Nyquist frequency ({nyquist})."
        )
    bin_mels = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels[:, None] - lower) / (centre - lower)
    falling = (upper - bin_mels[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def log_mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """log(mel + 0.01) of 16 kHz mono samples: [num_frames, 64]."""
    magnitude = stft_magnitude(samples, FFT_LENGTH, HOP_LENGTH, WINDOW_LENGTH)
    return np.log(magnitude @ mel_matrix() + LOG_OFFSET)


def _to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim not in (1, 2):
        raise ValueError(
            f"Expected samples of shape [n] or [n, channels], got {list(samples.shape)}."
        )
    if samples.size == 0:
        raise ValueError("Expected a non-empty waveform, got no samples.")
    if not np.isfinite(samples).all():
        raise ValueError("The waveform holds NaN or infinite samples.")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}.")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        import soxr

        samples = soxr.resample(samples, sample_rate, SAMPLE_RATE, quality="HQ")
    return samples


def waveform_to_examples(samples: np.ndarray, sample_rate: int) -> torch.Tensor:
    """VGGish examples of a waveform: float32 [N, 1, 96, 64], N = 0 for less than 0.975 s.

    Args:
        samples: float samples in [-1, 1], shape [n] or [n, channels] (channels are averaged).
        sample_rate: their rate in Hz; anything but 16 kHz is resampled with soxr.
    """
    log_mel = log_mel_spectrogram(_to_mono_16k(samples, sample_rate))
    examples = frame(log_mel, FRAMES_PER_EXAMPLE, EXAMPLE_HOP_FRAMES)  # [N, 96, 64]
    return torch.from_numpy(np.ascontiguousarray(examples, dtype=np.float32)).unsqueeze(1)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples as float64 in [-1, 1) (int16 / 32768, as the reference reads them) and the rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Missing audio file: {path}")
    try:
        samples, sample_rate = soundfile.read(path, dtype="int16")
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(
            f"Cannot read audio file {path}: {error}. Expected a PCM WAV readable by libsndfile."
        ) from error
    return samples / 32768.0, int(sample_rate)


def wav_to_examples(path: str | Path) -> torch.Tensor:
    """:func:`waveform_to_examples` of a wav file: [N, 1, 96, 64]."""
    return waveform_to_examples(*read_wav(path))


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float samples in [-1, 1] as 16-bit PCM (clipped, rounded), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(np.asarray(samples) * 32768.0), -32768, 32767).astype(np.int16)
    soundfile.write(path, pcm, sample_rate, subtype="PCM_16")
