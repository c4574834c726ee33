"""Task data for the registered tasks: from the synthetic corpus, or from real corpora at local paths.

Synthetic (`synthetic_tasks`): each task builds its input set from the corpus' utterances; every draw
comes from an RNG seeded by (seed, split, index), so the data is the same on every run.

Real (`corpus_tasks`, one input set per corpus, layouts as in `daisy.data.readers`): each split is
capped by a selection drawn from an RNG seeded by (seed, the task's registry index, split), kept in
corpus order, so it spreads over speakers and is the same on every run. Audio goes through
`daisy.audio.load` (any rate, resampled to 16 kHz mono). Budgets calibrate on the first task's 'dev'
split where its reader gives one (LibriSpeech's dev-*), else on a sample of the first task's training inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daisy.downstream.tasks.base import SPLIT_IDS, Synthetic, TaskData, get, loader, names, registered, select

# The RNG stream of the dev sample drawn from training inputs: after the four built-in tasks' streams, as
# it always was, so selections stay those of earlier runs.
DEV_STREAM = 4


def synthetic_tasks(
    train, test, train_wavs, test_wavs, seed: int = 0, tasks: Iterable[str] | None = None
) -> dict[str, dict[str, TaskData]]:
    """Input set -> split -> TaskData for `tasks` (default: every registered task) from corpus utterances
    (`Utterance` lists with their loaded audio). Only the input sets these tasks read are built."""
    corpus = Synthetic(train, test, train_wavs, test_wavs, seed)
    chosen = [get(t) for t in (names() if tasks is None else tasks)]
    for task in chosen:
        task.check_synthetic(corpus)
    data: dict[str, dict[str, TaskData]] = {}
    for task in chosen:
        if task.synthetic_source not in data:
            data[task.synthetic_source] = task.synthetic(corpus)
    return data


def synthetic_sources(tasks: Iterable[str] | None = None) -> dict[str, str]:
    """Task -> the synthetic input set it reads."""
    return {t: get(t).synthetic_source for t in (names() if tasks is None else tasks)}


@dataclass
class CorpusTasks:
    """Task data from real corpora: input set -> split -> TaskData, the input set each task reads
    (for `minisuperb.run(source=...)`) and dev audio to calibrate entropy budgets on."""

    data: dict[str, dict[str, TaskData]]
    source: dict[str, str]
    dev: list[np.ndarray]


def parse_corpus_paths(spec: str) -> dict[str, Path]:
    """`asr=PATH,sid=PATH,...` -> task -> path; keys are task names or their corpus names."""
    by_corpus = {task.corpus: task.name for task in registered()}
    expected = f"expected KEY=PATH with KEY among {', '.join(names())} or {', '.join(by_corpus)}"
    paths: dict[str, Path] = {}
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        key, sep, path = (part.strip() for part in entry.partition("="))
        task = key if key in names() else by_corpus.get(key)
        if not sep or not path or task is None:
            raise ValueError(f"--data: {entry!r} is not 'synthetic' or a corpus ({expected})")
        if task in paths:
            raise ValueError(f"--data: {task} ({get(task).corpus}) is given twice")
        paths[task] = Path(path)
    if not paths:
        raise ValueError(f"--data: no corpus given ({expected})")
    return paths


def corpus_tasks(
    paths: dict[str, str | Path], train: int, test: int, seed: int = 0, dev: int = 100, min_samples: int = 400
) -> CorpusTasks:
    """The tasks in `paths` (task -> corpus folder) from real corpora, at most `train`/`test` utterances
    per task. Dev audio: up to `dev` utterances of the first task's 'dev' split where it has one (asr:
    LibriSpeech's dev-*), else a sample of the first task's training inputs. Layout and audio errors name
    the path."""
    unknown = sorted(set(paths) - set(names()))
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: expected among {', '.join(names())}")
    if not paths:
        raise ValueError("no corpus given: expected at least one of " + ", ".join(names()))
    caps = {"train": train, "test": test, "dev": dev}
    data, source, dev_sets = {}, {}, []
    for index, task in enumerate(registered()):
        if task.name not in paths:
            continue
        sets = task.read_corpus(Path(paths[task.name]).expanduser(), _picker(caps, [seed, index]), loader(min_samples))
        dev_sets.append(sets.pop("dev", None))
        data[task.corpus] = sets
        source[task.name] = task.corpus
    given = [d.inputs for d in dev_sets if d is not None and d.inputs]
    if given:
        dev_wavs = given[0]
    else:
        first = data[next(iter(source.values()))]["train"].inputs
        dev_wavs = select(first, dev, [seed, DEV_STREAM, SPLIT_IDS["dev"]])
    return CorpusTasks(data, source, dev_wavs)


def _picker(caps: dict[str, int], seed: list[int]):
    """Selection per split, capped by `caps[split]`, each split with its own RNG stream."""
    return lambda items, split: select(items, caps[split], [*seed, SPLIT_IDS[split]])
