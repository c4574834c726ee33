"""Audio I/O: every waveform enters the project as mono float32 at 16 kHz, or fails with a clear error.

A header is checked before anything is allocated: a hostile or corrupt one (a FLAC claiming 2^36 frames,
a WAV declaring 1 Hz) is refused in one line instead of asking for gigabytes.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from daisy.io import atomic_path, shown
from daisy.upstream.geometry import SAMPLE_RATE

MIN_RATE, MAX_RATE = 1_000, 384_000  # Hz: telephone-band recordings up to studio rates
MAX_SECONDS = 3600.0  # an hour: far beyond an utterance, and a model runs a file as one sequence
MAX_DECODED_BYTES = 2 << 30  # every channel's samples as float32, decoded at once
SILENT = 2**-15  # a peak below one 16-bit step (-90 dBFS) is silence: nothing a recording of speech holds
# the fewest bytes a sample takes in formats that store samples whole; others (FLAC, Vorbis, ADPCM)
# compress, and only the duration cap bounds them
_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4}
_SAMPLE_BYTES |= {"FLOAT": 4, "DOUBLE": 8}
_COMPRESSED = {"FLAC", "OGG", "MP3"}  # containers whose PCM_16 etc. names the decoded width, not the stored one
# libsndfile's log for a data chunk longer than the file: "data : 227200 (should be 76800)"
_SHORT_CHUNK = re.compile(r"^\s*(?:data|Data Size|SSND)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_STREAMED = 0x7FFF0000  # sizes this large are placeholders of writers that did not know the length


class AudioError(ValueError):
    """A file that cannot be used as speech input; the message names the file and the problem."""


class AudioWarning(UserWarning):
    """A file that was read but deserves a look (truncated, silent); the message names the file."""


def load(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, min_samples: int = 0) -> np.ndarray:
    """Read `path` as mono float32 at `sample_rate` (channels averaged, resampled with soxr).

    Raises AudioError for a missing, empty, corrupt or non-audio file; a header outside the limits
    (rate outside MIN_RATE..MAX_RATE, longer than MAX_SECONDS, more than MAX_DECODED_BYTES decoded, or
    more samples than an uncompressed file's bytes can hold); non-finite samples; or fewer than
    `min_samples` samples after resampling.
    Warns (AudioWarning) and returns what is there for a file shorter than its header declares, and for
    a silent one (peak below SILENT, one 16-bit step: digital silence, or channels that cancel out when
    mixed to mono): the model runs on it without error, but its exit layer then says nothing about speech.
    """
    path = Path(path)
    name = shown(path)
    if not path.exists():
        raise AudioError(f"{name}: no such file")
    if path.is_dir():
        raise AudioError(f"{name}: is a directory, not an audio file")
    size = path.stat().st_size
    if size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:  # bytes: a file name that is not UTF-8 reaches libsndfile as it is on disk
        with sf.SoundFile(os.fsencode(path)) as f:
            _check_header(name, f, size)
            rate, declared, log = f.samplerate, f.frames, f.extra_info
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:  # libsndfile's own words, without the path
        raise AudioError(f"{name}: not a readable audio file ({getattr(err, 'error_string', err)})") from err
    except MemoryError:
        raise AudioError(f"{name}: too large to decode in this machine's memory") from None
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples")
    if (claimed := _declared_seconds(log, declared, data.shape[0], rate)) is not None:
        warnings.warn(
            f"{name}: truncated: its header declares {claimed:.2f} s, the file holds "
            f"{data.shape[0] / rate:.2f} s (read what is there)",
            AudioWarning,
            stacklevel=2,
        )
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    if np.abs(wav).max() < SILENT:
        if not data.any():
            why = "every sample is 0"
        elif np.abs(data).max() >= SILENT:
            why = "its channels cancel out when mixed to mono"
        else:
            why = "no sample reaches one 16-bit step, -90 dBFS"
        warnings.warn(f"{name}: silent ({why}): its exit layer says nothing about speech", AudioWarning, stacklevel=2)
    if rate != sample_rate:
        wav = soxr.resample(wav, rate, sample_rate, quality="HQ").astype(np.float32)
    if len(wav) < min_samples:
        ms = 1000 / sample_rate
        raise AudioError(
            f"{name}: too short ({len(wav)} samples at {sample_rate} Hz = {len(wav) * ms:.0f} ms; "
            f"at least {min_samples} = {min_samples * ms:.0f} ms needed)"
        )
    return np.ascontiguousarray(wav, dtype=np.float32)


def _check_header(name: str, f: sf.SoundFile, size: int) -> None:
    """Refuse a header whose rate or length is implausible, before its samples are allocated."""
    rate, frames, channels = f.samplerate, f.frames, f.channels
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz outside {MIN_RATE}..{MAX_RATE} Hz (a corrupt header?)")
    if frames / rate > MAX_SECONDS:
        raise AudioError(
            f"{name}: header declares {frames / rate:.0f} s of audio in {size} bytes; "
            f"files up to {MAX_SECONDS:.0f} s are read (a corrupt header, or split the file)"
        )
    if frames * channels * 4 > MAX_DECODED_BYTES:
        raise AudioError(
            f"{name}: {frames} frames x {channels} channels would take {frames * channels * 4 / 2**30:.1f} GiB "
            f"decoded; the limit is {MAX_DECODED_BYTES / 2**30:.0f} GiB (split the file or mix it down)"
        )
    per_sample = None if f.format in _COMPRESSED else _SAMPLE_BYTES.get(f.subtype)
    if per_sample is not None and frames * channels * per_sample > size:
        raise AudioError(
            f"{name}: header declares {frames * channels} samples of {f.subtype}, more than its {size} bytes "
            "can hold (a corrupt header)"
        )


def _declared_seconds(log: str, declared: int, got: int, rate: int) -> float | None:
    """The duration the header declares when the file holds less audio (a cut-off download or copy)."""
    if m := _SHORT_CHUNK.search(log):  # libsndfile shortens uncompressed data to what is there
        claimed, present = int(m.group(1)), int(m.group(2))
        if 0 < present < claimed < _STREAMED:
            return got / rate * claimed / present
    if got < 0.99 * declared:  # compressed: fewer frames decoded than the header announced
        return declared / rate
    return None


def save(path: str | os.PathLike, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a 16-bit PCM wav atomically."""
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, np.asarray(wav, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")
