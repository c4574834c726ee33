"""Real-corpus readers on tiny fake trees: ids, texts, speakers, splits, pairings, order and named errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daisy.data.corpus import load_manifest
from daisy.data.readers import (
    folder_with_manifest,
    libri2mix,
    libri2mix_triples,
    librispeech,
    voicebank_demand,
    voicebank_demand_pairs,
    voxceleb1,
)


def touch_audio(path: Path) -> Path:
    """0.01 s of silence at 16 kHz; the format (wav or flac) follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(160, dtype=np.float32), 16000)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- LibriSpeech ---------------------------------------------------------------------------------


def chapter(root: Path, subset: str, speaker: str, chap: str, texts: dict[str, str], trans: bool = True) -> Path:
    folder = root / subset / speaker / chap
    for utt in texts:
        touch_audio(folder / f"{speaker}-{chap}-{utt}.flac")
    if trans:
        write(folder / f"{speaker}-{chap}.trans.txt", "".join(f"{speaker}-{chap}-{u} {t}\n" for u, t in texts.items()))
    return folder


@pytest.fixture
def libri(tmp_path) -> Path:
    root = tmp_path / "LibriSpeech"
    chapter(root, "train-clean-100", "19", "198", {"0001": "NORTHANGER ABBEY", "0000": "CHAPTER ONE"})
    chapter(root, "train-clean-100", "103", "1240", {"0000": "MISSUS RACHEL LYNDE"})
    chapter(root, "dev-clean", "1272", "128104", {"0000": "MISTER QUILTER IS THE APOSTLE"})
    chapter(root, "test-other", "1688", "142285", {"0000": "THERE'S IRON THEY SAY"})
    write(root / "BOOKS.TXT", "not a subset\n")
    (root / "extras").mkdir()
    return root


def test_librispeech_reads_every_subset_with_texts_speakers_and_splits(libri):
    utts = librispeech(libri)
    assert [u.id for u in utts] == [
        "1272-128104-0000",
        "1688-142285-0000",
        "103-1240-0000",
        "19-198-0000",
        "19-198-0001",
    ]
    assert [u.split for u in utts] == ["dev", "test", "train", "train", "train"]
    assert [u.speaker for u in utts] == ["1272", "1688", "103", "19", "19"]
    assert utts[3].text == "CHAPTER ONE" and utts[4].text == "NORTHANGER ABBEY"
    assert utts[1].text == "THERE'S IRON THEY SAY"
    assert utts[0].path == libri / "dev-clean" / "1272" / "128104" / "1272-128104-0000.flac"
    assert all(u.path.is_file() and u.samples == 0 for u in utts)
    assert len(utts[0].load()) == 160


def test_librispeech_subsets_relative_root_and_parent_folder(libri, monkeypatch):
    assert [u.id for u in librispeech(libri, subsets=["dev-clean"])] == ["1272-128104-0000"]
    monkeypatch.chdir(libri.parent)
    utts = librispeech(".")  # the parent of LibriSpeech/, given relative
    assert len(utts) == 5 and all(u.path.is_absolute() and u.path.is_file() for u in utts)
    assert librispeech(".") == utts  # deterministic


def test_librispeech_errors_name_the_path_and_the_layout(libri, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*no such folder.*train-clean-100"):
        librispeech(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"extras: no subset folders.*dev-clean"):
        librispeech(libri / "extras")
    with pytest.raises(FileNotFoundError, match="dev-other: no such folder"):
        librispeech(libri, subsets=["dev-other"])
    with pytest.raises(ValueError, match="'extras': not a LibriSpeech subset"):
        librispeech(libri, subsets=["extras"])
    (libri / "test-clean").mkdir()
    with pytest.raises(FileNotFoundError, match=r"test-clean: no files matching \*/\*/\*.flac"):
        librispeech(libri)


def test_librispeech_transcript_problems_are_named(tmp_path):
    chapter(tmp_path, "dev-clean", "84", "121123", {"0000": "GO DO YOU HEAR"}, trans=False)
    with pytest.raises(FileNotFoundError, match=r"84-121123\.trans\.txt: transcript missing"):
        librispeech(tmp_path)
    trans = write(tmp_path / "dev-clean/84/121123/84-121123.trans.txt", "84-121123-0001 ANOTHER LINE\n")
    with pytest.raises(ValueError, match=r"84-121123\.trans\.txt: no line for 84-121123-0000"):
        librispeech(tmp_path)
    trans.write_text("84-121123-0000\n")
    with pytest.raises(ValueError, match=r"trans\.txt:1: expected '<utterance-id> <TEXT>'"):
        librispeech(tmp_path)


# --- VoxCeleb1 -----------------------------------------------------------------------------------


@pytest.fixture
def vox(tmp_path) -> Path:
    for rel in ("id10002/xTV-jFAUKcw/00001", "id10001/1zcIwhmdeo4/00002", "id10001/1zcIwhmdeo4/00001"):
        touch_audio(tmp_path / "vox" / "wav" / f"{rel}.wav")
    return tmp_path / "vox"


IDS = ["id10001/1zcIwhmdeo4/00001", "id10001/1zcIwhmdeo4/00002", "id10002/xTV-jFAUKcw/00001"]


def test_voxceleb1_without_split_file_is_all_train(vox):
    utts = voxceleb1(vox)
    assert [u.id for u in utts] == IDS
    assert [u.speaker for u in utts] == ["id10001", "id10001", "id10002"]
    assert {u.split for u in utts} == {"train"}
    assert utts[2].path == vox / "wav" / "id10002" / "xTV-jFAUKcw" / "00001.wav"


def test_voxceleb1_splits_from_iden_split(vox, tmp_path):
    write(vox / "iden_split.txt", "".join(f"{s} {i}.wav\n" for s, i in zip("132", IDS)) + "3 id10003/gone/00001.wav\n")
    assert [u.split for u in voxceleb1(vox)] == ["train", "test", "dev"]
    other = write(tmp_path / "mine.txt", "".join(f"2 {i}.wav\n" for i in IDS))
    assert [u.split for u in voxceleb1(vox, split_file=other)] == ["dev", "dev", "dev"]


def test_voxceleb1_errors(vox, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder.*VoxCeleb1"):
        voxceleb1(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"vox/wav/wav: no such folder.*wav/<idXXXXX>"):
        voxceleb1(vox / "wav")  # pointed one level too deep
    with pytest.raises(FileNotFoundError, match=r"missing\.txt: no such split file"):
        voxceleb1(vox, split_file=tmp_path / "missing.txt")
    partial = write(tmp_path / "partial.txt", f"1 {IDS[0]}.wav\n")
    with pytest.raises(ValueError, match=r"partial\.txt: no entry for id10001/1zcIwhmdeo4/00002\.wav"):
        voxceleb1(vox, split_file=partial)
    verification = write(tmp_path / "veri.txt", f"1 {IDS[0]}.wav {IDS[2]}.wav\n")
    with pytest.raises(ValueError, match=r"veri\.txt:1: expected '<1\|2\|3>"):
        voxceleb1(vox, split_file=verification)
    (tmp_path / "empty" / "wav").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"wav: no files matching id\*/\*/\*\.wav"):
        voxceleb1(tmp_path / "empty")


# --- VoiceBank-DEMAND ----------------------------------------------------------------------------


@pytest.fixture
def voicebank(tmp_path) -> Path:
    root = tmp_path / "vb"
    for noisy, clean, names in (
        ("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav", ("p226_002", "p226_001", "p287_010")),
        ("noisy_testset_wav", "clean_testset_wav", ("p232_001",)),
    ):
        for name in names:
            touch_audio(root / noisy / f"{name}.wav")
            touch_audio(root / clean / f"{name}.wav")
    write(root / "trainset_28spk_txt" / "p226_001.txt", "Please call Stella.\n")
    write(root / "testset_txt" / "p232_001.txt", "Ask her to bring these things.\n")
    return root


def test_voicebank_demand_pairs_noisy_with_clean(voicebank):
    pairs = voicebank_demand_pairs(voicebank)
    assert [u.id for u, _ in pairs] == ["p232_001", "p226_001", "p226_002", "p287_010"]
    assert [u.split for u, _ in pairs] == ["test", "train", "train", "train"]
    assert [u.speaker for u, _ in pairs] == ["p232", "p226", "p226", "p287"]
    assert [u.text for u, _ in pairs] == ["Ask her to bring these things.", "Please call Stella.", "", ""]
    train, test = "trainset_28spk_wav", "testset_wav"
    where = [(test, "p232_001"), (train, "p226_001"), (train, "p226_002"), (train, "p287_010")]
    assert [u.path for u, _ in pairs] == [voicebank / f"noisy_{d}" / f"{n}.wav" for d, n in where]
    assert [clean for _, clean in pairs] == [voicebank / f"clean_{d}" / f"{n}.wav" for d, n in where]
    assert voicebank_demand(voicebank) == [u for u, _ in pairs]


def test_voicebank_demand_accepts_the_56spk_set(voicebank):
    touch_audio(voicebank / "noisy_trainset_56spk_wav" / "p234_001.wav")
    touch_audio(voicebank / "clean_trainset_56spk_wav" / "p234_001.wav")
    utts = voicebank_demand(voicebank)
    assert [u.id for u in utts][-1] == "p234_001" and utts[-1].split == "train" and len(utts) == 5


def test_voicebank_demand_errors(voicebank, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"no VoiceBank-DEMAND folders.*noisy_testset_wav/ \+ clean_testset_wav/"
    ):
        voicebank_demand(tmp_path)
    (voicebank / "clean_testset_wav" / "p232_001.wav").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"clean_testset_wav/p232_001\.wav: missing.*noisy_testset_wav/p232_001"
    ):
        voicebank_demand_pairs(voicebank)
    (voicebank / "clean_testset_wav").rmdir()
    with pytest.raises(FileNotFoundError, match=r"clean_testset_wav: no such folder.*noisy_testset_wav"):
        voicebank_demand_pairs(voicebank)
    (voicebank / "noisy_testset_wav" / "p232_001.wav").unlink()
    (voicebank / "clean_testset_wav").mkdir()
    with pytest.raises(FileNotFoundError, match=r"noisy_testset_wav: no files matching \*\.wav"):
        voicebank_demand_pairs(voicebank)


# --- Libri2Mix -----------------------------------------------------------------------------------

MIX_A = "1272-128104-0000_2035-147961-0014"
MIX_B = "103-1240-0000_19-198-0001"


@pytest.fixture
def librimix(tmp_path) -> Path:
    root = tmp_path / "Libri2Mix"
    for split, name in (("train-360", MIX_B), ("dev", MIX_A), ("test", MIX_B)):
        for kind in ("mix_clean", "mix_both", "s1", "s2", "noise"):
            touch_audio(root / "wav16k" / "min" / split / kind / f"{name}.wav")
    touch_audio(root / "wav8k" / "max" / "dev" / "mix_clean" / f"{MIX_A}.wav")
    return root


def test_libri2mix_triples_pair_mix_with_sources(librimix):
    triples = libri2mix_triples(librimix)
    assert [(u.id, u.split, u.speaker) for u, _, _ in triples] == [
        (MIX_A, "dev", "1272_2035"),
        (MIX_B, "test", "103_19"),
        (MIX_B, "train", "103_19"),
    ]
    base = librimix / "wav16k" / "min"
    for (utt, s1, s2), split in zip(triples, ("dev", "test", "train-360")):
        assert (utt.path, s1, s2) == tuple(base / split / kind / f"{utt.id}.wav" for kind in ("mix_clean", "s1", "s2"))
    assert libri2mix(librimix) == [u for u, _, _ in triples]
    assert libri2mix(librimix, mixture="mix_both")[0].path == base / "dev" / "mix_both" / f"{MIX_A}.wav"


def test_libri2mix_errors(librimix, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wav16k/max: no such folder.*wav16k/max/<train-100"):
        libri2mix(librimix, mode="max")
    with pytest.raises(FileNotFoundError, match=r"wav8k/max/dev/s1: no such folder.*the s1 sources"):
        libri2mix(librimix, sample_rate="wav8k", mode="max")
    with pytest.raises(ValueError, match=r"sample_rate=16000.*'wav8k'\|'wav16k'"):
        libri2mix(librimix, sample_rate=16000)
    (librimix / "wav16k" / "min" / "dev" / "s2" / f"{MIX_A}.wav").unlink()
    with pytest.raises(FileNotFoundError, match=rf"dev/s2/{MIX_A}\.wav: missing \(the counterpart of .*mix_clean"):
        libri2mix_triples(librimix)
    (tmp_path / "flat" / "wav16k" / "min" / "misc").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"min: no split folders \(expected train-100/"):
        libri2mix(tmp_path / "flat")


# --- manifest folder -----------------------------------------------------------------------------


def test_folder_with_manifest_delegates_to_load_manifest(tmp_path):
    touch_audio(tmp_path / "a.wav")
    rows = [dict(id="a", path="a.wav", text="hi", speaker="s1", split="dev", samples=160)]
    write(tmp_path / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    utts = folder_with_manifest(tmp_path)
    assert utts == load_manifest(tmp_path) and (utts[0].id, utts[0].split, utts[0].samples) == ("a", "dev", 160)
    assert folder_with_manifest(tmp_path, split="train") == []
    with pytest.raises(FileNotFoundError, match="no manifest.jsonl"):
        folder_with_manifest(tmp_path / "missing")
