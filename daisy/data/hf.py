"""Corpora saved with HF `datasets` (`save_to_disk`) as a daisy audio source: `--data hf:PATH`.

The saved dataset is read once into a corpus folder under $DAISY_CACHE/hf: each row's audio file, as
`datasets` stores it (encoded bytes), is written out whole, and a manifest.jsonl lists them; from then
on it is read like any corpus folder. `datasets` decodes nothing (its decoder needs torchcodec and
FFmpeg); `daisy.audio.load` reads the files. Columns: the first `Audio` column; the transcript from
`text`, `sentence`, `transcription` or `normalized_text`; the speaker from `speaker_id`, `speaker` or
`client_id`. Splits: `validation` and `valid` count as `dev`; a plain `Dataset` (no splits) as `train`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from daisy.io import atomic_dir
from daisy.progress import progress

PREFIX = "hf:"
TEXT_COLUMNS = ("text", "sentence", "transcription", "normalized_text")
SPEAKER_COLUMNS = ("speaker_id", "speaker", "client_id")
SPLIT_NAMES = {"validation": "dev", "valid": "dev"}


def corpus_folder(saved: str | Path, cache: Path) -> Path:
    """The corpus folder (manifest.jsonl + audio files) of the dataset saved at `saved`, written under
    `cache` on first use and rewritten when the saved dataset changes."""
    saved = Path(saved)
    if not saved.is_dir():
        raise FileNotFoundError(f"{saved}: no such folder (expected a dataset saved with save_to_disk)")
    folder = cache / f"{saved.name}-{_fingerprint(saved)}"
    if not (folder / "manifest.jsonl").is_file():
        _export(saved, folder)
    return folder


def _fingerprint(saved: Path) -> str:
    """Changes whenever a file of the saved dataset does (name, size, modification time)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in saved.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(saved)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _export(saved: Path, folder: Path) -> None:
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"{saved}: reading HF datasets needs the hf extra: pip install 'daisy-speech[hf]'") from e
    try:
        loaded = datasets.load_from_disk(str(saved))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{saved}: not a dataset saved with save_to_disk ({e})") from e
    parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    with atomic_dir(folder) as tmp, progress() as bar:
        task = bar.add_task(f"reading {saved.name}", total=sum(len(part) for _, part in parts))
        rows = []
        for name, part in parts:
            split = SPLIT_NAMES.get(name, name)
            rows += _write_split(part, split, tmp, f"{saved} ({name})", lambda: bar.advance(task))
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_split(part, split: str, tmp: Path, where: str, advance) -> list[dict]:
    import datasets

    audio = next((c for c, f in part.features.items() if isinstance(f, datasets.Audio)), None)
    if audio is None:
        raise ValueError(f"{where}: no Audio column among {', '.join(part.column_names)}")
    text = next((c for c in TEXT_COLUMNS if c in part.column_names), None)
    speaker = next((c for c in SPEAKER_COLUMNS if c in part.column_names), None)
    (tmp / split).mkdir(exist_ok=True)
    rows = []
    for i, row in enumerate(part.cast_column(audio, datasets.Audio(decode=False))):
        stored = row[audio]
        if stored["bytes"] is not None:
            path = f"{split}/{i:06d}{Path(stored['path'] or '').suffix or '.wav'}"
            (tmp / path).write_bytes(stored["bytes"])
        elif stored["path"] and Path(stored["path"]).is_file():
            path = str(Path(stored["path"]).resolve())  # audio kept outside the dataset: read it in place
        else:
            raise ValueError(f"{where}, row {i}: its audio has no bytes and no readable file ({stored['path']})")
        rows.append(
            {
                "id": f"{split}-{i:06d}",
                "path": path,
                "text": "" if text is None else str(row[text]),
                "speaker": "" if speaker is None else str(row[speaker]),
                "split": split,
            }
        )
        advance()
    return rows
