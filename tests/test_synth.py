"""daisy.data.synth: deterministic offline English speech from espeak-ng, mono float32 at 16 kHz."""

from __future__ import annotations

import ctypes
import importlib.util
import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("espeakng_loader") is None and shutil.which("espeak-ng") is None:
    pytest.skip("needs espeak-ng: `pip install espeakng-loader` or an espeak-ng executable", allow_module_level=True)

from daisy.data.synth import (  # noqa: E402
    BREATHY_VARIANTS,
    SAMPLE_RATE,
    Voice,
    _pin_clock,
    english_voices,
    synthesize,
    variants,
)

SENTENCE = "The weather is nice today."  # five words
US_M3 = Voice("en-us", "m3")


def median_f0(wav: np.ndarray) -> float:
    """Median autocorrelation pitch (Hz) over the loud 40 ms frames; 60..400 Hz."""
    frame, lo, hi = int(0.04 * SAMPLE_RATE), SAMPLE_RATE // 400, SAMPLE_RATE // 60
    frames = [wav[i : i + frame] for i in range(0, len(wav) - frame, frame)]
    f0s = []
    for x in frames:
        if np.sqrt(np.mean(x**2)) < 0.05:
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        f0s.append(SAMPLE_RATE / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(f0s))


def test_sentence_is_plausible_speech():
    wav = synthesize(SENTENCE, US_M3)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert 0.8 < len(wav) / SAMPLE_RATE < 4.0
    assert np.sqrt(np.mean(wav**2)) > 0.01
    assert np.abs(wav).max() <= 1.0
    # Edge silence trimmed to 50 ms margins.
    loud = np.flatnonzero(np.abs(wav) > 1e-3)
    margin = int(0.05 * SAMPLE_RATE)
    assert loud[0] == margin and len(wav) - 1 - loud[-1] == margin


@pytest.mark.parametrize("voice", [US_M3, Voice("en-gb-x-rp", "f1", pitch=60, rate=150)])
def test_same_text_and_voice_give_identical_samples(voice):
    first = synthesize(SENTENCE, voice)
    synthesize("Something else entirely, to move any internal state on.", Voice("en", "f2"))
    np.testing.assert_array_equal(synthesize(SENTENCE, voice), first)


def test_breath_noise_is_reproducible():
    # espeak-ng seeds breath noise from time(NULL) (wavegen voices) or draws it from libc's rand() (Klatt: Reed).
    first = {v: synthesize(SENTENCE, Voice("en-us", v)) for v in BREATHY_VARIANTS}
    time.sleep(1.0)  # another wall-clock second
    ctypes.CDLL(None).rand()  # and another rand() state
    for variant, wav in first.items():
        np.testing.assert_array_equal(synthesize(SENTENCE, Voice("en-us", variant)), wav, err_msg=variant)


@pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None, reason="needs the espeakng-loader library")
def test_pinned_library_imports_labs_instead_of_time():
    import espeakng_loader
    from elftools.elf.elffile import ELFFile

    library = bytearray(Path(espeakng_loader.get_library_path()).read_bytes())
    assert _pin_clock(library)
    symbols = ELFFile(io.BytesIO(bytes(library))).get_section_by_name(".dynsym").iter_symbols()
    imports = {s.name for s in symbols if s["st_shndx"] == "SHN_UNDEF"}
    assert "labs" in imports and "time" not in imports and "gettimeofday" in imports
    assert not _pin_clock(library)  # nothing left to rebind: the caller warns


def test_concurrent_calls_match_serial_ones():
    voices = [Voice("en-us", v) for v in ("m1", "f3", "m7", "f5")]
    serial = [synthesize(SENTENCE, v) for v in voices]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda v: synthesize(SENTENCE, v), voices * 2))
    for got, want in zip(parallel, serial * 2):
        np.testing.assert_array_equal(got, want)


def test_faster_rate_is_shorter():
    slow = synthesize(SENTENCE, Voice("en-us", "m3", rate=130))
    fast = synthesize(SENTENCE, Voice("en-us", "m3", rate=300))
    assert len(fast) < 0.7 * len(slow)


def test_variant_and_pitch_change_the_voice():
    male, female = synthesize(SENTENCE, US_M3), synthesize(SENTENCE, Voice("en-us", "f2"))
    assert not np.array_equal(male, female)
    assert median_f0(female) > 1.3 * median_f0(male)
    low = synthesize(SENTENCE, Voice("en-us", "m3", pitch=20))
    high = synthesize(SENTENCE, Voice("en-us", "m3", pitch=80))
    assert median_f0(high) > 1.2 * median_f0(low)


def test_voice_and_variant_listings():
    voices = english_voices()
    assert {"en", "en-us", "en-gb-x-rp"} <= set(voices) and voices == sorted(voices)
    assert all(v == "en" or v.startswith("en-") for v in voices)
    usable = variants()
    assert {f"m{i}" for i in range(1, 8)} | {f"f{i}" for i in range(1, 6)} <= set(usable)
    assert not {"robosoft", "whisper", "UniRobot"} & set(usable)
    for name in ("en-gb-scotland", "en-029"):  # every listed voice really speaks
        assert np.sqrt(np.mean(synthesize("Hello there.", Voice(name, "m2")) ** 2)) > 0.01


def test_voice_id_is_stable_and_distinct():
    assert US_M3.id == "en-us+m3-p50-r175"
    assert Voice("en-gb-x-rp").id == "en-gb-x-rp-p50-r175"
    voices = [Voice(n, v, p, r) for n in ("en", "en-us") for v in ("", "m3") for p in (40, 50) for r in (150, 175)]
    assert len({v.id for v in voices}) == len(voices)


def test_bad_input_raises():
    for text in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            synthesize(text, US_M3)
    with pytest.raises(ValueError, match="no audio"):
        synthesize("...", US_M3)
    with pytest.raises(ValueError, match="rate"):
        Voice("en-us", rate=20)
    with pytest.raises(RuntimeError, match="xx-nope"):
        synthesize(SENTENCE, Voice("xx-nope"))
    with pytest.raises(RuntimeError, match="en-us\\+nope"):  # espeak itself would silently ignore the variant
        synthesize(SENTENCE, Voice("en-us", "nope"))
