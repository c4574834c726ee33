"""Readers for real speech corpora in their usual on-disk layouts, each returning `Utterance`s.

Nothing is downloaded and no audio is decoded: `samples` is 0 (unknown) and paths are absolute.
Results are sorted by path, so the order is deterministic. A wrong layout raises FileNotFoundError
(missing folder/file, or no audio where some was expected) or ValueError (malformed text files),
naming the path and the layout that was expected.
"""

from __future__ import annotations

from pathlib import Path

from daisy.data.corpus import Utterance, load_manifest

SPLITS = ("train", "dev", "test")


def _root(root: str | Path, expected: str) -> Path:
    return _require_dir(Path(root).expanduser().absolute(), expected)


def _require_dir(folder: Path, expected: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected {expected})")
    return folder


def _files(folder: Path, pattern: str, expected: str) -> list[Path]:
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no files matching {pattern} (expected {expected})")
    return files


def _split_of(name: str) -> str | None:
    """`train` for train-*, `dev` for dev-*, `test` for test-* (and the bare names); None otherwise."""
    prefix = name.split("-")[0]
    return prefix if prefix in SPLITS else None


def _counterpart(folder: Path, name: str, of: Path) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the counterpart of {of})")
    return path


def _by_path(items: list, key=lambda item: item.path) -> list:
    return sorted(items, key=lambda item: str(key(item)))


def librispeech(root: str | Path, subsets: list[str] | None = None) -> list[Utterance]:
    """LibriSpeech: `<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`, with
    `<speaker>-<chapter>.trans.txt` (lines `<id> <TEXT>`) beside the audio.

    `root` is the folder holding the subsets (or its parent holding `LibriSpeech/`); `subsets`
    defaults to every train-*/dev-*/test-* folder there. split is train/dev/test from the subset
    prefix, speaker the speaker folder, and text the transcript exactly as written (upper case, no
    punctuation). Every .flac must have a transcript line; transcript lines without audio are ignored.
    """
    expected = "LibriSpeech subset folders like train-clean-100/, dev-clean/, test-clean/"
    root = _root(root, expected)
    if (root / "LibriSpeech").is_dir() and not any(_split_of(p.name) for p in root.iterdir() if p.is_dir()):
        root = root / "LibriSpeech"
    if subsets is None:
        subsets = sorted(p.name for p in root.iterdir() if p.is_dir() and _split_of(p.name))
        if not subsets:
            raise FileNotFoundError(f"{root}: no subset folders (expected {expected})")
    transcripts: dict[Path, dict[str, str]] = {}
    out = []
    for subset in subsets:
        split = _split_of(subset)
        if split is None:
            raise ValueError(f"{subset!r}: not a LibriSpeech subset name (expected train-*, dev-* or test-*)")
        folder = _require_dir(root / subset, f"a LibriSpeech subset folder ({expected})")
        for flac in _files(folder, "*/*/*.flac", "<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac"):
            chapter = flac.parent
            trans = chapter / f"{chapter.parent.name}-{chapter.name}.trans.txt"
            if trans not in transcripts:
                transcripts[trans] = _read_trans(trans)
            if flac.stem not in transcripts[trans]:
                raise ValueError(f"{trans}: no line for {flac.stem} (expected '<id> <TEXT>' for every .flac beside it)")
            out.append(Utterance(flac.stem, flac, transcripts[trans][flac.stem], chapter.parent.name, split, 0))
    return _by_path(out)


def _read_trans(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: transcript missing (LibriSpeech keeps <speaker>-<chapter>.trans.txt beside the .flac files)"
        )
    texts = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        if not text.strip():
            raise ValueError(f"{path}:{line_no}: expected '<utterance-id> <TEXT>', got {line!r}")
        texts[utt_id] = text.strip()
    return texts


_VOX_SPLITS = {"1": "train", "2": "dev", "3": "test"}


def voxceleb1(root: str | Path, split_file: str | Path | None = None) -> list[Utterance]:
    """VoxCeleb1: `<root>/wav/<idXXXXX>/<video>/<NNNNN>.wav`; speaker is the idXXXXX folder and the id
    the path below wav/ without suffix (`id10001/1zcIwhmdeo4/00001`), as in the official split files.

    split comes from the identification split file (`split_file`, else `<root>/iden_split.txt`;
    lines `1 id10001/1zcIwhmdeo4/00001.wav`, 1=train, 2=dev, 3=test), which must list every wav
    found; without one, everything is `train`. text is empty.
    """
    root = _root(root, "a VoxCeleb1 folder holding wav/<idXXXXX>/<video>/<NNNNN>.wav")
    wav = _require_dir(root / "wav", "VoxCeleb1's wav/<idXXXXX>/<video>/<NNNNN>.wav")
    files = _files(wav, "id*/*/*.wav", "VoxCeleb1's wav/<idXXXXX>/<video>/<NNNNN>.wav")
    if split_file is None and (root / "iden_split.txt").is_file():
        split_file = root / "iden_split.txt"
    table = _read_iden_split(Path(split_file)) if split_file is not None else None
    out = []
    for path in files:
        key = path.relative_to(wav).as_posix()
        if table is not None and key not in table:
            raise ValueError(f"{split_file}: no entry for {key} (an identification split must list every wav)")
        split = table[key] if table is not None else "train"
        out.append(Utterance(key[: -len(".wav")], path, "", key.split("/")[0], split, 0))
    return _by_path(out)


def _read_iden_split(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such split file (expected VoxCeleb1's iden_split.txt)")
    table = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in _VOX_SPLITS:
            raise ValueError(f"{path}:{line_no}: expected '<1|2|3> idXXXXX/<video>/<NNNNN>.wav', got {line!r}")
        table[parts[1]] = _VOX_SPLITS[parts[0]]
    return table


# (noisy folder, clean folder, split); the transcripts live in e.g. trainset_28spk_txt/<name>.txt
_VOICEBANK = (
    ("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav", "train"),
    ("noisy_trainset_56spk_wav", "clean_trainset_56spk_wav", "train"),
    ("noisy_testset_wav", "clean_testset_wav", "test"),
)


def voicebank_demand_pairs(root: str | Path) -> list[tuple[Utterance, Path]]:
    """VoiceBank-DEMAND: `noisy_trainset_28spk_wav/` + `clean_trainset_28spk_wav/` (or the 56spk
    pair, or both) and `noisy_testset_wav/` + `clean_testset_wav/`, same file names (`p226_001.wav`).

    Returns (noisy utterance, clean path) pairs; split is train/test (the corpus has no dev set),
    speaker the name before `_`, and text from `trainset_*_txt/`/`testset_txt/` when present, else "".
    """
    expected = ", ".join(f"{n}/ + {c}/" for n, c, _ in _VOICEBANK)
    root = _root(root, f"a VoiceBank-DEMAND folder with {expected}")
    present = [row for row in _VOICEBANK if (root / row[0]).exists() or (root / row[1]).exists()]
    if not present:
        raise FileNotFoundError(f"{root}: no VoiceBank-DEMAND folders (expected {expected})")
    out = []
    for noisy_name, clean_name, split in present:
        noisy = _require_dir(root / noisy_name, f"the noisy side of {clean_name}/")
        clean = _require_dir(root / clean_name, f"the clean side of {noisy_name}/")
        texts = root / (clean_name.removeprefix("clean_").removesuffix("_wav") + "_txt")
        for path in _files(noisy, "*.wav", "VoiceBank-DEMAND wavs like p226_001.wav"):
            text_file = texts / f"{path.stem}.txt"
            text = text_file.read_text().strip() if text_file.is_file() else ""
            utt = Utterance(path.stem, path, text, path.stem.partition("_")[0], split, 0)
            out.append((utt, _counterpart(clean, path.name, path)))
    return _by_path(out, key=lambda pair: pair[0].path)


def voicebank_demand(root: str | Path) -> list[Utterance]:
    """The noisy utterances of `voicebank_demand_pairs(root)`."""
    return [utt for utt, _ in voicebank_demand_pairs(root)]


def libri2mix_triples(
    root: str | Path, sample_rate: str = "wav16k", mode: str = "min", mixture: str = "mix_clean"
) -> list[tuple[Utterance, Path, Path]]:
    """Libri2Mix: `<root>/<wav16k|wav8k>/<min|max>/<train-100|train-360|dev|test>/{mix_clean,mix_both,
    s1,s2,noise}/<id>.wav`. Returns (mixture utterance, s1 path, s2 path) triples.

    The mixture comes from `mixture` (mix_clean by default; mix_both adds the WHAM! noise). split is
    train/dev/test from the split folder; the id is the two LibriSpeech ids joined by `_`
    (`1272-128104-0000_2035-147961-0014`) and speaker their speaker ids joined likewise (`1272_2035`).
    text is empty.
    """
    if sample_rate not in ("wav8k", "wav16k") or mode not in ("min", "max"):
        raise ValueError(f"sample_rate={sample_rate!r}, mode={mode!r}: expected 'wav8k'|'wav16k' and 'min'|'max'")
    expected = f"Libri2Mix's {sample_rate}/{mode}/<train-100|train-360|dev|test>/{mixture}/"
    base = _require_dir(_root(root, f"a Libri2Mix folder holding {expected}") / sample_rate / mode, expected)
    split_dirs = sorted(p for p in base.iterdir() if p.is_dir() and _split_of(p.name))
    if not split_dirs:
        raise FileNotFoundError(f"{base}: no split folders (expected train-100/, train-360/, dev/, test/)")
    out = []
    for folder in split_dirs:
        mix = _require_dir(folder / mixture, f"the mixtures of {expected}")
        s1, s2 = (_require_dir(folder / s, f"the {s} sources beside {mix}") for s in ("s1", "s2"))
        for path in _files(mix, "*.wav", "Libri2Mix mixtures like 1272-128104-0000_2035-147961-0014.wav"):
            speaker = "_".join(part.split("-")[0] for part in path.stem.split("_"))
            utt = Utterance(path.stem, path, "", speaker, _split_of(folder.name), 0)
            out.append((utt, _counterpart(s1, path.name, path), _counterpart(s2, path.name, path)))
    return _by_path(out, key=lambda triple: triple[0].path)


def libri2mix(
    root: str | Path, sample_rate: str = "wav16k", mode: str = "min", mixture: str = "mix_clean"
) -> list[Utterance]:
    """The mixture utterances of `libri2mix_triples(...)`."""
    return [utt for utt, _, _ in libri2mix_triples(root, sample_rate, mode, mixture)]


def folder_with_manifest(root: str | Path, split: str | None = None) -> list[Utterance]:
    """A folder with `manifest.jsonl` (paths relative to it), as written by the synthetic corpus."""
    return load_manifest(root, split)
