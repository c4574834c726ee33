"""What torchaudio >= 2.9 no longer does on a machine without FFmpeg or libsox, done with soundfile and soxr.

torchaudio 2.9 moved `load` onto torchcodec (which needs FFmpeg, and whose PyPI wheel may not match the
installed torch), dropped `info`, and removed `sox_effects`. s3prl's SUPERB downstreams still read their
audio through those. `s3prl_compat` puts these functions in their place only where torchaudio's own
cannot run; `load` and `info` follow torchaudio's former soundfile backend (float32 in [-1, 1],
channels first), and `apply_effects_*` do the few sox effects s3prl's downstreams ask for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

# sox effects done here; any other is refused by name rather than skipped
EFFECTS = ("channels", "rate", "gain", "norm", "pad")


def load(
    uri,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,
    buffer_size: int = 4096,
    backend: str | None = None,
) -> tuple[torch.Tensor, int]:
    """torchaudio.load's signature and result: (float32 (channels, frames), sample rate). Like torchcodec,
    it always returns normalised floats; `normalize`, `format`, `buffer_size` and `backend` are ignored."""
    import soundfile

    data, rate = soundfile.read(uri, frames=num_frames, start=frame_offset, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data)  # (frames, channels)
    return (wav.t().contiguous() if channels_first else wav), rate


@dataclass
class AudioMetaData:
    """The fields of the AudioMetaData torchaudio.info used to return."""

    sample_rate: int
    num_frames: int
    num_channels: int
    bits_per_sample: int
    encoding: str


# as torchaudio's former soundfile backend reported them
_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64}
_BITS |= {"ULAW": 8, "ALAW": 8}
_ENCODING = {"PCM_S8": "PCM_S", "PCM_16": "PCM_S", "PCM_24": "PCM_S", "PCM_32": "PCM_S", "PCM_U8": "PCM_U"}
_ENCODING |= {"FLOAT": "PCM_F", "DOUBLE": "PCM_F", "ULAW": "ULAW", "ALAW": "ALAW", "VORBIS": "VORBIS"}


def info(uri, format: str | None = None, buffer_size: int = 4096, backend: str | None = None) -> AudioMetaData:
    """torchaudio.info as its soundfile backend gave it (bits_per_sample 0 where a format has none)."""
    import soundfile

    meta = soundfile.info(uri)
    encoding = "FLAC" if meta.format == "FLAC" else _ENCODING.get(meta.subtype, "UNKNOWN")
    return AudioMetaData(meta.samplerate, meta.frames, meta.channels, _BITS.get(meta.subtype, 0), encoding)


# -- sox effects ------------------------------------------------------------------------------------------
def apply_effects_tensor(
    tensor: torch.Tensor, sample_rate: int, effects: list[list[str]], channels_first: bool = True
) -> tuple[torch.Tensor, int]:
    """torchaudio.sox_effects.apply_effects_tensor for the effects in EFFECTS, each as sox reads it:
    `channels N` (mix down by averaging, or copy one channel up), `rate R` (soxr's high quality, the
    resampler of sox's own `rate`), `gain DB` / `gain -n [DB]`, `norm [DB]` (peak to DB, default 0),
    `pad BEFORE [AFTER]` (seconds of silence). As sox does, the output is clipped to [-1, 1].
    A ValueError names any other effect."""
    wav = tensor if channels_first else tensor.t()
    wav = wav.to(torch.float32)
    for effect in effects:
        name, *args = [str(part) for part in effect]
        if name == "channels":
            wav = _channels(wav, int(args[0]))
        elif name == "rate":
            target = _sox_rate(args[-1])  # `rate [-q|-h|-v...] RATE`: the quality flags are ignored
            wav, sample_rate = _rate(wav, sample_rate, target), target
        elif name == "gain":
            wav = _peak_to(wav, float(args[1]) if len(args) > 1 else 0.0) if args[:1] == ["-n"] else _gain(wav, args)
        elif name == "norm":
            wav = _peak_to(wav, float(args[0]) if args else 0.0)
        elif name == "pad":
            before, after = (_seconds(a, sample_rate) for a in (args + ["0"])[:2])
            wav = torch.nn.functional.pad(wav, (before, after))
        else:
            raise ValueError(
                f"sox effect {name!r} ({effect}) has no stand-in here: torchaudio >= 2.9 has no sox_effects, "
                f"and daisy's replacement does {', '.join(EFFECTS)}"
            )
    wav = wav.clamp(-1.0, 1.0)
    return (wav if channels_first else wav.t()), sample_rate


def apply_effects_file(
    path, effects: list[list[str]], normalize: bool = True, channels_first: bool = True, format: str | None = None
) -> tuple[torch.Tensor, int]:
    """torchaudio.sox_effects.apply_effects_file: `load` the file, then `apply_effects_tensor`."""
    wav, rate = load(os.fspath(path) if isinstance(path, os.PathLike) else path)
    return apply_effects_tensor(wav, rate, effects, channels_first)


def effect_names() -> list[str]:
    return list(EFFECTS)


def _channels(wav: torch.Tensor, n: int) -> torch.Tensor:
    if n == wav.shape[0]:
        return wav
    if n == 1:
        return wav.mean(0, keepdim=True)
    if wav.shape[0] == 1:
        return wav.expand(n, -1).clone()
    raise ValueError(f"sox effect channels {n}: cannot map {wav.shape[0]} channels to {n} (only to 1, or 1 to n)")


def _sox_rate(value: str) -> int:
    return int(float(value[:-1]) * 1000) if value.endswith("k") else int(float(value))


def _rate(wav: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    if rate == target:
        return wav
    import soxr

    out = soxr.resample(wav.t().numpy(), rate, target, quality="HQ")  # soxr wants (frames, channels)
    return torch.from_numpy(out.reshape(-1, wav.shape[0])).t().contiguous()


def _gain(wav: torch.Tensor, args: list[str]) -> torch.Tensor:
    try:
        db = float(args[0])
    except (IndexError, ValueError):
        raise ValueError(f"sox effect gain {args}: only `gain DB` and `gain -n [DB]` have a stand-in here") from None
    return wav * 10 ** (db / 20)


def _peak_to(wav: torch.Tensor, db: float) -> torch.Tensor:
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    return wav if peak == 0 else wav * (10 ** (db / 20) / peak)


def _seconds(value: str, sample_rate: int) -> int:
    """A sox time: seconds (`0.5`), or samples (`8000s`)."""
    if value.endswith("s"):
        return int(value[:-1])
    return int(math.floor(float(value) * sample_rate + 0.5))
