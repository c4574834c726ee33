"""MiniSUPERB task data: what each probe hears and what it must predict.

Data is keyed by input set, then split: input set -> 'train'/'test' -> TaskData, with a mapping
task -> input set (tasks sharing an input set share its extracted features).

Synthetic corpus (`synthetic_tasks`, input sets in `SYNTHETIC_SOURCES`):
- asr / sid: clean utterances with their text and speaker (closed-set speaker id, as VoxCeleb1's
  identification task);
- se: each utterance mixed with white, pink or babble noise at an SNR drawn from 0..15 dB, clean
  target (as VoiceBank-DEMAND);
- ss: two utterances of different speakers, each scaled to unit power, the second at -2.5..+2.5 dB,
  summed over the shorter length (as Libri2Mix).
Every draw comes from an RNG seeded by (seed, split, index), so the data is the same on every run.

Real corpora (`corpus_tasks`, one input set per corpus, layouts as in `daisy.data.readers`):
- asr: LibriSpeech, train-* subsets for training and test-* for testing, transcripts as written;
- sid: VoxCeleb1's identification split (1 train, 3 test); speaker ids are those of the training
  selection and test utterances of other speakers are dropped (closed set);
- se: VoiceBank-DEMAND, noisy input and clean target;
- ss: Libri2Mix wav16k/min, mix_clean input and the stacked (s1, s2) target.
Each split is capped by a selection drawn from an RNG seeded by (seed, task, split), kept in corpus
order, so it spreads over speakers and is the same on every run. Audio goes through `daisy.audio.load`
(any rate, resampled to 16 kHz mono); paired signals differing by up to 10 ms are trimmed to the shorter.
Budgets calibrate on LibriSpeech's dev-* subsets when asr is given, else on the first task's training inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daisy import audio
from daisy.data import readers
from daisy.data.noise import NOISE_TYPES, make_noise, mix_at_snr

TASKS = ("asr", "sid", "se", "ss")
SYNTHETIC_SOURCES = {"asr": "clean", "sid": "clean", "se": "noisy", "ss": "mix"}  # task -> input set
CORPORA = {"asr": "librispeech", "sid": "voxceleb1", "se": "voicebank", "ss": "libri2mix"}
# paired signals (noisy/clean, mixture/sources) may differ by a few samples after resampling; more is a mismatch
MAX_LENGTH_MISMATCH = 160  # samples (10 ms at 16 kHz)


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


def synthetic_tasks(
    train, test, train_wavs, test_wavs, seed: int = 0, tasks: tuple[str, ...] = TASKS
) -> dict[str, dict[str, TaskData]]:
    """The four tasks' data from corpus utterances (`Utterance` lists with their loaded audio). Speaker id
    is closed-set: with `sid` among `tasks`, every test speaker must occur in `train`."""
    speaker_ids = {s: i for i, s in enumerate(sorted({u.speaker for u in train}))}
    unknown = {u.speaker for u in test} - set(speaker_ids)
    if unknown and "sid" in tasks:
        raise ValueError(
            f"speaker id is closed-set: test speakers {sorted(unknown)[:3]} never occur in the {len(train)} "
            "training utterances (raise --train)"
        )
    speaker_ids.update({s: -1 for s in unknown})  # unused without sid
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


# --- real corpora ---------------------------------------------------------------------------------


@dataclass
class CorpusTasks:
    """Task data from real corpora: input set -> split -> TaskData, the input set each task reads
    (for `minisuperb.run(source=...)`) and dev audio to calibrate entropy budgets on."""

    data: dict[str, dict[str, TaskData]]
    source: dict[str, str]
    dev: list[np.ndarray]


def parse_corpus_paths(spec: str) -> dict[str, Path]:
    """`asr=PATH,sid=PATH,...` -> task -> path; keys are task names or corpus names (`CORPORA`)."""
    by_corpus = {corpus: task for task, corpus in CORPORA.items()}
    expected = f"expected KEY=PATH with KEY among {', '.join(TASKS)} or {', '.join(CORPORA.values())}"
    paths: dict[str, Path] = {}
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        key, sep, path = (part.strip() for part in entry.partition("="))
        task = key if key in TASKS else by_corpus.get(key)
        if not sep or not path or task is None:
            raise ValueError(f"--data: {entry!r} is not 'synthetic' or a corpus ({expected})")
        if task in paths:
            raise ValueError(f"--data: {task} ({CORPORA[task]}) is given twice")
        paths[task] = Path(path)
    if not paths:
        raise ValueError(f"--data: no corpus given ({expected})")
    return paths


def corpus_tasks(
    paths: dict[str, str | Path], train: int, test: int, seed: int = 0, dev: int = 100, min_samples: int = 400
) -> CorpusTasks:
    """The tasks in `paths` (task -> corpus folder) from real corpora, at most `train`/`test` utterances
    per task. Dev audio: up to `dev` utterances of LibriSpeech's dev-* subsets when asr is given and has
    them, else a sample of the first task's training inputs. Layout and audio errors name the path."""
    unknown = sorted(set(paths) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: expected among {', '.join(TASKS)}")
    if not paths:
        raise ValueError("no corpus given: expected at least one of " + ", ".join(TASKS))
    builders = {"asr": _librispeech_task, "sid": _voxceleb1_task, "se": _voicebank_task, "ss": _libri2mix_task}
    caps = {"train": train, "test": test, "dev": dev}
    data, source = {}, {}
    for task in (t for t in TASKS if t in paths):
        pick = _picker(caps, [seed, TASKS.index(task)])
        data[CORPORA[task]] = builders[task](Path(paths[task]).expanduser(), pick, _loader(min_samples))
        source[task] = CORPORA[task]
    dev_set = data.get(CORPORA["asr"], {}).pop("dev", None)
    if dev_set is not None and dev_set.inputs:
        dev_wavs = dev_set.inputs
    else:
        first = data[source[next(t for t in TASKS if t in paths)]]["train"].inputs
        dev_wavs = _select(first, dev, [seed, len(TASKS), _split_id("dev")])
    return CorpusTasks(data, source, dev_wavs)


def _select(items: list, count: int, seed: list[int]) -> list:
    """At most `count` items drawn without replacement, kept in their original (sorted) order."""
    if count >= len(items):
        return list(items)
    idx = np.sort(np.random.default_rng(seed).choice(len(items), size=max(count, 0), replace=False))
    return [items[int(i)] for i in idx]


def _picker(caps: dict[str, int], seed: list[int]) -> Callable[[list, str], list]:
    """Selection per split, capped by `caps[split]`, each split with its own RNG stream."""
    return lambda items, split: _select(items, caps[split], [*seed, _split_id(split)])


def _loader(min_samples: int) -> Callable[[Path], np.ndarray]:
    return lambda path: audio.load(path, min_samples=min_samples)


def _nonempty(items: list, root: Path, what: str) -> list:
    if not items:
        raise ValueError(f"{root}: no {what}")
    return items


def _aligned(signals: list[np.ndarray], paths: list[Path]) -> list[np.ndarray]:
    """Time-aligned signals trimmed to the shortest; a difference above MAX_LENGTH_MISMATCH is an error."""
    lengths = [len(s) for s in signals]
    if max(lengths) - min(lengths) > MAX_LENGTH_MISMATCH:
        listed = ", ".join(f"{p} ({n} samples)" for p, n in zip(paths, lengths))
        raise ValueError(f"{listed}: lengths differ by more than {MAX_LENGTH_MISMATCH} samples at 16 kHz")
    return [s[: min(lengths)] for s in signals]


def _librispeech_task(root: Path, pick, load) -> dict[str, TaskData]:
    utts = readers.librispeech(root)
    out = {}
    for split in ("train", "test", "dev"):  # dev only for budget calibration, and optional
        found = [u for u in utts if u.split == split]
        if split != "dev":
            _nonempty(found, root, f"LibriSpeech {split}-* utterances (asr needs train-* and test-* subsets)")
        chosen = pick(found, split)
        out[split] = TaskData([load(u.path) for u in chosen], texts=[u.text for u in chosen])
    return out


def _voxceleb1_task(root: Path, pick, load) -> dict[str, TaskData]:
    utts = readers.voxceleb1(root)
    train = pick(_nonempty([u for u in utts if u.split == "train"], root, "VoxCeleb1 training utterances"), "train")
    speaker_ids = {s: i for i, s in enumerate(sorted({u.speaker for u in train}))}
    test_all = _nonempty(
        [u for u in utts if u.split == "test"], root, "VoxCeleb1 test utterances (iden_split.txt lines '3 <wav>')"
    )
    # closed-set identification: a test speaker must have been seen in training
    test = pick([u for u in test_all if u.speaker in speaker_ids], "test")
    if not test:
        raise ValueError(
            f"{root}: none of the {len(test_all)} test utterances is by one of the {len(speaker_ids)} speakers "
            "in the training selection (speaker id is closed-set: raise --train or check iden_split.txt)"
        )

    def task(chosen):
        return TaskData([load(u.path) for u in chosen], speakers=[speaker_ids[u.speaker] for u in chosen])

    return {"train": task(train), "test": task(test)}


def _voicebank_task(root: Path, pick, load) -> dict[str, TaskData]:
    pairs = readers.voicebank_demand_pairs(root)
    out = {}
    for split in ("train", "test"):
        found = _nonempty([p for p in pairs if p[0].split == split], root, f"VoiceBank-DEMAND {split} pairs")
        chosen = pick(found, split)
        data = TaskData([])
        for utt, clean in chosen:
            noisy, target = _aligned([load(utt.path), load(clean)], [utt.path, clean])
            data.inputs.append(noisy)
            data.targets.append(target)
        out[split] = data
    return out


def _libri2mix_task(root: Path, pick, load) -> dict[str, TaskData]:
    triples = readers.libri2mix_triples(root)  # wav16k/min, mix_clean
    out = {}
    for split in ("train", "test"):
        found = _nonempty([t for t in triples if t[0].split == split], root, f"Libri2Mix {split} mixtures")
        chosen = pick(found, split)
        data = TaskData([])
        for utt, s1, s2 in chosen:
            mix, *sources = _aligned([load(p) for p in (utt.path, s1, s2)], [utt.path, s1, s2])
            data.inputs.append(mix)
            data.targets.append(np.stack(sources).astype(np.float32))
        out[split] = data
    return out
