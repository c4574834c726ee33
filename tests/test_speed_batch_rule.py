"""`daisy bench --batch-rule`: per-utterance compaction against DAISY's per-batch rule at the same mean depth."""

import json

import numpy as np
import pytest
import torch

from conftest import random_early_exit
from daisy import policies
from daisy.analysis.batch_rule import compare
from daisy.data.batching import batches


def speechlike(n: int, seed: int = 0) -> list[np.ndarray]:
    """n noise bursts of 0.4-1.5 s at different levels, so the random heads' entropies differ between them."""
    rng = np.random.default_rng(seed)
    return [
        (rng.uniform(0.05, 2.0) * rng.standard_normal(int(rng.uniform(0.4, 1.5) * 16000))).astype(np.float32)
        for _ in range(n)
    ]


def test_both_rules_are_timed_at_the_same_mean_depth_and_the_batch_exits_together():
    model = random_early_exit()  # 3 layers
    own = model.policy
    wavs = speechlike(16)
    with torch.inference_mode():
        result = compare(model, wavs, depth=2.0, repeats=2, batch_size=4)
    assert model.policy is own  # left as it was
    rules = result["rules"]
    assert set(rules) == {"full", "utterance", "batch"} and rules["full"]["mean_depth"] == 3.0
    # the utterance rule is calibrated to the depth the batch rule reached: a threshold step moves one utterance's
    # exit by at most 2 layers (of 3), so the nearest depth is within half of 2 / N
    gap = rules["batch"]["mean_depth"] - rules["utterance"]["mean_depth"]
    assert abs(gap) <= 1 / len(wavs) + 1e-6, rules
    assert 1.0 < rules["batch"]["mean_depth"] < 3.0  # a depth where both rules have something to decide
    for r in rules.values():
        assert r["utterances_per_s"] == pytest.approx(len(wavs) / r["seconds"])
        assert r["rtf"] == pytest.approx(r["seconds"] / result["audio_seconds"])
    assert result["audio_seconds"] == pytest.approx(sum(len(w) for w in wavs) / 16000)
    timed = rules["batch"]["seconds"] / rules["utterance"]["seconds"]
    assert result["batch_over_utterance"] > 0 and abs(np.log(result["batch_over_utterance"] / timed)) < np.log(3)
    # the saved batch rule, run live on the same batches: each batch exits at one layer
    batch_rule = policies.policy_from_dict(result["policies"]["batch"])
    assert batch_rule.decide_per == "batch" and "decide_per" not in result["policies"]["utterance"]
    model.policy = batch_rule
    exits = []
    with torch.inference_mode():
        for _, padded, lengths in batches(wavs, 4):
            layers = model(padded, lengths, output_hidden_states=False).exit_layers.tolist()
            assert len(set(layers)) == 1
            exits += layers
    assert np.mean(exits) == pytest.approx(rules["batch"]["mean_depth"])


def test_the_cli_prints_both_throughputs_and_their_ratio(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import daisy.analysis.speed
    from daisy.apps.cli import app

    monkeypatch.setattr(daisy.analysis.speed, "load_model", lambda *a: random_early_exit())
    monkeypatch.setattr(daisy.analysis.speed, "speech", lambda n, source: speechlike(n, seed=1))
    args = ["bench", "--batch-rule", "--utterances", "20", "--repeats", "1", "--json", str(tmp_path / "b.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in ("per utterance (ours)", "per batch (DAISY's code)", "utterances/s", "batch rule time / utterance"):
        assert text in result.output
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["batch_size"] == 16 and saved["utterances"] == 20 and saved["model"] == "random tiny, C=100"
    assert saved["policies"]["batch"]["decide_per"] == "batch" and saved["device"] == "cpu"
