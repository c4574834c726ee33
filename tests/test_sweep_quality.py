"""ASR quality per noise condition at the exited depth: settings, consistency with the sweep, files."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import random_early_exit
from daisy import audio, policies
from daisy.analysis import asr_per_snr as sq
from daisy.analysis import noise_sweep as ns
from daisy.apps.cli import app


def test_training_audio_is_multi_condition_within_the_sweep_range():
    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(4000)).astype(np.float32) for _ in range(30)]
    sweep = ns.SweepConfig(noises=("white", "pink"), snrs=(10.0, 0.0))
    mixed = sq.training_audio(wavs, sweep, sq.QualityConfig())
    again = sq.training_audio(wavs, sweep, sq.QualityConfig())
    assert all(np.array_equal(a, b) for a, b in zip(mixed, again))  # deterministic
    clean = sum(m is w for m, w in zip(mixed, wavs))
    assert 3 <= clean <= 20  # about a third left clean
    for m, w in zip(mixed, wavs):
        if m is not w:
            snr = 10 * np.log10(np.mean(w**2) / np.mean((m - w) ** 2))
            assert -0.1 <= snr <= 10.1


@pytest.mark.parametrize("policy", [None, {"name": "confidence", "threshold": 0.6}])
def test_asr_quality_rows_per_condition_and_setting(tmp_path, quick_corpus, monkeypatch, policy):
    from daisy.data.corpus import load_manifest

    model = random_early_exit()
    if policy is not None:  # any policy runs: the features keep every head score
        model.policy = policies.policy_from_dict(policy)
        # the probes are the entropy case's; here only the exits matter, so they are stand-ins (fast)
        monkeypatch.setattr(sq, "train_probe", lambda *a: None)
        monkeypatch.setattr(sq, "evaluate", lambda *a: {"cer": 0.5, "wer": 1.0})
    train = load_manifest(quick_corpus, "train")[:16]
    test = load_manifest(quick_corpus, "test")[:6]
    test_wavs = [u.load() for u in test]
    sweep = ns.SweepConfig(noises=("white",), snrs=(10.0, 0.0))
    rows = sq.asr_quality(
        model,
        ([u.load() for u in train], [u.text for u in train]),
        (test_wavs, [u.text for u in test]),
        sweep,
        config=sq.QualityConfig(size="quick"),
        test_scores=(traced := {}),
    )
    assert [(r["noise"], r["snr"], r["setting"]) for r in rows[:3]] == [
        ("clean", None, "daisy"),
        ("clean", None, "fixed"),
        ("clean", None, "full"),
    ]
    assert len(rows) == 3 * 3
    exits = ns.sweep(model, test_wavs, sweep)
    for r in rows:
        assert 0.0 <= r["cer"] <= 1.5 and r["wer"] >= 0.0
        if r["setting"] == "full":
            assert r["mean_exit"] == model.num_layers
        if r["setting"] == "daisy":  # the same exits as the noise sweep under the same condition
            same = [e["exit_layer"] for e in exits if (e["noise"], e["snr"]) == (r["noise"], r["snr"])]
            assert r["mean_exit"] == pytest.approx(np.mean(same))
    # the sweep of the same audio reuses the ASR stage's scores: the same rows, and the model not run again
    assert sorted(traced, key=str) == sorted(ns.conditions(sweep), key=str)
    monkeypatch.setattr(model, "trace", lambda *a, **k: pytest.fail("traced again"))
    assert ns.sweep(model, test_wavs, sweep, traced=traced) == exits
    clean_daisy = rows[0]["mean_exit"]
    assert all(r["layer"] == max(1, round(clean_daisy)) for r in rows if r["setting"] == "fixed")
    sq.write_quality(rows, tmp_path)
    assert json.loads((tmp_path / "asr_quality.json").read_text())["rows"] == rows
    table = (tmp_path / "asr_quality.md").read_text()
    assert f"CER fixed-{rows[1]['layer']}" in table and table.count("\n") == 2 + 3
    assert (tmp_path / "asr_cer_vs_snr.png").stat().st_size > 0


def test_asr_quality_refuses_untranscribed_audio():
    model = random_early_exit()
    wav = np.zeros(8000, dtype=np.float32)
    with pytest.raises(ValueError, match="transcript"):
        sq.asr_quality(model, ([wav], ["a b"]), ([wav], [""]), ns.SweepConfig())


def test_silent_audio_is_named_before_any_probe_trains():
    model = random_early_exit()
    loud, silent = np.ones(8000, np.float32), np.zeros(8000, np.float32)
    sweep = ns.SweepConfig(noises=("white",), snrs=(0.0,))
    with pytest.raises(ValueError, match="silent audio .* cannot be mixed at an SNR: training utterance 1$"):
        sq.asr_quality(model, ([loud, silent], ["a b", "c"]), ([loud], ["a"]), sweep)
    with pytest.raises(ValueError, match="cannot be mixed at an SNR: test utterance 0$"):
        sq.asr_quality(model, ([loud], ["a b"]), ([silent], ["a"]), sweep)


def test_cli_asr_needs_transcripts(tmp_path):
    random_early_exit().save_pretrained(tmp_path / "m")
    audio.save(tmp_path / "wavs" / "a.wav", np.zeros(8000))
    result = CliRunner().invoke(
        app, ["noise-sweep", "--model", str(tmp_path / "m"), "--audio", str(tmp_path / "wavs"), "--asr"]
    )
    assert result.exit_code != 0
    assert "--asr needs transcribed" in result.output and str(tmp_path / "wavs") in result.output
