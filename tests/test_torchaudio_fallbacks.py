"""torchaudio's load / info / sox_effects as s3prl's downstreams call them, where torchaudio >= 2.9 cannot
(no torchcodec or FFmpeg, no sox): soundfile and soxr stand in (daisy.upstream.torchaudio_fallbacks),
put in place by the import hook `import daisy.upstream` installs."""

import numpy as np
import pytest
import soundfile
import torch

import daisy.upstream  # noqa: F401  (the hook: torchaudio gets its fallbacks as it loads)
from daisy.upstream import s3prl_compat
from daisy.upstream.torchaudio_fallbacks import apply_effects_tensor

torchaudio = pytest.importorskip("torchaudio", reason="torchaudio not installed (the s3prl extra has it)")


def stereo(path, rate=8000, seconds=0.5, subtype="PCM_16", fmt="WAV"):
    t = np.arange(int(rate * seconds)) / rate
    data = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 440 * t)], axis=1)
    soundfile.write(path, data, rate, subtype=subtype, format=fmt)
    return soundfile.read(path, dtype="float32")[0]  # what the file holds after quantisation


def test_load_reads_through_soundfile_without_torchcodec(tmp_path):
    if s3prl_compat.torchcodec_loads():
        pytest.skip("torchcodec loads here: torchaudio.load is its own")
    with pytest.raises(ImportError, match="TorchCodec is required"):  # what s3prl's downstreams hit unshimmed
        torchaudio.load_with_torchcodec(tmp_path / "none.wav")
    data = stereo(tmp_path / "a.wav")
    wav, rate = torchaudio.load(tmp_path / "a.wav")
    assert rate == 8000 and wav.dtype == torch.float32 and wav.shape == (2, 4000)
    torch.testing.assert_close(wav, torch.from_numpy(data).t())
    part, _ = torchaudio.load(str(tmp_path / "a.wav"), frame_offset=100, num_frames=50, channels_first=False)
    torch.testing.assert_close(part, torch.from_numpy(data[100:150]))


@pytest.mark.parametrize(
    ("subtype", "fmt", "bits", "encoding"),
    [("PCM_16", "WAV", 16, "PCM_S"), ("FLOAT", "WAV", 32, "PCM_F"), ("PCM_24", "FLAC", 24, "FLAC")],
)
def test_info(tmp_path, subtype, fmt, bits, encoding):
    path = tmp_path / f"a.{fmt.lower()}"
    stereo(path, rate=16000, subtype=subtype, fmt=fmt)
    meta = torchaudio.info(str(path))
    assert (meta.sample_rate, meta.num_frames, meta.num_channels) == (16000, 8000, 2)
    assert (meta.bits_per_sample, meta.encoding) == (bits, encoding)


def test_speech_commands_effects_on_a_stereo_8khz_file(tmp_path):
    """speech_commands' EFFECTS: channels 1 (the mean of the channels), rate 16000, gain -3 (dB)."""
    from torchaudio.sox_effects import apply_effects_file

    data = stereo(tmp_path / "a.wav")
    wav, rate = apply_effects_file(str(tmp_path / "a.wav"), [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]])
    assert rate == 16000 and wav.shape == (1, 8000) and wav.dtype == torch.float32
    mono = data.mean(1)
    expected_peak = np.abs(mono).max() * 10 ** (-3 / 20)
    assert abs(float(wav.abs().max()) - expected_peak) < 0.01
    spectrum = np.abs(np.fft.rfft(wav[0, 1000:-1000].numpy()))  # resampled: still a 440 Hz tone
    assert abs(np.argmax(spectrum) * 16000 / 6000 - 440) < 3


def test_effects_norm_pad_and_layout():
    wav = torch.tensor([[0.1, -0.4, 0.2, 0.0]])
    out, rate = apply_effects_tensor(wav, 4, [["norm"], ["pad", "0.5", "1s"]])
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.25, -1.0, 0.5, 0.0, 0.0]]))
    assert rate == 4
    out, _ = apply_effects_tensor(wav.t(), 4, [["gain", "-n", "-6"]], channels_first=False)
    assert out.shape == (4, 1) and abs(float(out.abs().max()) - 10 ** (-6 / 20)) < 1e-6
    out, _ = apply_effects_tensor(wav, 4, [["gain", "20"]])  # clipped to [-1, 1], as sox does
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0, 1.0, 0.0]]))
    out, _ = apply_effects_tensor(wav, 4, [["channels", "2"]])
    assert out.shape == (2, 4)


def test_effects_without_a_stand_in_are_refused():
    with pytest.raises(ValueError, match="sox effect 'silence'.*does channels, rate, gain, norm, pad"):
        apply_effects_tensor(torch.zeros(1, 100), 16000, [["silence", "1", "0.1", "0.1%"]])


def test_voxceleb1_cache_loads_only_lists_of_paths(tmp_path):
    import pickle

    from daisy.upstream.s3prl_compat import _PathListPickle

    with open(tmp_path / "train.pkl", "wb") as f:
        _PathListPickle.dump(["/data/id10001/a/00001.wav"], f)
    with open(tmp_path / "train.pkl", "rb") as f:
        assert _PathListPickle.load(f) == ["/data/id10001/a/00001.wav"]
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump([print], f)  # any global: a function a crafted file could call
    with open(tmp_path / "evil.pkl", "rb") as f, pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        _PathListPickle.load(f)
