"""The daisy command line: outputs, JSON, one-line errors naming the file, exit codes."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_early_exit
from daisy import audio
from daisy.cli import app
from daisy.targets import KMeansTargets

runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path):
    model = random_early_exit()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def wavs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([1.0, 2.5]):
        paths.append(tmp_path / f"utt{i}.wav")
        audio.save(paths[-1], 0.1 * rng.standard_normal(int(seconds * 16000)))
    return paths


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("exit", "pretrain", "train-heads", "calibrate", "corpus", "demo", "info", "bench"):
        assert command in result.output


def test_help_shows_every_command_summary_verbatim():
    # rich reads "[word]" in help text as markup and drops it: each summary must come out whole
    result = runner.invoke(app, ["--help"], terminal_width=300)
    shown = " ".join(result.output.replace("│", " ").split())
    for command in app.registered_commands:
        summary = " ".join(command.callback.__doc__.strip().splitlines()[0].split())
        assert summary in shown, summary


def test_info_prints_the_geometry_and_for_a_daisy_model_its_heads_and_policy(model_dir, tmp_path):
    result = runner.invoke(app, ["info", str(model_dir)])
    assert result.exit_code == 0, result.output
    geometry, heads, policy = result.output.strip().splitlines()
    assert ": 3 layers x 16, post-norm" in geometry
    assert heads == "exit heads: 12 classes on each layer's feed-forward output, trained on the model's own prediction"
    assert json.loads(policy.removeprefix("policy: ")) == random_early_exit().policy.to_dict()
    random_early_exit().backbone.save_pretrained(tmp_path / "plain")  # a transformers HubertModel: no heads
    result = runner.invoke(app, ["info", str(tmp_path / "plain")])
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "nothing" in result.output


def test_exit_prints_a_line_per_file_and_json(model_dir, wavs):
    result = runner.invoke(app, ["exit", "--model", str(model_dir), *map(str, wavs)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "exit layer" in lines[0] and "2.50 s" in lines[1]
    result = runner.invoke(app, ["exit", "--model", str(model_dir), "--json", "--layer", "2", *map(str, wavs)])
    rows = json.loads(result.output)
    assert [r["exit_layer"] for r in rows] == [2, 2]
    assert [r["path"] for r in rows] == [str(p) for p in wavs]
    assert rows[1]["frames"] == (40000 - 400) // 320 + 1


def test_bad_files_give_one_line_errors_and_a_nonzero_exit(model_dir, wavs, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "short.wav").write_bytes(b"")
    audio.save(tmp_path / "short.wav", np.zeros(100))
    result = runner.invoke(
        app,
        [
            "exit",
            "--model",
            str(model_dir),
            str(wavs[0]),
            str(tmp_path / "empty.wav"),
            str(tmp_path / "short.wav"),
            str(tmp_path / "missing.wav"),
        ],
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "empty.wav: empty file" in result.output
    assert "short.wav: too short (100 samples" in result.output
    assert "missing.wav: no such file" in result.output
    assert "exit layer" in result.output  # the good file still ran


def test_missing_model_is_a_one_line_error(tmp_path, wavs):
    result = runner.invoke(app, ["exit", "--model", str(tmp_path / "nope"), str(wavs[0])])
    assert result.exit_code == 1 and "no daisy.json" in result.output and "Traceback" not in result.output


def test_calibrate_writes_the_budget_into_the_model(model_dir, tmp_path, wavs):
    result = runner.invoke(app, ["calibrate", "--model", str(model_dir), "--data", str(tmp_path), "--depth", "2"])
    assert result.exit_code == 0, result.output
    policy = json.loads((model_dir / "daisy.json").read_text())["policy"]
    assert policy["name"] == "budget" and policy["target_depth"] == 2.0
    result = runner.invoke(app, ["calibrate", "--model", str(model_dir), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "exactly one of --depth or --compute" in result.output
    args = ["calibrate", "--model", str(model_dir), "--data", str(tmp_path), "--depth", "2.5", "--min-layer", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((model_dir / "daisy.json").read_text())["policy"]["min_layer"] == 2
    result = runner.invoke(app, [*args[:-3], "1.5", "--min-layer", "2"])
    assert result.exit_code == 1 and "target depth 1.5 outside 2..3" in result.output


def test_pretrain_label_options_fail_in_one_line(model_dir, tmp_path):
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--label-layer", "2"])
    assert result.exit_code == 1 and "needs --labels-from" in result.output
    args = ["pretrain", "--out", str(tmp_path / "run"), "--labels-from", str(model_dir), "--label-layer", "9"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "label layer 9 out of range 1..3" in result.output
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--labels-from", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "missing" in result.output
    assert not (tmp_path / "run").exists()
    # a run folder keeps its labels: resuming it with MFCC labels is refused before any work
    KMeansTargets(torch.randn(4, 16), "layer:2", source=str(model_dir)).save(tmp_path / "run" / "kmeans.safetensors")
    np.savez(tmp_path / "run" / "labels.npz", u0=np.zeros(3, np.int16))
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "holds labels of layer 2 states" in result.output


def test_bench_times_a_model_on_a_folder_and_writes_consistent_ratios(model_dir, wavs, tmp_path):
    out = tmp_path / "speed.json"
    args = ["--model", str(model_dir), "--audio", str(wavs[0].parent), "--repeats", "1", "--json", str(out)]
    threads = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["bench", *args, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 16]
    for r in rows:
        assert r["threads"] == 1
        assert r["speedup"] == pytest.approx(r["full_s"] / r["early_exit_s"])
        for key in ("speedup", "head_overhead"):  # one round: the quartiles are the median itself
            assert r[f"{key}_quartiles"] == pytest.approx([r[key]] * 2)
        assert r["speedup_vs_ideal"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
        assert 1 <= r["mean_depth"] <= r["num_layers"] and 0 < r["macs_share"] <= 1
    missing = runner.invoke(app, ["bench", "--model", str(model_dir), "--audio", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "nowhere" in missing.output
    no_threads = runner.invoke(app, ["bench", "--model", str(model_dir), "--threads", "0"])
    assert no_threads.exit_code != 0 and "--threads must be at least 1" in no_threads.output
