"""Task metrics against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from daisy.downstream import metrics

pytest.importorskip("jiwer")
pytest.importorskip("pesq")
pytest.importorskip("pystoi")
pytest.importorskip("torchmetrics")

SR = 16000


def speech_like(seconds: float = 3.0) -> np.ndarray:
    """A gliding harmonic voice in syllable-like bursts with pauses (PESQ needs something speech-like)."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
    return (0.3 * voiced * np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2).astype(np.float32)


def at_snr(signal, snr_db: float, seed: int = 0):
    noise = np.random.default_rng(seed).standard_normal(len(signal))
    noise *= np.sqrt(np.mean(np.square(signal, dtype=np.float64)) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (signal + noise).astype(np.float32)


# -- text ---------------------------------------------------------------------------------------------------------
def test_wer_and_cer_of_known_strings():
    assert metrics.wer("the cat sat", "the cat sit") == pytest.approx(1 / 3)
    assert metrics.wer(["the cat sat", "a dog"], ["the cat", "a dog ran"]) == pytest.approx(2 / 5)  # 1 del + 1 ins
    assert metrics.cer("the cat sat", "the cat sit") == pytest.approx(1 / 11)
    assert metrics.cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert metrics.wer(["same words"], ["same words"]) == 0.0


def test_text_metrics_refuse_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        metrics.wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no references"):
        metrics.cer([], [])
    with pytest.raises(ValueError, match="empty"):
        metrics.wer(["a", "  "], ["a", "b"])


def test_accuracy():
    assert metrics.accuracy(torch.tensor([1, 2, 3, 4]), [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.accuracy([], [])


# -- SI-SDR -------------------------------------------------------------------------------------------------------
def test_si_sdr_known_values():
    clean = torch.from_numpy(speech_like(1.0))
    assert float(metrics.si_sdr(clean, clean)) > 100
    for snr in (20.0, 5.0, 0.0):
        noisy = torch.from_numpy(at_snr(clean.numpy(), snr))
        assert float(metrics.si_sdr(noisy, clean)) == pytest.approx(snr, abs=0.5)
        # scale invariance: rescaling the estimate changes nothing
        unscaled = float(metrics.si_sdr(noisy, clean))
        for scale in (0.01, 50.0):
            assert float(metrics.si_sdr(scale * noisy, clean)) == pytest.approx(unscaled, abs=1e-6)


def test_si_sdr_improvement_of_no_separation_is_zero_and_of_perfect_separation_large():
    g = torch.Generator().manual_seed(0)
    sources = torch.randn(2, 2, SR, generator=g, dtype=torch.float64)  # two utterances of two equal-power speakers
    mixture = sources.sum(1)
    assert metrics.si_sdr(mixture[:, None].expand_as(sources), sources).abs().max() < 0.5  # 0 dB mixtures
    assert metrics.si_sdr_improvement(mixture[:, None].expand_as(sources), mixture, sources).abs().max() < 1e-9
    assert metrics.si_sdr_improvement(sources, mixture, sources).min() > 100


def test_align_sources_finds_the_speaker_order():
    g = torch.Generator().manual_seed(1)
    sources = torch.randn(3, 2, 4000, generator=g, dtype=torch.float64)
    estimates = sources + 0.1 * torch.randn(sources.shape, generator=g, dtype=torch.float64)
    swapped = estimates.clone()
    swapped[[0, 2]] = estimates[[0, 2]].flip(1)  # utterances 0 and 2 come out in the other order
    assert torch.equal(metrics.align_sources(swapped, sources), estimates)
    assert metrics.si_sdr(swapped, sources)[0].max() < 0


def test_signal_metrics_refuse_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.si_sdr(torch.zeros(10), torch.zeros(11))
    with pytest.raises(ValueError, match="empty"):
        metrics.si_sdr(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="samples"):
        metrics.pesq_wb(np.zeros(SR), np.zeros(SR - 1))
    with pytest.raises(ValueError, match="empty"):
        metrics.stoi(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="16 kHz"):
        metrics.pesq_wb(np.zeros(8000), np.zeros(8000), sample_rate=8000)


# -- PESQ, STOI ---------------------------------------------------------------------------------------------------
def test_pesq_of_clean_speech_is_near_the_top_and_noise_lowers_it():
    clean = speech_like()
    assert metrics.pesq_wb(clean, clean) > 4.0
    assert metrics.pesq_wb(torch.from_numpy(clean), torch.from_numpy(at_snr(clean, 0.0))) < 2.0


def test_stoi_of_clean_speech_is_one_and_noise_lowers_it():
    clean = speech_like()
    assert metrics.stoi(clean, clean) == pytest.approx(1.0, abs=1e-6)
    scores = [metrics.stoi(clean, at_snr(clean, snr)) for snr in (20.0, 0.0, -5.0)]
    assert scores[0] > scores[1] > scores[2]
    assert not math.isnan(scores[2]) and scores[2] < 0.9
