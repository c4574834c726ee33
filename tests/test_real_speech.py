"""The real-speech dev set (benchmarks/real_speech/) and its measurement (daisy.analysis.real_speech, run by
benchmarks/real_speech.py)."""

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_early_exit
from daisy import audio
from daisy.analysis import real_speech
from daisy.calibration import trace_scores
from daisy.data.noise import snr_db
from daisy.data.sources import load_all, utterances

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
CLIPS = BENCHMARKS / "real_speech" / "clips"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


build = load_script(BENCHMARKS / "real_speech" / "build.py")


def tone(seconds: float, freq: float = 300.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_the_committed_dev_set_is_what_its_readme_promises():
    rows = [json.loads(line) for line in (CLIPS / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) >= 20 and len({r["speaker"] for r in rows}) >= 8
    assert {r["band"] for r in rows} == {"wide", "narrow"} and all(r["split"] == "dev" for r in rows)
    assert sum(p.stat().st_size for p in CLIPS.rglob("*")) < 3 * 2**20
    wavs = load_all(utterances(CLIPS))
    assert [len(w) for w in wavs] == [r["samples"] for r in rows]
    assert all(1.0 <= len(w) / 16000 <= 8.0 for w in wavs)
    for row in rows:  # every source names its package and licence, and that licence's text is beside it
        assert row["licence"] and row["source"].split()[0] in {p.stem for p in (CLIPS / "licences").iterdir()}


def test_cuts_fall_in_pauses_and_respect_the_lengths():
    gap = np.zeros(int(0.3 * 16000), np.float32)
    wav = np.concatenate([gap, tone(3.0), gap, tone(3.0), gap, tone(3.0), gap, tone(0.5), np.zeros(16000, np.float32)])
    pieces = build.cut_at_pauses(wav)
    # the first two runs fit in 8 s together; the third starts a new piece; the lone 0.5 s run joins it
    assert len(pieces) == 2
    assert all(1.0 * 16000 <= b - a <= 8.0 * 16000 for a, b in pieces)
    assert pieces[0][1] <= pieces[1][0]  # no overlap
    for a, b in pieces:  # both ends in silence, within 0.1 s of speech
        assert np.abs(wav[a : a + 100]).max() == 0 and np.abs(wav[b - 100 : b]).max() == 0
    long = build.cut_at_pauses(tone(20.0))  # one 20 s run without a pause is split, never kept whole
    assert len(long) >= 3 and all(b - a <= 8 * 16000 for a, b in long)
    assert build.cut_at_pauses(tone(0.6)) == []  # too short


def test_members_are_read_from_debs_and_sdists(tmp_path):
    payload = b"RIFF-not-really"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/share/x/a.wav")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b"xx"), (b"data.tar.xz", data.getvalue())]
    deb = b"!<arch>\n"
    for name, blob in members:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        deb += header + str(len(blob)).encode().ljust(10) + b"`\n" + blob + b"\n" * (len(blob) % 2)
    (tmp_path / "p_1.0_all.deb").write_bytes(deb)
    assert build.read_member(tmp_path / "p_1.0_all.deb", "usr/share/x/a.wav") == payload
    with tarfile.open(tmp_path / "p-1.0.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("p-1.0/a.wav")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert build.read_member(tmp_path / "p-1.0.tar.gz", "p-1.0/a.wav") == payload
    with pytest.raises(SystemExit, match="no p-1.0/b.wav"):
        build.read_member(tmp_path / "p-1.0.tar.gz", "p-1.0/b.wav")


def test_noise_is_at_the_snr_and_babble_comes_from_other_speakers():
    wavs = [tone(1.0, 440), tone(1.2, 440)] + [tone(1.0 + 0.1 * i, f) for i, f in enumerate((900, 1300, 1700, 2100))]
    speakers = ["a", "a", "b", "c", "d", "e"]
    for kind in ("white", "babble"):
        mixed = real_speech.noisy(wavs, speakers, kind, 5.0, seed=0)
        assert all(abs(snr_db(c, m) - 5.0) < 1e-3 for c, m in zip(wavs, mixed))
    babble = real_speech.noisy(wavs, speakers, "babble", 0.0, seed=0)[0] - wavs[0]
    spectrum = np.abs(np.fft.rfft(babble))
    freqs = np.fft.rfftfreq(len(babble), 1 / 16000)
    assert spectrum[np.abs(freqs - 440) < 20].max() < 0.01 * spectrum.max()  # not speaker a's other utterance


def test_head_agreement_counts_frames_where_neighbours_pick_the_same_class():
    model = random_early_exit()
    wavs = [0.1 * np.random.default_rng(i).standard_normal(8000 + 1600 * i).astype(np.float32) for i in range(3)]
    with torch.no_grad():
        for layer, head in enumerate(model.heads.heads, 1):
            head.weight.zero_()
            head.bias.zero_()
            head.bias[0 if layer <= 2 else 1] = 1.0  # layers 1-2 always pick class 0, later ones class 1
    assert real_speech.head_agreement(model, wavs) == [1.0, 0.0]


def test_benchmark_writes_exits_entropies_and_agreement(tmp_path):
    model = random_early_exit()
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        wav = (0.1 * rng.standard_normal(int((0.8 + 0.2 * i) * 16000))).astype(np.float32)
        audio.save(tmp_path / "real" / f"u{i}.wav", wav)
        audio.save(tmp_path / "synth" / f"s{i}.wav", wav[::-1].copy())
        rows.append(dict(id=f"u{i}", path=f"u{i}.wav", speaker=f"spk{i % 5}", band="wide" if i < 3 else "narrow"))
    (tmp_path / "real" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "model"), "--real", str(tmp_path / "real")]
    args += ["--synthetic", str(tmp_path / "synth"), "--kokoro", "0", "--out", str(out)]
    args += ["--snrs", "10,0", "--noises", "white,babble"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "real_speech.py"), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "results.json").read_text())
    assert list(result["exits"]) == ["clean", "white 10 dB", "white 0 dB", "babble 10 dB", "babble 0 dB"]
    wavs = load_all(utterances(tmp_path / "real"))
    exits = model.policy.exit_layers(trace_scores(model, wavs)).float()
    clean = result["exits"]["clean"]
    assert clean["all"] == pytest.approx(float(exits.mean()))
    assert clean["wide"] == pytest.approx(float(exits[:3].mean()))
    assert clean["narrow"] == pytest.approx(float(exits[3:].mean()))
    assert set(result["sources"]) == {"real", "espeak"}
    real = result["sources"]["real"]
    assert real["speakers"] == 5 and real["bands"] == {"narrow": 3, "wide": 3}
    pct = real["entropy_percentiles"]
    assert all(a <= b <= c for a, b, c in zip(pct["10"], pct["50"], pct["90"]))
    assert len(real["agreement"]) == model.num_layers - 1 and all(0 <= a <= 1 for a in real["agreement"])
    assert (out / "real_speech.png").stat().st_size > 0 and "| clean |" in (out / "table.md").read_text()
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "real_speech.py"), "--noises", "hum"], capture_output=True)
    assert bad.returncode == 2 and b"unknown noise 'hum'" in bad.stderr


def test_the_shipped_model_exits_early_on_clean_real_speech_and_later_in_noise():
    """Its own policy, no calibration on the dev set: clean real speech within 0.75 of its depth on average,
    white noise at 0 dB at least a layer later (what the model card reports)."""
    from daisy.apps.demo import shipped_model
    from daisy.model import EarlyExitHubert

    model = EarlyExitHubert.from_pretrained(shipped_model())
    exits = real_speech.measure(model, CLIPS, {}, ["white"], [0.0])["exits"]
    clean, noisy = exits["clean"]["all"], exits["white 0 dB"]["all"]
    assert clean <= 0.75 * model.num_layers and noisy >= clean + 1
