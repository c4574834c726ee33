"""Training batches of random crops, aligned to the 320-sample frame hop, with optional noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from daisy.data.batching import padded
from daisy.data.noise import NOISE_TYPES, make_noise, mix_at_snr
from daisy.upstream.geometry import HOP, SAMPLE_RATE


@dataclass
class Crops:
    """inputs (B, T) what the model hears, clean (B, T) the same crops without noise, lengths (B,)
    samples, start_frames: where each crop begins in its utterance (frames), picks: utterance indices."""

    inputs: torch.Tensor
    clean: torch.Tensor
    lengths: torch.Tensor
    start_frames: list[int]
    picks: list[int]


def random_crops(
    rng: np.random.Generator,
    wavs: list[np.ndarray],
    batch_size: int,
    crop_samples: int,
    noise_prob: float = 0.0,
    snr_range: tuple[float, float] = (-5.0, 20.0),
    others=(),
) -> Crops:
    """`batch_size` utterances, each cut to at most `crop_samples` from a random frame; with probability
    `noise_prob` white, pink or babble noise (from `others`) is mixed in at an SNR drawn from `snr_range`."""
    picks = [int(i) for i in rng.choice(len(wavs), size=batch_size, replace=len(wavs) < batch_size)]
    clean, noisy, starts = [], [], []
    for i in picks:
        wav = wavs[i]
        n = min(len(wav), crop_samples)
        start = int(rng.integers(0, (len(wav) - n) // HOP + 1))
        piece = wav[start * HOP : start * HOP + n]
        clean.append(piece)
        starts.append(start)
        if noise_prob and rng.random() < noise_prob:
            kind = NOISE_TYPES[int(rng.integers(len(NOISE_TYPES)))]
            piece = mix_at_snr(piece, make_noise(kind, len(piece), rng, others), float(rng.uniform(*snr_range)))
        noisy.append(piece)
    rows = list(range(len(picks)))
    (inputs, lengths), (clean_batch, _) = padded(noisy, rows), padded(clean, rows)
    return Crops(inputs, clean_batch, lengths, starts, picks)


def training_crops(rng: np.random.Generator, wavs, config, others=()) -> Crops:
    """`random_crops` as a training config asks for them: its `batch_size`, `crop_seconds`, `noise_prob` and
    `snr_range` (pretraining and head training draw each step's batch so)."""
    crop_samples = int(config.crop_seconds * SAMPLE_RATE)
    return random_crops(rng, wavs, config.batch_size, crop_samples, config.noise_prob, config.snr_range, others)
