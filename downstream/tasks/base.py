"""What a MiniSUPERB probe task is, and the registry that finds tasks by name.

A task is one `Task` subclass in one module, decorated with `@register`: it carries its data (from the
synthetic corpus and from its real corpus' reader), its probe and loss, its metric, its primary score
and its probe steps per size. The runner (`daisy.downstream.minisuperb`) knows no task by name.

Data is keyed by input set, then split: input set -> 'train'/'test' -> TaskData. Tasks that hear the
same audio name the same synthetic input set (asr and sid: 'clean'), so its features are extracted once;
such tasks build that set with one shared function (`clean_speech`), so whichever builds it, it is alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from daisy import audio

SPLIT_IDS = {"train": 0, "dev": 1, "test": 2}  # an RNG stream per split
# paired signals (noisy/clean, mixture/sources) may differ by a few samples after resampling; more is a mismatch
MAX_LENGTH_MISMATCH = 160  # samples (10 ms at 16 kHz)


@dataclass
class TaskData:
    """Inputs the upstream hears, plus what the probe needs: texts, speaker ids or target signals."""

    inputs: list[np.ndarray]
    texts: list[str] = field(default_factory=list)
    speakers: list[int] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)  # se: (n,) clean; ss: (2, n) sources


@dataclass(frozen=True)
class ProbeSize:
    """Probe width and depth (BLSTM units and layers) and its optimiser; the steps are each task's."""

    hidden: int
    layers: int
    batch_size: int = 8
    lr: float = 1e-3


SIZES = {
    "quick": ProbeSize(32, 1),
    "cpu": ProbeSize(128, 1),
    "paper": ProbeSize(256, 3, lr=1e-4),  # MiniSUPERB's probes (arXiv 2305.19011)
}


@dataclass
class Synthetic:
    """The synthetic corpus' utterances (`Utterance` lists) with their loaded audio, as task builders read it."""

    train: list
    test: list
    train_wavs: list[np.ndarray]
    test_wavs: list[np.ndarray]
    seed: int = 0

    def speaker_ids(self) -> dict[str, int]:
        """Training speakers numbered in sorted order; test-only speakers get -1."""
        ids = {s: i for i, s in enumerate(sorted({u.speaker for u in self.train}))}
        return {**{u.speaker: -1 for u in self.test}, **ids}


# A batch the probe reads: features (B, T, D), frame counts (B,), and the utterances' indices in TaskData.
Batch = tuple[torch.Tensor, torch.Tensor, list[int]]
Picker = Callable[[list, str], list]  # (items in corpus order, split) -> the seeded selection for that split
Loader = Callable[[Path], np.ndarray]  # path -> mono float32 at 16 kHz


class Task:
    """One probe task. Subclasses set the class attributes and implement the methods; `@register` adds
    an instance to the registry."""

    name: ClassVar[str]  # as in --tasks and results
    primary: ClassVar[tuple[str, bool]]  # the metric the score reads, and whether higher is better
    steps: ClassVar[dict[str, int]]  # probe training steps per size (SIZES' names)
    synthetic_source: ClassVar[str]  # the synthetic input set it reads (tasks sharing one share features)
    corpus: ClassVar[str]  # the real corpus (also its input set, and a key of --data)
    capped: ClassVar[bool] = False  # evaluation is per signal and slow: at most max_eval_signals test items

    def check_synthetic(self, corpus: Synthetic) -> None:
        """Raise ValueError where the synthetic selection cannot serve this task."""

    def synthetic(self, corpus: Synthetic) -> dict[str, TaskData]:
        """'train' and 'test' data of the input set `synthetic_source` from the synthetic corpus."""
        raise NotImplementedError

    def read_corpus(self, root: Path, pick: Picker, load: Loader) -> dict[str, TaskData]:
        """'train' and 'test' (and optionally 'dev', audio to calibrate budgets on) from the corpus at `root`."""
        raise NotImplementedError

    def head(self, dim: int, size: ProbeSize, train: TaskData) -> nn.Module:
        """The probe on (B, T, dim) features, sized for the labels in `train`."""
        raise NotImplementedError

    def loss(self, head: nn.Module, features: torch.Tensor, frames: torch.Tensor, idx: list[int], data: TaskData):
        """Scalar training loss of the batch `idx` of `data`."""
        raise NotImplementedError

    def evaluate(self, head: nn.Module, batches: Iterable[Batch], data: TaskData) -> dict:
        """Metrics over the test batches; the primary metric among them."""
        raise NotImplementedError


_REGISTRY: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task to the registry (in import order, which fixes its RNG stream index)."""
    task = cls()
    problems = []
    if task.name in _REGISTRY:
        problems.append(f"the name {task.name!r} is taken")
    if set(task.steps) != set(SIZES):
        problems.append(f"steps must give {', '.join(SIZES)}, got {', '.join(task.steps)}")
    if any(other.corpus == task.corpus for other in _REGISTRY.values()):
        problems.append(f"corpus {task.corpus!r} is another task's")
    if problems:
        raise ValueError(f"task {cls.__name__}: {'; '.join(problems)}")
    _REGISTRY[task.name] = task
    return cls


def names() -> tuple[str, ...]:
    """Registered task names, in registration order."""
    return tuple(_REGISTRY)


def registered() -> tuple[Task, ...]:
    return tuple(_REGISTRY.values())


def get(task: str | Task) -> Task:
    """The registered task of this name (a Task passes through); ValueError naming the known ones."""
    if isinstance(task, Task):
        return task
    if task not in _REGISTRY:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[task]


def check_names(tasks: Iterable[str], what: str = "tasks") -> tuple[str, ...]:
    """`tasks` as a tuple; ValueError (starting with `what`) where it is empty or names an unknown task."""
    tasks = tuple(tasks)
    if not tasks or not set(tasks) <= set(_REGISTRY):
        raise ValueError(f"{what} must be among {', '.join(_REGISTRY)}, got {','.join(tasks)!r}")
    return tasks


# --- helpers the tasks share ------------------------------------------------------------------------------------


def clean_speech(corpus: Synthetic) -> dict[str, TaskData]:
    """Clean utterances with their text and speaker id (the input set of asr and sid)."""
    ids = corpus.speaker_ids()
    return {
        split: TaskData(list(wavs), [u.text for u in utts], [ids[u.speaker] for u in utts])
        for split, utts, wavs in (("train", corpus.train, corpus.train_wavs), ("test", corpus.test, corpus.test_wavs))
    }


def pad_signals(signals: list[np.ndarray], idx: list[int]) -> torch.Tensor:
    """The signals `idx`, zero-padded along the last axis and stacked: (B, ..., n)."""
    width = max(s.shape[-1] for s in (signals[i] for i in idx))
    out = []
    for i in idx:
        s = torch.from_numpy(np.asarray(signals[i], dtype=np.float32))
        out.append(torch.nn.functional.pad(s, (0, width - s.shape[-1])))
    return torch.stack(out)


def select(items: list, count: int, seed: list[int]) -> list:
    """At most `count` items drawn without replacement, kept in their original (sorted) order."""
    if count >= len(items):
        return list(items)
    idx = np.sort(np.random.default_rng(seed).choice(len(items), size=max(count, 0), replace=False))
    return [items[int(i)] for i in idx]


def nonempty(items: list, root: Path, what: str) -> list:
    if not items:
        raise ValueError(f"{root}: no {what}")
    return items


def aligned(signals: list[np.ndarray], paths: list[Path]) -> list[np.ndarray]:
    """Time-aligned signals trimmed to the shortest; a difference above MAX_LENGTH_MISMATCH is an error."""
    lengths = [len(s) for s in signals]
    if max(lengths) - min(lengths) > MAX_LENGTH_MISMATCH:
        listed = ", ".join(f"{p} ({n} samples)" for p, n in zip(paths, lengths))
        raise ValueError(f"{listed}: lengths differ by more than {MAX_LENGTH_MISMATCH} samples at 16 kHz")
    return [s[: min(lengths)] for s in signals]


def loader(min_samples: int) -> Loader:
    return lambda path: audio.load(path, min_samples=min_samples)
