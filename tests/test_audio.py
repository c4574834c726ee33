"""daisy.audio: every file becomes mono float32 at 16 kHz, or a clear error naming it."""

import os
import struct
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from daisy import audio


def tone(rate, seconds=0.5, freq=440.0, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    wav = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


def test_16k_mono_round_trips(tmp_path):
    wav = tone(16000)
    audio.save(tmp_path / "a.wav", wav)
    got = audio.load(tmp_path / "a.wav")
    assert got.dtype == np.float32 and got.shape == wav.shape
    np.testing.assert_allclose(got, wav, atol=1 / 32768 + 1e-6)  # 16-bit quantisation
    assert not list(tmp_path.glob("*.part"))  # nothing half-written left behind


def test_stereo_is_averaged(tmp_path):
    left, right = tone(16000, freq=300.0), tone(16000, freq=500.0)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(audio.load(tmp_path / "s.wav"), (left + right) / 2, atol=1e-6)


def test_other_rates_are_resampled_to_16k(tmp_path):
    sf.write(tmp_path / "r.wav", tone(44100, seconds=1.0, freq=1000.0), 44100, subtype="FLOAT")
    got = audio.load(tmp_path / "r.wav")
    assert abs(len(got) - 16000) <= 1
    # the 1 kHz tone survives: its spectral peak sits at 1 kHz
    spectrum = np.abs(np.fft.rfft(got[:16000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 1000) <= 1


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage that is not a wave file"), "not a readable audio file"),
        (lambda p: p.write_text("hello, I am text"), "not a readable audio file"),
        (lambda p: sf.write(p, np.zeros(0, dtype=np.float32), 16000), "contains no audio samples"),
        (
            lambda p: sf.write(p, np.array([0.0, np.nan] * 300, dtype=np.float32), 16000, subtype="FLOAT"),
            "contains NaN",
        ),
        (
            lambda p: sf.write(p, np.full(100, 0.1, dtype=np.float32), 16000),
            "too short \\(100 samples at 16000 Hz = 6 ms; at least 400 = 25 ms needed\\)",
        ),
    ],
)
def test_bad_files_are_named_with_the_problem(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(audio.AudioError, match=f"bad.wav: {message}"):
        audio.load(path, min_samples=400)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(audio.AudioError, match="is a directory"):
        audio.load(tmp_path)


def patched(path, offset, value: bytes):
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))


def lying_flac(path, frames=2**36 - 1):
    """A valid FLAC whose STREAMINFO claims `frames` samples (a 36-bit field: up to 2^36 - 1)."""
    sf.write(path, tone(16000, seconds=2.0), 16000, format="FLAC", subtype="PCM_16")
    start = 8 + 10  # "fLaC", the block header, then 10 bytes of block/frame sizes
    fields = int.from_bytes(path.read_bytes()[start : start + 8], "big")  # rate, channels, bits, frames
    patched(path, start, ((fields & ~(2**36 - 1)) | frames).to_bytes(8, "big"))


def test_a_header_claiming_days_of_audio_is_refused_before_allocating(tmp_path):
    lying_flac(tmp_path / "huge.flac")
    assert sf.info(tmp_path / "huge.flac").frames == 2**36 - 1  # what a plain sf.read would allocate for
    with pytest.raises(audio.AudioError, match=r"huge.flac: header declares 4294967 s of audio in \d+ bytes"):
        audio.load(tmp_path / "huge.flac")


def test_a_wav_declaring_1_hz_is_refused(tmp_path):
    sf.write(tmp_path / "slow.wav", tone(16000), 16000, subtype="PCM_16")
    patched(tmp_path / "slow.wav", 24, struct.pack("<II", 1, 2))  # fmt chunk: sample rate, bytes per second
    with pytest.raises(audio.AudioError, match=r"slow.wav: sample rate 1 Hz outside 1000..384000 Hz"):
        audio.load(tmp_path / "slow.wav")


def test_headers_beyond_the_file_or_the_memory_cap_are_refused():
    # libsndfile already shortens an uncompressed file's frames to its bytes; these guard what it might not
    def header(**fields):
        return SimpleNamespace(**({"samplerate": 16000, "format": "WAV", "subtype": "PCM_16"} | fields))

    with pytest.raises(audio.AudioError, match="x.wav: header declares 2000000 samples of PCM_16, more than its"):
        audio._check_header("x.wav", header(frames=10**6, channels=2), size=3_999_999)
    audio._check_header("x.wav", header(frames=10**6, channels=2), size=4_000_000)
    audio._check_header("x.flac", header(frames=10**6, channels=2, format="FLAC"), size=1000)  # compressed
    big = header(samplerate=384000, frames=384000 * 1000, channels=2)
    with pytest.raises(audio.AudioError, match="x.wav: 384000000 frames x 2 channels would take 2.9 GiB decoded"):
        audio._check_header("x.wav", big, size=10**10)


def test_a_truncated_wav_is_read_with_a_warning(tmp_path):
    sf.write(tmp_path / "full.wav", tone(16000, seconds=7.1), 16000, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[: 44 + 2 * int(2.4 * 16000)])
    with pytest.warns(audio.AudioWarning, match=r"cut.wav: truncated: its header declares 7.10 s, the file holds 2.40"):
        assert len(audio.load(tmp_path / "cut.wav")) == int(2.4 * 16000)


@pytest.mark.parametrize(
    "channels,why",
    [
        (lambda w: w * 0, "every sample is 0"),
        (lambda w: w * 1e-5, "no sample reaches one 16-bit step, -90 dBFS"),
        (lambda w: np.stack([w, -w], axis=1), "its channels cancel out when mixed to mono"),  # a wiring error
    ],
)
def test_silence_is_read_with_a_warning(tmp_path, channels, why):
    sf.write(tmp_path / "quiet.wav", channels(tone(16000)), 16000, subtype="FLOAT")
    with pytest.warns(audio.AudioWarning, match=f"quiet.wav: silent \\({why}\\)"):
        assert np.abs(audio.load(tmp_path / "quiet.wav")).max() < 2**-15
    sf.write(tmp_path / "quiet.wav", channels(tone(16000)) + 1e-4, 16000, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error", audio.AudioWarning)
        audio.load(tmp_path / "quiet.wav")  # -80 dBFS: quiet, not silent


def test_phase_inverted_16_bit_stereo_is_silent(tmp_path):
    left = (tone(16000) * 32767).astype(np.int16)
    sf.write(tmp_path / "inverted.wav", np.stack([left, -left], axis=1), 16000, subtype="PCM_16")
    with pytest.warns(audio.AudioWarning, match="inverted.wav: silent \\(its channels cancel out"):
        assert not audio.load(tmp_path / "inverted.wav").any()


def test_a_file_name_that_is_not_utf8_is_read_and_named(tmp_path):
    path = tmp_path / os.fsdecode(b"caf\xe9.wav")
    sf.write(os.fsencode(path), tone(16000), 16000, subtype="PCM_16")
    assert len(audio.load(path)) == 8000
    os.truncate(path, 10)
    with pytest.raises(audio.AudioError, match=r"caf\\xe9.wav: not a readable audio file") as caught:
        audio.load(path)
    str(caught.value).encode("utf-8")  # prints anywhere: no lone surrogates
