"""The VGGish front end against hand-computed values and independent NumPy formulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avsac_lit.data.audio import (
    frame,
    hertz_to_mel,
    log_mel_spectrogram,
    mel_matrix,
    periodic_hann,
    read_wav,
    stft_magnitude,
    waveform_to_examples,
    write_wav,
)

RATE = 16000


def tone(frequencies, seconds, rate=RATE, amplitude=0.3):
    t = np.arange(round(seconds * rate)) / rate
    return sum(amplitude * np.sin(2 * np.pi * f * t) for f in frequencies)


def band_centres_hz() -> np.ndarray:
    """Centre frequencies of the 64 bands, by inverting the HTK formula by hand."""
    edges_mel = np.linspace(1127 * math.log(1 + 125 / 700), 1127 * math.log(1 + 7500 / 700), 66)
    return 700 * (np.exp(edges_mel[1:-1] / 1127) - 1)


def test_hand_computed_pieces():
    assert hertz_to_mel(700.0) == pytest.approx(1127 * math.log(2), rel=1e-15)
    assert hertz_to_mel(0.0) == 0.0
    assert np.allclose(periodic_hann(4), [0.0, 0.5, 1.0, 0.5], atol=1e-15)
    assert frame(np.arange(10), 4, 3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    # A trailing partial window is dropped; too short an input gives no window at all.
    assert frame(np.arange(9), 4, 3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert frame(np.arange(3), 4, 3).shape == (0, 4)
    # Trailing axes ride along (this is how log-mel frames become examples).
    rows = np.arange(12).reshape(6, 2)
    assert frame(rows, 2, 2).tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]]
    with pytest.raises(ValueError, match="positive"):
        frame(np.arange(9), 4, 0)


def test_stft_equals_an_explicit_dft():
    signal = np.random.default_rng(0).normal(size=1200)
    ours = stft_magnitude(signal, 512, 160, 400)
    n, k = np.arange(512), np.arange(257)
    dft = np.exp(-2j * np.pi * np.outer(k, n) / 512)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    starts = range(0, 1200 - 400 + 1, 160)  # 0, 160, ..., 800: samples 1120..1199 are dropped
    # Zero padding to 512 means the last 112 DFT columns multiply zeros; leave them out.
    expected = np.stack([np.abs(dft[:, :400] @ (signal[s : s + 400] * window)) for s in starts])
    assert ours.shape == (6, 257)
    assert np.allclose(ours, expected, atol=1e-9)


def test_mel_matrix_equals_interpolated_triangles():
    weights = mel_matrix()
    assert weights.shape == (257, 64)
    bin_mel = 1127 * np.log(1 + np.linspace(0, 8000, 257) / 700)
    edges = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)
    for band in range(64):
        # The triangle as a piecewise-linear interpolant through (left, 0), (centre, 1), (right, 0).
        triangle = np.interp(bin_mel, edges[band : band + 3], [0.0, 1.0, 0.0], left=0, right=0)
        triangle[0] = 0.0
        assert np.allclose(weights[:, band], triangle, atol=1e-12)
    assert not weights[0].any()


def test_mel_bands_have_one_peak_near_their_centre():
    weights = mel_matrix()
    bin_hz = np.linspace(0, 8000, 257)
    for band, centre in enumerate(band_centres_hz()):
        column = weights[:, band]
        support = np.flatnonzero(column)
        assert support.size > 0
        peak = int(column.argmax())
        rise = np.diff(column[support[0] : peak + 1])
        fall = np.diff(column[peak : support[-1] + 1])
        assert (rise > 0).all() and (fall < 0).all()  # contiguous, strictly unimodal
        # The peak bin is a neighbour of the centre frequency: within one 31.25 Hz bin step.
        assert abs(bin_hz[peak] - centre) <= 8000 / 256
        assert 0 < column.max() <= 1


def test_mel_matrix_refuses_bad_edges():
    with pytest.raises(ValueError, match="lower_hz"):
        mel_matrix(lower_hz=7500, upper_hz=125)
    with pytest.raises(ValueError, match="lower_hz >= 0"):
        mel_matrix(lower_hz=-1.0)
    with pytest.raises(ValueError, match="Nyquist"):
        mel_matrix(upper_hz=9000)


def test_silence_and_a_pure_tone():
    assert np.allclose(log_mel_spectrogram(np.zeros(16000)), math.log(0.01), rtol=0, atol=1e-15)
    band_energy = log_mel_spectrogram(tone([1000], 1.0)).mean(axis=0)
    assert band_energy.argmax() == np.abs(band_centres_hz() - 1000).argmin()


@pytest.mark.parametrize(
    ("samples", "frames", "examples"),
    [
        (80000, 498, 5),  # 5 s
        (160000, 998, 10),  # 10 s
        (15360, 94, 0),  # 0.96 s: 94 frames, short of one example
        (15600, 96, 1),  # 0.975 s = 95 hops + one window: exactly one example
        (15599, 95, 0),
    ],
)
def test_number_of_frames_and_examples(samples, frames, examples):
    assert log_mel_spectrogram(np.zeros(samples)).shape == (frames, 64)
    result = waveform_to_examples(np.zeros(samples), RATE)
    assert result.shape == (examples, 1, 96, 64)
    assert result.dtype == torch.float32


def test_stereo_is_averaged():
    left, right = tone([440], 1.0), tone([880], 1.0)
    stereo = waveform_to_examples(np.stack([left, right], axis=1), RATE)
    assert torch.equal(stereo, waveform_to_examples((left + right) / 2, RATE))


@pytest.mark.parametrize("rate", [32000, 44100])
def test_other_rates_are_resampled(rate):
    reference = waveform_to_examples(tone([440, 1500, 6000], 2.0), RATE)
    resampled = waveform_to_examples(tone([440, 1500, 6000], 2.0, rate=rate), rate)
    assert resampled.shape == reference.shape == (2, 1, 96, 64)
    # The very first STFT frame sees the resampler's response to the tones' abrupt onset at t = 0
    # (a few hundredths of a log unit off), so it gets a loose bound. Elsewhere soxr "HQ"
    # reproduces the band-limited tones almost exactly: at most about 2e-4 log units (0.02 % of
    # band energy) on every band, silent ones included. 2e-3 leaves a margin for other soxr builds
    # and still catches a wrong rate or a shifted frame, each of which costs well over 0.1.
    difference = (resampled - reference).abs()
    assert difference[0, 0, 0].max() < 0.1
    assert difference[0, 0, 1:].max() < 2e-3
    assert difference[1:].max() < 2e-3


@pytest.mark.parametrize(
    ("samples", "rate", "match"),
    [
        (np.zeros(0), RATE, "non-empty"),
        (np.zeros((0, 2)), RATE, "non-empty"),
        (np.full(100, np.nan), RATE, "NaN"),
        (np.array([0.0, np.inf]), RATE, "infinite"),
        (np.zeros((2, 2, 2)), RATE, r"\[n\] or \[n, channels\]"),
        (np.zeros(100), 0, "positive sample rate"),
        (np.zeros(100), -16000, "positive sample rate"),
    ],
)
def test_bad_waveforms_are_refused(samples, rate, match):
    with pytest.raises(ValueError, match=match):
        waveform_to_examples(samples, rate)


def test_wav_round_trip_is_exact(tmp_path):
    values = np.array([-32768, -1, 0, 1, 12345, 32767]) / 32768.0
    write_wav(tmp_path / "sub" / "x.wav", values)
    samples, rate = read_wav(tmp_path / "sub" / "x.wav")
    assert rate == RATE
    assert samples.dtype == np.float64
    assert np.array_equal(samples, values)
    # Stereo keeps its [n, channels] layout; out-of-range values are clipped.
    write_wav(tmp_path / "stereo.wav", np.stack([values, -values], axis=1), 8000)
    stereo, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 8000 and stereo.shape == (6, 2)
    assert np.array_equal(stereo[:, 0], values)
    assert stereo[0, 1] == 32767 / 32768  # +1.0 does not fit int16


def test_wav_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.wav.*PCM WAV"):
        read_wav(tmp_path / "missing.wav")
    bogus = tmp_path / "bogus.wav"
    bogus.write_text("not audio")
    with pytest.raises(ValueError, match=r"Cannot read audio file .*bogus\.wav.*PCM WAV"):
        read_wav(bogus)
    with pytest.raises(ValueError, match="finite"):
        write_wav(tmp_path / "nan.wav", np.array([0.0, np.nan]))


def reference_examples(samples: np.ndarray) -> np.ndarray:
    """The whole front end again, written as loops with a different formulation."""
    window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / 400) for n in range(400)])
    hz = np.arange(257) * 8000 / 256
    mel = 1127 * np.log1p(hz / 700)
    edges = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)
    weights = np.zeros((257, 64))
    for band in range(64):
        low, centre, high = edges[band], edges[band + 1], edges[band + 2]
        for b in range(1, 257):  # bin 0 (DC) stays 0
            if low < mel[b] <= centre:
                weights[b, band] = (mel[b] - low) / (centre - low)
            elif centre < mel[b] < high:
                weights[b, band] = (high - mel[b]) / (high - centre)
    rows = []
    for start in range(0, len(samples) - 400 + 1, 160):
        # Full complex FFT, keeping the non-negative frequencies, instead of rfft.
        spectrum = np.abs(np.fft.fft(samples[start : start + 400] * window, 512))[:257]
        rows.append(np.log(spectrum @ weights + 0.01))
    log_mel = np.array(rows)
    count = len(log_mel) // 96
    return log_mel[: count * 96].reshape(count, 1, 96, 64)


def test_whole_chain_equals_an_independent_implementation():
    # 3.2 s: 318 frames, so 3 examples and 30 frames that no example uses.
    samples = np.random.default_rng(3).uniform(-0.5, 0.5, size=round(3.2 * RATE))
    ours = waveform_to_examples(samples, RATE).numpy()
    expected = reference_examples(samples)
    assert ours.shape == expected.shape == (3, 1, 96, 64)
    assert np.allclose(ours, expected, rtol=0, atol=1e-5)
