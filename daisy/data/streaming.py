"""A corpus read from its files as it is used, instead of held in memory.

What a training loop reads audio through is a `Corpus`: len() and [i] -> float32 16 kHz waveform. A list
of arrays is one (all decoded up front); `AudioFiles` is one over files, decoding a file on each access
(soundfile, through `daisy.audio.load`), so only the audio in use is in memory. Reading it in order
(`iter`, `load_all`) decodes in `workers` DataLoader worker processes where asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch.utils.data

from daisy import audio
from daisy.run_state import audio_identity


class Corpus(Protocol):
    """Waveforms by index: a list of arrays, or `AudioFiles`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def check_workers(workers: int) -> int:
    """`workers` (DataLoader worker processes; 0 decodes in the calling process), or ValueError."""
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a count of processes, 0 or more; got {workers!r}")
    return workers


def _as_is(item):
    return item  # no collation: an array comes back as the array it is


class AudioFiles(torch.utils.data.Dataset):
    """The audio of `items` (paths, or anything with a `.path`: `Utterance`s), decoded on each access.

    [i] decodes file i; [a:b] is the AudioFiles of those files; iterating decodes them in order, in `workers`
    worker processes where it is more than 0. Each file is read as `daisy.audio.load(path, min_samples=...)`."""

    def __init__(self, items: Sequence, min_samples: int = 400, workers: int = 0):
        self.paths = [Path(getattr(item, "path", item)) for item in items]
        self.min_samples, self.workers = min_samples, check_workers(workers)
        self._identity: dict | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return AudioFiles(self.paths[index], self.min_samples, self.workers)
        return audio.load(self.paths[index], min_samples=self.min_samples)

    def __iter__(self):
        if self.workers == 0:
            yield from (self[i] for i in range(len(self)))
            return
        yield from torch.utils.data.DataLoader(self, batch_size=None, num_workers=self.workers, collate_fn=_as_is)

    def identity(self) -> dict:
        """`run_state.audio_identity` of the decoded audio (the same as of the list `load_all` gives), read once
        and then remembered: a run checks it more than once."""
        if self._identity is None:
            self._identity = audio_identity(self)
        return self._identity


def identity(corpus: Corpus) -> dict:
    """`run_state.audio_identity` of any corpus; an `AudioFiles` reads its files for it only once."""
    return corpus.identity() if isinstance(corpus, AudioFiles) else audio_identity(corpus)
