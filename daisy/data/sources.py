"""Where audio comes from: the synthetic corpus, a corpus folder with a manifest, or a folder of wavs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from daisy.data import hf
from daisy.data.corpus import CorpusConfig, Utterance, build_corpus, load_manifest
from daisy.data.streaming import AudioFiles

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")


def default_cache() -> Path:
    return Path(os.environ.get("DAISY_CACHE", Path.home() / ".cache" / "daisy"))


def utterances(source: str | Path, split: str | None = None, quick: bool = False) -> list[Utterance]:
    """`synthetic` (built or reused under $DAISY_CACHE), `hf:PATH` (a dataset saved with HF `datasets`,
    see `daisy.data.hf`), a folder with manifest.jsonl, or a folder searched recursively for audio files
    (all counted as split `train`)."""
    if str(source) == "synthetic":
        source = build_corpus(default_cache() / "corpus", CorpusConfig.quick() if quick else CorpusConfig())
    elif str(source).startswith(hf.PREFIX):
        source = hf.corpus_folder(str(source)[len(hf.PREFIX) :], default_cache() / "hf")
    folder = Path(source)
    if (folder / "manifest.jsonl").is_file():
        return load_manifest(folder, split)
    if not folder.is_dir():
        problem = "a file" if folder.exists() else "no such folder"
        raise FileNotFoundError(f"{folder}: {problem} (expected 'synthetic', a corpus folder or a folder of audio)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return [Utterance(p.stem, p, "", "", "train", 0) for p in files]


def load_all(utts: list[Utterance], min_samples: int = 400, workers: int = 0) -> list[np.ndarray]:
    """Every utterance's audio in memory, in order, decoded in `workers` DataLoader worker processes (0: here).
    `daisy.data.streaming.AudioFiles` reads the same audio from the files as it is used instead."""
    return list(AudioFiles(utts, min_samples, workers))
