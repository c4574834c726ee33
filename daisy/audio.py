"""Audio I/O: every waveform enters the project as mono float32 at 16 kHz, or fails with a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from daisy.io import atomic_path

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file that cannot be used as speech input; the message names the file and the problem."""


def load(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, min_samples: int = 0) -> np.ndarray:
    """Read `path` as mono float32 at `sample_rate` (channels averaged, resampled with soxr).

    Raises AudioError for a missing, empty, corrupt or non-audio file, non-finite samples, or fewer
    than `min_samples` samples after resampling.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not a readable audio file ({err})") from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no audio samples")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if rate != sample_rate:
        wav = soxr.resample(wav, rate, sample_rate, quality="HQ").astype(np.float32)
    if len(wav) < min_samples:
        ms = 1000 / sample_rate
        raise AudioError(
            f"{path}: too short ({len(wav)} samples at {sample_rate} Hz = {len(wav) * ms:.0f} ms; "
            f"at least {min_samples} = {min_samples * ms:.0f} ms needed)"
        )
    return np.ascontiguousarray(wav, dtype=np.float32)


def save(path: str | os.PathLike, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a 16-bit PCM wav atomically."""
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, np.asarray(wav, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")
