"""The synthetic corpus: deterministic, cached, with speakers and splits; manifest errors are named."""

import json
import random

import numpy as np
import pytest

from daisy.data.corpus import CorpusConfig, build_corpus, load_manifest, sentence
from daisy.data.sources import utterances


def test_sentences_are_deterministic_from_the_seed():
    a = [sentence(random.Random(3)) for _ in range(5)]
    b = [sentence(random.Random(3)) for _ in range(5)]
    assert a == b
    assert all(s[0].isupper() and s.endswith(".") for s in a)
    assert len({sentence(random.Random(i)) for i in range(50)}) > 45


def test_quick_corpus_has_splits_speakers_and_audio(quick_corpus):
    config = CorpusConfig.quick()
    train, dev, test = (load_manifest(quick_corpus, s) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (config.train, config.dev, config.test)
    speakers = {u.speaker for u in train}
    assert len(speakers) == config.speakers
    assert {u.speaker for u in test} <= speakers  # closed-set speaker id, as VoxCeleb1 identification
    wav = train[0].load()
    assert wav.dtype == np.float32 and len(wav) == train[0].samples
    assert 0.5 < len(wav) / 16000 < 10 and np.sqrt(np.mean(wav**2)) > 0.01
    assert train[0].text.endswith(".")


def test_corpus_is_cached_under_its_config_key(quick_corpus):
    before = (quick_corpus / "manifest.jsonl").stat().st_mtime_ns
    assert build_corpus(quick_corpus.parent, CorpusConfig.quick()) == quick_corpus
    assert (quick_corpus / "manifest.jsonl").stat().st_mtime_ns == before
    assert CorpusConfig.quick().key() != CorpusConfig(train=161, dev=40, test=40, speakers=8).key()
    assert json.loads((quick_corpus / "config.json").read_text())["train"] == CorpusConfig.quick().train


def test_a_folder_of_wavs_is_a_source(tmp_path, quick_corpus):
    (tmp_path / "sub").mkdir()
    for i, utt in enumerate(load_manifest(quick_corpus, "dev")[:3]):
        (tmp_path / "sub" / f"{i}.wav").write_bytes(utt.path.read_bytes())
    found = utterances(tmp_path)
    assert [u.id for u in found] == ["0", "1", "2"]
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        utterances(tmp_path / "nowhere")


def test_bad_manifest_rows_are_named(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"id": "a", "path": "a.wav"}\n{"broken\n')
    with pytest.raises(ValueError, match="manifest.jsonl:2: bad manifest row"):
        load_manifest(tmp_path)
