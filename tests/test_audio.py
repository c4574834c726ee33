"""daisy.audio: every file becomes mono float32 at 16 kHz, or a clear error naming it."""

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
            lambda p: sf.write(p, np.zeros(100, dtype=np.float32), 16000),
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
