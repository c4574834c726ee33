"""MiniSUPERB task data on the synthetic corpus: what each probe hears and what it must predict.

- asr / sid: clean utterances with their text and speaker (closed-set speaker id, as VoxCeleb1's
  identification task);
- se: each utterance mixed with white, pink or babble noise at an SNR drawn from 0..15 dB, clean
  target (as VoiceBank-DEMAND);
- ss: two utterances of different speakers, each scaled to unit power, the second at -2.5..+2.5 dB,
  summed over the shorter length (as Libri2Mix).
Every draw comes from an RNG seeded by (seed, split, index), so the data is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from daisy.data.noise import NOISE_TYPES, make_noise, mix_at_snr

TASKS = ("asr", "sid", "se", "ss")


@dataclass
class TaskData:
    """Inputs the upstream hears, plus what the probe needs: texts, speaker ids or target signals."""

    inputs: list[np.ndarray]
    texts: list[str] = field(default_factory=list)
    speakers: list[int] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)  # se: (n,) clean; ss: (2, n) sources


def clean_task(wavs, texts, speakers, speaker_ids: dict[str, int]) -> TaskData:
    return TaskData(list(wavs), list(texts), [speaker_ids[s] for s in speakers])


def enhancement_task(wavs, seed: int, split: str, babble_pool) -> TaskData:
    data = TaskData([])
    for i, wav in enumerate(wavs):
        rng = np.random.default_rng([seed, _split_id(split), i])
        kind = NOISE_TYPES[int(rng.integers(len(NOISE_TYPES)))]
        noisy = mix_at_snr(wav, make_noise(kind, len(wav), rng, babble_pool), float(rng.uniform(0.0, 15.0)))
        data.inputs.append(noisy)
        data.targets.append(np.asarray(wav, dtype=np.float32))
    return data


def separation_task(wavs, speakers, seed: int, split: str, count: int) -> TaskData:
    data = TaskData([])
    for i in range(count):
        rng = np.random.default_rng([seed, _split_id(split), 1000 + i])
        a = int(rng.integers(len(wavs)))
        others = [j for j in range(len(wavs)) if speakers[j] != speakers[a]]
        b = others[int(rng.integers(len(others)))]
        n = min(len(wavs[a]), len(wavs[b]))
        s1 = wavs[a][:n] / np.sqrt(np.mean(wavs[a][:n] ** 2) + 1e-12)
        s2 = wavs[b][:n] / np.sqrt(np.mean(wavs[b][:n] ** 2) + 1e-12) * 10 ** (rng.uniform(-2.5, 2.5) / 20)
        sources = 0.05 * np.stack([s1, s2]).astype(np.float32)
        data.inputs.append(sources.sum(0))
        data.targets.append(sources)
    return data


def _split_id(split: str) -> int:
    return {"train": 0, "dev": 1, "test": 2}[split]


def synthetic_tasks(train, test, train_wavs, test_wavs, seed: int = 0) -> dict[str, dict[str, TaskData]]:
    """The four tasks' data from corpus utterances (`Utterance` lists with their loaded audio)."""
    speaker_ids = {s: i for i, s in enumerate(sorted({u.speaker for u in train}))}
    unknown = {u.speaker for u in test} - set(speaker_ids)
    if unknown:
        raise ValueError(f"speaker id is closed-set: test speakers {sorted(unknown)[:3]} never occur in training")
    babble = train_wavs[:64]
    return {
        "clean": {
            "train": clean_task(train_wavs, [u.text for u in train], [u.speaker for u in train], speaker_ids),
            "test": clean_task(test_wavs, [u.text for u in test], [u.speaker for u in test], speaker_ids),
        },
        "noisy": {
            "train": enhancement_task(train_wavs, seed, "train", babble),
            "test": enhancement_task(test_wavs, seed, "test", babble),
        },
        "mix": {
            "train": separation_task(train_wavs, [u.speaker for u in train], seed, "train", len(train_wavs)),
            "test": separation_task(test_wavs, [u.speaker for u in test], seed, "test", len(test_wavs)),
        },
    }
