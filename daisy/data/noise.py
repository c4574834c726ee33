"""Noise at known SNRs: white, pink (1/f power), babble (sums of other speakers), exact mixing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOISE_TYPES = ("white", "pink", "babble")


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clean + noise scaled so that 10 log10(P_clean / P_noise) == snr_db exactly (over len(clean)).

    The noise is tiled or cut to the length of `clean`. Returns float32.
    """
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.resize(np.asarray(noise, dtype=np.float64), clean.shape)
    p_clean, p_noise = _power(clean), _power(noise)
    if p_clean == 0 or p_noise == 0:
        raise ValueError("cannot mix at an SNR with a silent signal or silent noise")
    gain = np.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))
    return (clean + gain * noise).astype(np.float32)


def snr_db(clean: np.ndarray, mixture: np.ndarray) -> float:
    """Measured SNR of `mixture` against its clean part."""
    return 10 * np.log10(_power(clean) / _power(np.asarray(mixture, np.float64) - clean))


def white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped to 1/f power (amplitude 1/sqrt(f)) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return (noise / noise.std()).astype(np.float32)


def babble(n: int, rng: np.random.Generator, others: Sequence[np.ndarray], talkers: int = 4) -> np.ndarray:
    """Sum of `talkers` utterances drawn from `others` (other speakers), each at unit power, tiled to n."""
    if len(others) < talkers:
        raise ValueError(f"babble needs at least {talkers} other utterances, got {len(others)}")
    out = np.zeros(n, dtype=np.float64)
    for i in rng.choice(len(others), size=talkers, replace=False):
        voice = np.asarray(others[i], dtype=np.float64)
        start = int(rng.integers(len(voice)))
        voice = np.roll(voice, -start)
        out += np.resize(voice, n) / np.sqrt(max(_power(voice), 1e-12))
    return out.astype(np.float32)


def make_noise(kind: str, n: int, rng: np.random.Generator, others: Sequence[np.ndarray] = ()) -> np.ndarray:
    if kind == "white":
        return white(n, rng)
    if kind == "pink":
        return pink(n, rng)
    if kind == "babble":
        return babble(n, rng, others)
    raise ValueError(f"unknown noise type {kind!r}; choose one of {', '.join(NOISE_TYPES)}")
