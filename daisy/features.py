"""MFCC features for HuBERT's first-iteration k-means targets, aligned to the model's 50 Hz frames.

13 MFCCs + deltas + delta-deltas (39 dims) from 25 ms windows at a 20 ms hop, no centring: frame t
covers samples [320 t, 320 t + 400), exactly the receptive field of HuBERT frame t, so there are as
many MFCC frames as backbone frames (HuBERT's recipe computes 100 Hz features and subsamples them).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft
import torch
from transformers.audio_utils import mel_filter_bank

from daisy.upstream.geometry import HOP, SAMPLE_RATE

WINDOW, N_MELS, N_MFCC = 400, 40, 13  # one MFCC frame per model frame (HOP)


@functools.cache
def _matrices() -> tuple[torch.Tensor, torch.Tensor]:
    mel = mel_filter_bank(
        num_frequency_bins=WINDOW // 2 + 1,
        num_mel_filters=N_MELS,
        min_frequency=20.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        mel_scale="htk",
    )
    dct = scipy.fft.dct(np.eye(N_MELS), type=2, norm="ortho", axis=0)[:N_MFCC]
    return torch.from_numpy(mel).float(), torch.from_numpy(dct).float()


def deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over time of x (T, F), edges replicated (as Kaldi and HTK)."""
    padded = torch.cat([x[:1].expand(width, -1), x, x[-1:].expand(width, -1)])
    n = x.shape[0]
    num = sum(k * (padded[width + k : width + k + n] - padded[width - k : width - k + n]) for k in range(1, width + 1))
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def mfcc(wav: torch.Tensor) -> torch.Tensor:
    """One utterance (N,) at 16 kHz -> (floor((N - 400) / 320) + 1, 39) MFCC + deltas + delta-deltas."""
    mel, dct = _matrices()
    spec = (
        torch.stft(
            wav.float(),
            n_fft=WINDOW,
            hop_length=HOP,
            window=torch.hann_window(WINDOW),
            center=False,
            return_complex=True,
        )
        .abs()
        .pow(2)
    )  # (F, T)
    ceps = (dct @ torch.log(mel.T @ spec + 1e-6)).T  # (T, 13)
    d1 = deltas(ceps)
    return torch.cat([ceps, d1, deltas(d1)], dim=1)
