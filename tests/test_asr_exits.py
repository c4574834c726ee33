"""`daisy asr-exits`: DAISY beside supervised early-exit ASR, CER against compute on clean and noisy audio."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from daisy.apps.cli import app

PAIRS = {
    ("daisy", "entropy"),
    *((m, s) for m in ("hubert-ee", "wright-scratch", "wright-finetune") for s in ("entropy", "posterior")),
}


@pytest.fixture
def one_thread():
    """The test box's 2 cores are shared: one intra-op thread keeps OpenMP from spinning against other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_run_gives_every_method_a_curve_clean_and_noisy(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("DAISY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["asr-exits", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    points = summary["points"]
    assert {(p["method"], p["selection"]) for p in points} == PAIRS
    for pair in PAIRS:
        mine = [p for p in points if (p["method"], p["selection"]) == pair]
        clean = [p for p in mine if p["snr"] == "clean"]
        noisy = [p for p in mine if p["snr"] != "clean"]
        assert len({p["threshold"] for p in clean}) >= 3, pair
        assert noisy and {p["noise"] for p in noisy} == {"white", "babble"}, pair
        for p in mine:
            assert math.isfinite(p["cer"]) and p["cer"] >= 0, p
            assert 1 <= p["mean_exit"] <= summary["num_layers"] and 0 < p["compute_share"] <= 1, p
            assert set(p) >= {"method", "selection", "snr", "threshold", "mean_exit", "compute_share", "cer"}
        # a higher entropy threshold (or a lower posterior one) never exits later on the same audio
        depths = [p["mean_exit"] for p in sorted(clean, key=lambda p: p["threshold"])]
        assert depths == sorted(depths, reverse=pair[1] == "entropy"), (pair, depths)
    for method in ("daisy", "hubert-ee", "wright-scratch", "wright-finetune"):
        cost = summary["training"][method]
        assert cost["steps"] > 0 and cost["seconds"] > 0, method
    assert summary["training"]["hubert-ee"]["steps"] == 8 + 4  # fine-tuning, then the branches
    assert (out / "results.md").read_text().count("| clean |") == 3 * len(PAIRS)
    assert (out / "cer_vs_compute.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (("--methods", "daisy,ctc"), "methods must be among daisy, hubert-ee, wright-scratch, wright-finetune"),
        (("--data", "sid=/nowhere"), "asr-exits reads one ASR corpus"),
        (("--thresholds", "2"), "thresholds must be a whole number >= 3"),
        (("--steps", "0"), "--steps must be at least 1"),
        (("--probe-size", "huge"), "probe_size must be one of quick, cpu, paper"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, options, problem):
    result = CliRunner().invoke(app, ["asr-exits", "--quick", "--out", str(tmp_path / "o"), *options])
    assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_librispeech_folder_is_read_for_training_held_out_and_test_audio(tmp_path, one_thread):
    from test_minisuperb_corpora import librispeech_tree

    root = librispeech_tree(tmp_path / "data")
    out = tmp_path / "out"
    args = ["asr-exits", "--quick", "--data", f"asr={root}", "--methods", "wright-finetune", "--steps", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["utterances"] == {"train": 6, "dev": 2, "test": 4}  # train-*, dev-*, test-* subsets
    assert {(p["method"], p["selection"]) for p in summary["points"]} == {
        ("wright-finetune", "entropy"),
        ("wright-finetune", "posterior"),
    }
    assert summary["training"]["wright-finetune"]["steps"] == 1
