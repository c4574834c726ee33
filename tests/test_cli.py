"""The daisy command line: outputs, JSON, one-line errors naming the file, exit codes."""

import inspect
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_early_exit
from daisy import audio
from daisy.apps.cli import app, calibrate
from daisy.calibration import RARE_EXITS
from daisy.model import EarlyExitHubert, stored_dtype
from daisy.run_state import save_state
from daisy.targets import KMeansTargets
from daisy.training.pretrain import PretrainConfig

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
    assert ": 3 layers x 16, post-norm" in geometry and geometry.endswith("input: raw waveform (its level matters)")
    assert heads == "exit heads: 12 classes on each layer's feed-forward output, trained on the model's own prediction"
    assert json.loads(policy.removeprefix("policy: ")) == random_early_exit().policy.to_dict()
    random_early_exit().backbone.save_pretrained(tmp_path / "plain")  # a transformers HubertModel: no heads
    result = runner.invoke(app, ["info", str(tmp_path / "plain")])
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 1
    backbone = random_early_exit().backbone
    backbone.config.normalize_waveform = True
    backbone.save_pretrained(tmp_path / "normalised")
    assert (
        runner.invoke(app, ["info", str(tmp_path / "normalised")]).output.strip().endswith("normalised per utterance")
    )
    result = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "nothing" in result.output
    EarlyExitHubert.from_backbone(random_early_exit().backbone, 12, head_rank=4).save_pretrained(tmp_path / "r")
    assert "exit heads: 12 classes, rank 4 on each" in runner.invoke(app, ["info", str(tmp_path / "r")]).output


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


def test_exit_reports_hostile_or_odd_files_one_line_each_and_runs_the_rest(model_dir, wavs, tmp_path):
    import os
    import struct

    import soundfile as sf
    from test_audio import lying_flac

    lying_flac(tmp_path / "huge.flac")  # claims 2^36 frames: 256 GiB if allocated
    sf.write(tmp_path / "slow.wav", np.full(40000, 0.1, dtype=np.float32), 16000, subtype="PCM_16")
    raw = bytearray((tmp_path / "slow.wav").read_bytes())
    raw[24:32] = struct.pack("<II", 1, 2)  # declares 1 Hz: a 16,000x upsampling
    (tmp_path / "slow.wav").write_bytes(bytes(raw))
    (tmp_path / "cut.wav").write_bytes(wavs[1].read_bytes()[:20000])
    audio.save(tmp_path / "quiet.wav", np.zeros(16000))
    odd = tmp_path / os.fsdecode(b"caf\xe9.wav")
    sf.write(os.fsencode(odd), np.full(16000, 0.1, dtype=np.float32), 16000)
    files = [wavs[0], tmp_path / "huge.flac", tmp_path / "slow.wav", tmp_path / "cut.wav", tmp_path / "quiet.wav", odd]
    result = runner.invoke(app, ["exit", "--model", str(model_dir), *map(str, files)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 8  # 4 results, 2 warnings, 2 errors
    assert "huge.flac: header declares 4294967 s of audio" in result.output
    assert "slow.wav: sample rate 1 Hz outside 1000..384000 Hz" in result.output
    assert "cut.wav: truncated: its header declares 2.50 s, the file holds 0.62 s" in result.output
    assert "quiet.wav: silent (every sample is 0)" in result.output
    assert sum("\texit layer" in line for line in lines) == 4 and "caf\\xe9.wav\texit layer" in result.output
    rows = json.loads(runner.invoke(app, ["exit", "--model", str(model_dir), "--json", *map(str, files)]).stdout)
    assert [r["path"] for r in rows] == [str(f) for f in (wavs[0], *files[3:])]
    assert [len(r["warnings"]) for r in rows] == [0, 1, 1, 0]


def test_missing_model_is_a_one_line_error(tmp_path, wavs):
    result = runner.invoke(app, ["exit", "--model", str(tmp_path / "nope"), str(wavs[0])])
    assert result.exit_code == 1 and "no daisy.json" in result.output and "Traceback" not in result.output


def test_calibrate_writes_the_budget_into_the_model(model_dir, tmp_path, wavs):
    result = runner.invoke(app, ["calibrate", "--model", str(model_dir), "--data", str(tmp_path), "--depth", "2"])
    assert result.exit_code == 0, result.output
    policy = json.loads((model_dir / "daisy.json").read_text())["policy"]
    assert policy["name"] == "budget" and policy["target_depth"] == 2.0
    result = runner.invoke(app, ["calibrate", "--model", str(model_dir), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "exactly one of --depth, --compute or --agreement" in result.output
    args = ["calibrate", "--model", str(model_dir), "--data", str(tmp_path), "--depth", "2.5", "--min-layer", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((model_dir / "daisy.json").read_text())["policy"]["min_layer"] == 2
    result = runner.invoke(app, [*args[:-3], "1.5", "--min-layer", "2"])
    assert result.exit_code == 1 and "target depth 1.5 outside 2..3" in result.output
    calibration = json.loads((model_dir / "daisy.json").read_text())["provenance"]["calibration"]
    assert f"mean exit depth {calibration['reached_depth']:.2f} of 3 layers on 2 held-out utterances" in " ".join(
        runner.invoke(app, args).output.split()
    )
    # depth L: nobody exits before the last layer, so no head need run (the default --rare-exits)
    assert runner.invoke(app, [*args[:-3], "3"]).exit_code == 0
    saved = json.loads((model_dir / "daisy.json").read_text())
    assert saved["policy"]["min_layer"] == 3 and saved["provenance"]["calibration"]["rare_exits"] == RARE_EXITS
    assert runner.invoke(app, [*args[:-3], "3", "--rare-exits", "0"]).exit_code == 0
    assert json.loads((model_dir / "daisy.json").read_text())["policy"]["min_layer"] == 1
    result = runner.invoke(app, [*args, "--rare-exits", "1"])
    assert result.exit_code == 1 and "rare_exits is a share of the utterances, in 0..1, got 1.0" in result.output
    assert inspect.signature(calibrate).parameters["rare_exits"].default.default == RARE_EXITS  # one default


def test_calibrate_to_an_agreement_saves_its_guarantee_and_exit_reports_each_files_agreement(tmp_path, wavs):
    from daisy.calibration import trace_scores
    from daisy.targets import TeacherHead

    model = random_early_exit()
    torch.manual_seed(1)
    model.teacher = TeacherHead(16, 8, 12)  # the full model's answer: its argmax on the last layer
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    for i in range(12):
        audio.save(tmp_path / "dev" / f"u{i}.wav", 0.1 * rng.standard_normal(16000 + 2000 * i))
    args = ["calibrate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "dev")]
    result = runner.invoke(app, [*args, "--agreement", "0.5", "--delta", "0.2", "--task", "asr"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "model" / "daisy.json").read_text())
    record = saved["provenance"]["task_calibration"]["asr"]
    assert saved["task_policies"]["asr"]["name"] == "entropy"  # not a budget: recalibrating by depth would lose it
    assert (record["target_agreement"], record["delta"], record["utterances"]) == (0.5, 0.2, 12)
    assert record["agreement"] >= record["agreement_bound"] >= 0.5
    assert "(lower bound" in result.output and "confidence 0.8" in result.output
    for options, message in (
        (["--agreement", "0.999"], "at least 1609 needed"),  # 0.999 ** n <= 0.05 takes n >= 2995; 0.2: 1609
        (["--agreement", "1.5"], "strictly between 0 and 1"),
        (["--agreement", "0.9", "--delta", "0"], "strictly between 0 and 1"),
        (["--agreement", "0.9", "--per-layer"], "--per-layer is a depth calibration"),
        (["--agreement", "0.9", "--depth", "2"], "exactly one of --depth, --compute or --agreement"),
    ):
        result = runner.invoke(app, [*args, "--delta", "0.2", *options])  # a second --delta wins
        assert result.exit_code == 1 and message in " ".join(result.output.split()), (options, result.output)
    # per file: the share of its frames where the exit gives the full model's answer (1 at the last layer)
    exit_args = ["exit", "--model", str(tmp_path / "model"), "--json", "--agreement", *map(str, wavs)]
    rows = json.loads(runner.invoke(app, [*exit_args, "--layer", "3"]).output)
    assert [r["agreement"] for r in rows] == [1.0, 1.0]
    rows = json.loads(runner.invoke(app, [*exit_args, "--layer", "1"]).output)
    traced = trace_scores(model, [audio.load(p) for p in wavs], agreement=True)["agreement"][:, 0]
    assert [r["agreement"] for r in rows] == pytest.approx(traced.tolist(), abs=1e-4)
    lines = runner.invoke(app, exit_args[:3] + ["--agreement", str(wavs[0])]).output
    assert "\tagreement " in lines
    plain = runner.invoke(app, ["exit", "--model", str(tmp_path / "model"), "--json", str(wavs[0])])
    assert plain.exit_code == 0 and "agreement" not in json.loads(plain.output)[0]


def test_exit_agreement_needs_the_models_answer_in_one_line(model_dir, wavs):
    result = runner.invoke(app, ["exit", "--model", str(model_dir), "--agreement", str(wavs[0])])
    assert result.exit_code == 1 and "--agreement: this model has no pretraining head" in result.output


def test_calibrate_task_saves_that_tasks_policy_and_exit_info_and_noise_sweep_use_it(model_dir, tmp_path, wavs):
    EarlyExitHubert.from_pretrained(model_dir).save_pretrained(model_dir, dtype=torch.float16)
    own = json.loads((model_dir / "daisy.json").read_text())["policy"]
    args = ["calibrate", "--model", str(model_dir), "--data", str(tmp_path), "--rare-exits", "0"]
    args += ["--depth", "3", "--task", "asr"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((model_dir / "daisy.json").read_text())
    assert saved["policy"] == own  # the model's own policy is left as it was
    assert saved["task_policies"]["asr"]["name"] == "budget" and saved["task_policies"]["asr"]["target_depth"] == 3
    assert saved["provenance"]["task_calibration"]["asr"]["reached_depth"] == 3  # depth L: no one exits early
    assert "(task asr)" in result.output and "policy for asr: " in result.output
    assert stored_dtype(model_dir) == torch.float16  # rewritten in the precision it was stored in

    def exit_layers(*options):
        result = runner.invoke(app, ["exit", "--model", str(model_dir), "--json", *options, *map(str, wavs)])
        assert result.exit_code == 0, result.output
        return [r["exit_layer"] for r in json.loads(result.output)]

    assert exit_layers("--task", "asr") == [3, 3]
    assert exit_layers("--threshold", "1e9") == [1, 1]
    assert exit_layers("--task", "asr", "--threshold", "1e9") == [1, 1]  # options change the task's policy
    info = runner.invoke(app, ["info", str(model_dir)]).output.strip().splitlines()
    assert json.loads(info[-1].removeprefix("policy for asr: ")) == saved["task_policies"]["asr"]
    for command in (["exit", "--json", str(wavs[0])], ["noise-sweep", "--audio", str(tmp_path)]):
        result = runner.invoke(app, [*command, "--model", str(model_dir), "--task", "sid"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "no policy for task 'sid' in this model (tasks with their own policy: asr)" in " ".join(
            result.output.split()
        )
    result = runner.invoke(app, [*args[:-1], "a b"])
    assert result.exit_code == 1 and "task names are letters, digits, '-' and '_', got 'a b'" in result.output


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
    # ... and its model: a checkpoint trained on normalised input is not resumed on raw input
    save_state(tmp_path / "norm", "checkpoint", {}, {"step": 3, "config": asdict(PretrainConfig(normalize=True))})
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "norm")])
    assert (
        result.exit_code == 1 and "trained with other normalize (normalize: stored True, asked False)" in result.output
    )
    # a warm start needs an exported model, and never goes over a run's state
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "new"), "--init-from", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "--init-from" in result.output and "no model.safetensors" in result.output
    args = ["pretrain", "--out", str(tmp_path / "norm"), "--normalize", "--init-from", str(model_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "already holds step 3 of this run: resume it without --init-from" in result.output
    # shipping needs a run folder, and its state where no exported model of it is given
    result = runner.invoke(app, ["ship", "--run", str(tmp_path / "new"), "--out", str(tmp_path / "shipped")])
    assert result.exit_code == 1 and "no log.json" in result.output and "Traceback" not in result.output
    (tmp_path / "new").mkdir(exist_ok=True)
    (tmp_path / "new" / "log.json").write_text('{"config": {}, "log": []}')
    args = ["ship", "--run", str(tmp_path / "new"), "--out", str(tmp_path / "shipped"), "--no-neural-speech"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "no checkpoint.json" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*args, "--base", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "--base" in result.output and "no such folder" in result.output


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
        assert "policy_head_overhead" not in r  # its policy reads every head
    model = EarlyExitHubert.from_pretrained(model_dir)
    model.policy = replace(model.policy, min_layer=2)
    model.save_pretrained(model_dir)
    result = runner.invoke(app, ["bench", *args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "policy's heads: those its own policy reads (layers 2..2)" in " ".join(result.output.split())
    for r in json.loads(out.read_text())["rows"]:  # the heads it reads, timed on the full path too
        assert (
            r["policy_min_layer"] == 2
            and r["policy_head_overhead_inside_quartiles"] == [r["policy_head_overhead_inside"]] * 2
        )
    missing = runner.invoke(app, ["bench", "--model", str(model_dir), "--audio", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "nowhere" in missing.output
    no_threads = runner.invoke(app, ["bench", "--model", str(model_dir), "--threads", "0"])
    assert no_threads.exit_code != 0 and "--threads must be at least 1" in no_threads.output


def test_exit_policy_options(model_dir, wavs):
    def run(*options):
        return runner.invoke(app, ["exit", "--model", str(model_dir), "--json", *options, str(wavs[1])])

    result = run("--threshold", "1e9")  # the model's own policy with this threshold: everyone exits at once
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["exit_layer"] == 1
    assert json.loads(run("--threshold", "-1").output)[0]["exit_layer"] == 3
    assert json.loads(run("--policy", "confidence", "--threshold", "0").output)[0]["exit_layer"] == 1
    for options, problem in [
        (("--layer", "4"), "fixed exit layer 4 is past the model's 3 layers"),
        (("--layer", "2", "--policy", "entropy", "--threshold", "1"), "--layer is a fixed exit"),
        (("--policy", "fixed", "--threshold", "1"), "must be entropy or confidence, got 'fixed'; use --layer N"),
        (("--policy", "oracle", "--threshold", "1"), "it needs targets"),
        (("--policy", "entropy"), "--policy entropy needs --threshold"),
    ]:
        result = run(*options)
        assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, options


def one_line_error(result, *parts) -> bool:
    lines = result.output.strip().splitlines()
    return result.exit_code == 1 and len(lines) == 1 and all(p in lines[0] for p in parts)


def test_nonsense_thresholds_are_refused_in_one_line(model_dir, wavs):
    def run(*options):
        return runner.invoke(app, ["exit", "--model", str(model_dir), *options, str(wavs[1])])

    for options, parts in [
        (("--threshold", "nan"), ("--threshold must be a finite number, got nan",)),
        (("--threshold", "inf"), ("--threshold must be a finite number, got inf",)),
        (("--policy", "confidence", "--threshold", "1.5"), ("confidence policy: threshold", "in 0..1", "got 1.5")),
        (("--policy", "confidence", "--threshold", "-0.5"), ("confidence policy: threshold", "in 0..1", "got -0.5")),
        (("--threshold", "abc"), ("--threshold",)),  # typer's own check: not a number
    ]:
        result = run(*options)
        assert result.exit_code != 0 and "Traceback" not in result.output, options
        assert all(p in result.output for p in parts), (options, result.output)
        if options[1] != "abc":
            assert one_line_error(result, *parts), (options, result.output)
    # the same checks guard daisy.json: a NaN threshold there is named with its file
    spec = json.loads((model_dir / "daisy.json").read_text())
    for policy, parts in [
        ({"name": "entropy", "threshold": float("nan")}, ("threshold must be a finite number", "got nan")),
        ({"name": "entropy", "threshold": "3"}, ("threshold must be a finite number", "got '3'")),
        ({"name": "entropy", "threshold": 1.0, "target_depth": 2.0}, ("no field target_depth", "budget policy's")),
    ]:
        (model_dir / "daisy.json").write_text(json.dumps({**spec, "policy": policy}))
        assert one_line_error(run(), str(model_dir / "daisy.json"), *parts), policy


def test_calibrate_refuses_nonsense_numbers_before_any_work(model_dir, monkeypatch):
    import daisy.model

    monkeypatch.setattr(daisy.model.EarlyExitHubert, "from_pretrained", lambda *a: pytest.fail("checked first"))
    for options, problem in [
        (("--depth", "nan"), "--depth must be a finite number, got nan"),
        (("--compute", "inf"), "--compute must be a finite number, got inf"),
        (("--depth", "2", "--rare-exits", "nan"), "--rare-exits must be a finite number, got nan"),
        (("--depth", "2", "--min-layer", "0"), "--min-layer must be at least 1, got 0"),
    ]:
        result = runner.invoke(app, ["calibrate", "--model", str(model_dir), *options])
        assert one_line_error(result, problem), (options, result.output)


def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path):
    def run(device):
        return runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--quick", "--device", device])

    assert one_line_error(run("banana"), "--device 'banana': not a torch device")
    if not torch.cuda.is_available():
        assert one_line_error(run("cuda"), "--device cuda: this machine has no CUDA device")
    else:
        assert one_line_error(run(f"cuda:{torch.cuda.device_count()}"), "CUDA device(s)")
    assert not (tmp_path / "run").exists()


def test_train_heads_checks_its_options_before_any_work(model_dir, tmp_path, wavs):
    def run(*options, model=model_dir):
        args = ["train-heads", "--model", str(model), "--data", str(wavs[0].parent), "--out", str(tmp_path / "h")]
        return runner.invoke(app, [*args, *options])

    plain = tmp_path / "plain"
    random_early_exit().backbone.save_pretrained(plain)
    for options, model, problem in [
        (("--steps", "0"), model_dir, "steps must be at least 1"),
        (("--noise-prob", "2"), model_dir, "noise_prob is a share of the inputs, in 0..1"),
        (("--targets-from", "bogus"), model_dir, "targets_from must be 'input' or 'clean'"),
        (("--classes", "30"), model_dir, "is a daisy model: its heads train on as they are"),
        (("--head-input", "output"), model_dir, "is a daisy model"),
        (("--head-rank", "4"), model_dir, "is a daisy model"),
        (("--head-rank", "16"), plain, "head rank must be in 1..15"),
        (("--classes", "1"), plain, "--classes must be at least 2"),
        (("--head-input", "middle"), plain, "head_input must be one of"),
        (("--depth", "10"), model_dir, "--depth 10 outside 1..3"),
        (("--depth", "0"), model_dir, "--depth 0 outside 1..3"),
        ((), model_dir, f"{model_dir} has no pretraining head"),  # its daisy.json says targets: teacher
    ]:
        result = run(*options, model=model)
        assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, options
        assert not (tmp_path / "h").exists()


def test_train_heads_on_a_daisy_model_calibrates_its_task_budgets_again_and_keeps_the_rest(tmp_path, wavs):
    from daisy import policies
    from daisy.targets import TeacherHead

    model = random_early_exit()
    model.teacher = TeacherHead(model.backbone.hidden_size, 8, 12)  # the heads' targets
    model.set_task_policy("asr", policies.Budget(threshold=0.5, target_depth=2.0))
    model.set_task_policy("sid", policies.Fixed(layer=2))
    model.save_pretrained(tmp_path / "m")
    args = ["train-heads", "--model", str(tmp_path / "m"), "--data", str(wavs[0].parent), "--out", str(tmp_path / "h")]
    result = runner.invoke(app, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "task policies kept as they were (not calibrated budgets): sid" in result.output
    trained = EarlyExitHubert.from_pretrained(tmp_path / "h" / "model")
    calibration = trained.config.provenance["task_calibration"]["asr"]
    assert (calibration["target_depth"], calibration["utterances"]) == (2.0, 2)  # no dev split: 2 train files
    assert trained.task_policy("asr").target_depth == 2.0 and trained.task_policy("asr").threshold != 0.5
    assert trained.task_policy("sid") == policies.Fixed(layer=2)


def test_noise_sweep_checks_its_options_before_any_work(model_dir, wavs, tmp_path):
    def run(*options):
        args = ["noise-sweep", "--model", str(model_dir), "--audio", str(wavs[0].parent), "--out", str(tmp_path / "o")]
        return runner.invoke(app, [*args, *options])

    for options, problem in [
        (("--noise", "white,purple"), "--noise 'purple': neither a noise type"),
        (("--noise", "cafe.wav"), "--noise 'cafe.wav': neither a noise type"),
        (("--limit", "0"), "--limit must be at least 1"),
        (("--noise", "babble"), "babble mixes 4 other utterances"),
        (("--asr", "--asr-size", "huge"), "--asr-size must be one of quick, cpu, paper"),
        (("--asr", "--asr-train", "0"), "--asr-train must be at least 1"),
    ]:
        result = run(*options)
        assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, options
        assert not (tmp_path / "o").exists()
    result = run("--noise", "white,white", "--snr", "10,10")
    assert result.exit_code == 0, result.output
    assert "rises as SNR falls: n/a" in result.output  # one condition shows no trend
    rows = json.loads((tmp_path / "o" / "noise_sweep.json").read_text())["summary"]
    assert [(r["noise"], r["snr"], r["utterances"]) for r in rows] == [("white", 10.0, 2)]  # repeats count once


def test_minisuperb_seed_reaches_the_probes(model_dir, tmp_path, monkeypatch):
    import daisy.downstream.minisuperb as minisuperb

    seen = []
    monkeypatch.setenv("DAISY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(minisuperb, "run", lambda *args, **kw: seen.append(args[4]) or {"results": {}, "scores": {}})
    monkeypatch.setattr(minisuperb, "markdown", lambda results, scores: "")
    args = ["minisuperb", "--model", str(model_dir), "--quick", "--tasks", "asr", "--train", "8", "--test", "4"]
    result = runner.invoke(app, [*args, "--seed", "7", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert [(c.seed, c.tasks) for c in seen] == [(7, ("asr",))]


def test_minisuperb_checks_each_option_by_name(model_dir, tmp_path):
    for options, problem in [
        (("--tasks", "asr,mt"), "--tasks must be among asr, sid, se, ss, got 'asr,mt'"),
        (("--size", "huge"), "--size must be one of quick, cpu, paper, got 'huge'"),
        (("--featurizer", "bogus"), "--featurizer must be one of static, dynamic, per_depth"),
        (("--budgets", "0.5,half"), "--budgets: expected comma-separated floats, got '0.5,half'"),
        (("--budgets", "0.5,2"), "--budgets are shares of the layers, in (0, 1]; got (0.5, 2.0)"),
        (("--fixed", "2,0"), "--fixed layers are 1-based; got (2, 0)"),
        (("--fixed", "9"), "fixed layers [9] beyond the model's 3 layers"),  # known once the model is read
    ]:
        result = runner.invoke(app, ["minisuperb", "--model", str(model_dir), "--out", str(tmp_path / "o"), *options])
        assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, options
        assert not (tmp_path / "o").exists()
