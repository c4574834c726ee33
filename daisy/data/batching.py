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
    for idx in length_groups([len(w) for w in wavs], batch_size):
        yield idx, *padded(wavs, idx)


def length_groups(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The indices `batches` puts together: sorted by length (ties by index), `batch_size` at a time."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padded(wavs: list[np.ndarray], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """wavs[idx] zero-padded to (B, T) float32, and their lengths (B,)."""
    lengths = torch.tensor([len(wavs[i]) for i in idx])
    out = torch.zeros(len(idx), int(lengths.max()))
    for row, i in enumerate(idx):
        out[row, : len(wavs[i])] = torch.from_numpy(np.asarray(wavs[i], dtype=np.float32))
    return out, lengths
