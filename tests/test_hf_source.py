"""Datasets saved with HF `datasets` as an audio source (`hf:PATH`)."""

import shutil

import numpy as np
import pytest

from daisy import audio
from daisy.data import hf
from daisy.data.sources import load_all, utterances

datasets = pytest.importorskip("datasets")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DAISY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def wav_files(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"u{i}.flac" if i % 2 else folder / f"u{i}.wav")
        audio.save(paths[-1], 0.1 * rng.standard_normal(4000 + 800 * i))
    return paths


def saved_dataset(paths, **columns):
    table = {"audio": [str(p) for p in paths], **columns}
    return datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())


def test_splits_texts_speakers_and_audio_come_through(tmp_path, cache):
    paths = wav_files(tmp_path / "audio", 4)
    full = saved_dataset(paths, sentence=["a b", "c d", "e f", "g h"], speaker_id=[7, 8, 7, 9])
    datasets.DatasetDict(train=full.select([0, 1, 2]), validation=full.select([3])).save_to_disk(tmp_path / "saved")
    for p in paths:  # the saved dataset holds the audio itself
        p.unlink()
    source = f"hf:{tmp_path / 'saved'}"
    train, dev = utterances(source, "train"), utterances(source, "dev")
    assert [u.text for u in train] == ["a b", "c d", "e f"] and [u.speaker for u in train] == ["7", "8", "7"]
    assert [(u.text, u.speaker, u.split) for u in dev] == [("g h", "9", "dev")]
    rng = np.random.default_rng(0)
    originals = [0.1 * rng.standard_normal(4000 + 800 * i) for i in range(4)]
    for got, want in zip(load_all(train + dev), originals):
        np.testing.assert_allclose(got, want, atol=1e-4)  # 16-bit files: quantisation only


def test_the_export_is_reused_until_the_saved_dataset_changes(tmp_path, cache, monkeypatch):
    saved = tmp_path / "saved"
    saved_dataset(wav_files(tmp_path / "audio", 2), text=["x", "y"]).save_to_disk(saved)
    first = hf.corpus_folder(saved, cache)
    assert [u.split for u in utterances(f"hf:{saved}")] == ["train", "train"]  # no splits: all train
    exports = []
    monkeypatch.setattr(hf, "_export", lambda *a: exports.append(a))
    assert hf.corpus_folder(saved, cache) == first and exports == []
    monkeypatch.undo()
    shutil.rmtree(saved)
    saved_dataset(wav_files(tmp_path / "other", 3, seed=1), text=["p", "q", "r"]).save_to_disk(saved)
    again = hf.corpus_folder(saved, cache)
    assert again != first and [u.text for u in utterances(f"hf:{saved}")] == ["p", "q", "r"]


def test_bad_sources_are_named_with_their_problem(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        utterances(f"hf:{tmp_path / 'nowhere'}")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="plain: not a dataset saved with save_to_disk"):
        utterances(f"hf:{tmp_path / 'plain'}")
    datasets.Dataset.from_dict({"text": ["a"], "label": [1]}).save_to_disk(tmp_path / "no-audio")
    with pytest.raises(ValueError, match=r"no-audio \(train\): no Audio column among text, label"):
        utterances(f"hf:{tmp_path / 'no-audio'}")
    assert not list(cache.glob("hf/no-audio-*"))  # nothing half-written is left behind
