"""Padded batches of waveforms, grouped by length so padding stays small."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def batches(
    wavs: list[np.ndarray], batch_size: int = 8, min_samples: int = 0
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(indices, padded (B, T), lengths) over `wavs`, grouped by length so padding stays small.

    With `min_samples` (the model's `backbone.min_samples`), arrays too short for one frame are named by
    their index in `wavs` before any batch is made."""
    short = [i for i, w in enumerate(wavs) if len(w) < min_samples]
    if short:
        named = ", ".join(f"wavs[{i}] ({len(wavs[i])} samples)" for i in short[:10])
        raise ValueError(f"too short for one frame ({min_samples} samples at 16 kHz): {named}")
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lengths = torch.tensor([len(wavs[i]) for i in idx])
        padded = torch.zeros(len(idx), int(lengths.max()))
        for row, i in enumerate(idx):
            padded[row, : len(wavs[i])] = torch.from_numpy(np.asarray(wavs[i], dtype=np.float32))
        yield idx, padded, lengths
