"""Noise generation and exact-SNR mixing."""

import numpy as np
import pytest

from daisy.data import make_noise, mix_at_snr, snr_db


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("target", [20.0, 10.0, 5.0, 0.0, -5.0])
def test_mixing_hits_the_snr_within_a_tenth_of_a_db(kind, target):
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    clean = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    others = [rng.standard_normal(8000).astype(np.float32) * 0.1 for _ in range(6)]
    noise = make_noise(kind, 30000, rng, others)
    mixed = mix_at_snr(clean, noise, target)
    assert mixed.shape == clean.shape and mixed.dtype == np.float32
    assert abs(snr_db(clean, mixed) - target) < 0.1


def test_pink_noise_has_falling_spectrum_and_white_is_flat():
    rng = np.random.default_rng(1)
    for kind, expected_slope in [("pink", -1.0), ("white", 0.0)]:
        power = np.abs(np.fft.rfft(make_noise(kind, 2**16, rng))) ** 2
        freqs = np.arange(len(power))
        band = (freqs > 100) & (freqs < 20000)
        slope = np.polyfit(np.log(freqs[band]), np.log(power[band] + 1e-12), 1)[0]
        assert abs(slope - expected_slope) < 0.15, (kind, slope)


def test_errors_are_named():
    with pytest.raises(ValueError, match="unknown noise type 'rain'"):
        make_noise("rain", 100, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 4 other utterances"):
        make_noise("babble", 100, np.random.default_rng(0), [np.ones(10)])
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(np.zeros(100), np.ones(100), 0.0)
