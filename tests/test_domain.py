"""Out-of-domain audio: calibration records what its audio read like; `daisy exit` says when most files read harder."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_early_exit
from daisy import audio, domain, policies
from daisy.apps.cli import app
from daisy.calibration import calibrate_model, trace_scores

runner = CliRunner()


def test_calibration_records_the_first_read_layers_largest_entropy():
    model = random_early_exit()
    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (4000, 6000, 8000, 9000, 12000)]
    policy = calibrate_model(model, wavs, depth=2.0, min_layer=2, rare_exits=0.0)
    record = model.config.provenance["calibration"]["domain"]
    entropy = trace_scores(model, wavs)["entropy"]
    assert record == {"layer": 2, "max_entropy": round(float(entropy[:, 1].max()), 4), "utterances": 5}
    assert policy.min_layer == 2
    assert domain.reference(entropy, policies.Fixed(layer=2)) is None  # a policy that reads no entropy


def test_unfamiliar_counts_utterances_above_everything_calibration_saw():
    record = {"layer": 2, "max_entropy": 1.0, "utterances": 10}
    entropy = torch.tensor([[9.0, 0.5, 0.1], [0.1, 1.5, float("nan")], [0.1, 1.2, 0.3]])
    assert domain.unfamiliar(record, entropy) == 2
    assert domain.unfamiliar(None, entropy) == 0
    assert domain.warning("M", 1, 3, record) is None  # a minority: no word
    line = domain.warning("M", 2, 3, record)
    assert "2 of 3 files" in line and line.endswith("daisy calibrate --model M --data YOUR_CLEAN_AUDIO")


@pytest.fixture
def wavs(tmp_path):
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"utt{i}.wav" for i in range(3)]
    for i, path in enumerate(paths):
        audio.save(path, 0.1 * rng.standard_normal(16000 + 4000 * i))
    return paths


def saved_with_domain_record(path, max_entropy: float) -> None:
    """A random model whose calibration saw head-2 entropies up to `max_entropy`, saved at `path`."""
    model = random_early_exit()
    model.policy = policies.Entropy(threshold=0.5, min_layer=2)
    model.config.provenance["calibration"] = {"domain": {"layer": 2, "max_entropy": max_entropy, "utterances": 9}}
    model.save_pretrained(path)


@pytest.mark.parametrize("max_entropy,said", [(0.0, True), (100.0, False)])
def test_exit_says_once_at_the_end_when_most_files_are_out_of_domain(tmp_path, wavs, max_entropy, said):
    saved_with_domain_record(tmp_path / "model", max_entropy)
    result = runner.invoke(app, ["exit", "--model", str(tmp_path / "model"), *map(str, wavs)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == (1 if said else 0)
    if said:
        assert "3 of 3 files" in notes[0] and f"daisy calibrate --model {tmp_path / 'model'}" in notes[0]
    # a policy other than the calibrated one was asked for: the record does not speak for it
    result = runner.invoke(app, ["exit", "--model", str(tmp_path / "model"), "--threshold", "0.4", *map(str, wavs)])
    assert "note:" not in result.output


@pytest.mark.parametrize("max_entropy,said", [(0.0, True), (100.0, False)])
def test_noise_sweep_says_so_at_the_end_from_its_clean_utterances(tmp_path, wavs, max_entropy, said):
    saved_with_domain_record(tmp_path / "model", max_entropy)
    folder = wavs[0].parent
    args = ["noise-sweep", "--model", str(tmp_path / "model"), "--audio", str(folder), "--noise", "white"]
    result = runner.invoke(app, [*args, "--snr", "clean,10", "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == (1 if said else 0)
    if said:
        assert "3 of 3 clean utterances" in notes[0]
