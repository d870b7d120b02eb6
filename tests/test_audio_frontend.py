"""The VGGish front end against hand-computed values and an independent NumPy formulation."""

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


def test_hand_computed_pieces():
    assert hertz_to_mel(700.0) == pytest.approx(1127 * math.log(2))
    assert hertz_to_mel(0.0) == 0.0
    assert np.allclose(periodic_hann(4), [0.0, 0.5, 1.0, 0.5])
    assert frame(np.arange(10), 4, 3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    # A trailing partial window is dropped; too short an input gives no window.
    assert frame(np.arange(9), 4, 3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert frame(np.arange(3), 4, 3).shape == (0, 4)


def test_stft_equals_an_explicit_dft():
    signal = np.random.default_rng(0).normal(size=1200)
    ours = stft_magnitude(signal, 512, 160, 400)
    n, k = np.arange(512), np.arange(257)
    dft = np.exp(-2j * np.pi * np.outer(k, n) / 512)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    starts = range(0, 1200 - 400 + 1, 160)
    expected = np.stack([np.abs(dft[:, :400] @ (signal[s : s + 400] * window)) for s in starts])
    assert ours.shape == (6, 257)
    assert np.allclose(ours, expected, atol=1e-9)


def test_mel_matrix_equals_interpolated_triangles():
    weights = mel_matrix()
    assert weights.shape == (257, 64)
    bin_mel = 1127 * np.log(1 + np.linspace(0, 8000, 257) / 700)
    edges = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)
    for band in range(64):
        triangle = np.interp(bin_mel, edges[band : band + 3], [0.0, 1.0, 0.0], left=0, right=0)
        triangle[0] = 0.0
        assert np.allclose(weights[:, band], triangle, atol=1e-12)
    assert not weights[0].any()
    assert (weights.argmax(axis=0) == np.sort(weights.argmax(axis=0))).all()


def test_mel_matrix_refuses_bad_edges():
    with pytest.raises(ValueError, match="lower_hz"):
        mel_matrix(lower_hz=7500, upper_hz=125)
    with pytest.raises(ValueError, match="Nyquist"):
        mel_matrix(upper_hz=9000)


def test_silence_and_a_pure_tone():
    assert np.allclose(log_mel_spectrogram(np.zeros(16000)), math.log(0.01))
    band_energy = log_mel_spectrogram(tone([1000], 1.0)).mean(axis=0)
    centres_hz = 700 * (
        np.exp(np.linspace(hertz_to_mel(125), hertz_to_mel(7500), 66)[1:-1] / 1127) - 1
    )
    assert band_energy.argmax() == np.abs(centres_hz - 1000).argmin()


@pytest.mark.parametrize(
    ("samples", "examples"), [(80000, 5), (160000, 10), (15360, 0), (15600, 1), (15599, 0)]
)
def test_number_of_examples(samples, examples):
    result = waveform_to_examples(np.zeros(samples), RATE)
    assert result.shape == (examples, 1, 96, 64)
    assert result.dtype == torch.float32


def test_stereo_is_averaged():
    left, right = tone([440], 1.0), tone([880], 1.0)
    stereo = waveform_to_examples(np.stack([left, right], axis=1), RATE)
    assert torch.equal(stereo, waveform_to_examples((left + right) / 2, RATE))


@pytest.mark.parametrize("rate", [32000, 44100])
def test_other_rates_are_resampled(rate):
    reference = waveform_to_examples(tone([440, 1500], 2.0), RATE)
    resampled = waveform_to_examples(tone([440, 1500], 2.0, rate=rate), rate)
    assert resampled.shape == reference.shape
    # Band energies of steady tones agree closely; the resampler's filter differs only at the
    # edges of the signal, so compare the time-averaged spectrum of the first example.
    assert torch.allclose(resampled[0, 0].mean(0), reference[0, 0].mean(0), atol=0.05)


@pytest.mark.parametrize(
    ("samples", "match"),
    [(np.zeros(0), "non-empty"), (np.full(100, np.nan), "NaN"), (np.zeros((2, 2, 2)), r"\[n\]")],
)
def test_bad_waveforms_are_refused(samples, match):
    with pytest.raises(ValueError, match=match):
        waveform_to_examples(samples, RATE)


def test_wav_round_trip_is_exact(tmp_path):
    values = np.array([-32768, -1, 0, 1, 12345, 32767]) / 32768.0
    write_wav(tmp_path / "sub" / "x.wav", values)
    samples, rate = read_wav(tmp_path / "sub" / "x.wav")
    assert rate == RATE
    assert np.array_equal(samples, values)


def test_wav_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.wav"):
        read_wav(tmp_path / "missing.wav")
    bogus = tmp_path / "bogus.wav"
    bogus.write_text("not audio")
    with pytest.raises(ValueError, match=f"Cannot read audio file {bogus}"):
        read_wav(bogus)


def reference_examples(samples: np.ndarray) -> np.ndarray:
    """The whole front end again, written as loops with a different formulation."""
    window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / 400) for n in range(400)])
    hz = np.arange(257) * 8000 / 256
    mel = 1127 * np.log1p(hz / 700)
    edges = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)
    weights = np.zeros((257, 64))
    for band in range(64):
        low, centre, high = edges[band], edges[band + 1], edges[band + 2]
        for b in range(1, 257):
            if low < mel[b] <= centre:
                weights[b, band] = (mel[b] - low) / (centre - low)
            elif centre < mel[b] < high:
                weights[b, band] = (high - mel[b]) / (high - centre)
    rows = []
    for start in range(0, len(samples) - 400 + 1, 160):
        spectrum = np.abs(np.fft.fft(samples[start : start + 400] * window, 512))[:257]
        rows.append(np.log(spectrum @ weights + 0.01))
    log_mel = np.array(rows)
    count = len(log_mel) // 96
    return log_mel[: count * 96].reshape(count, 1, 96, 64)


def test_whole_chain_equals_an_independent_implementation():
    samples = np.random.default_rng(3).uniform(-0.5, 0.5, size=3 * RATE)
    ours = waveform_to_examples(samples, RATE).numpy()
    expected = reference_examples(samples)
    assert ours.shape == expected.shape == (3, 1, 96, 64)
    assert np.allclose(ours, expected, atol=1e-5)
