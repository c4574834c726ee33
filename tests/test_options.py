"""Options that cannot make a run are refused before any work: one line naming the option, exit code 1."""

import pytest
from typer.testing import CliRunner

from daisy.apps.cli import app
from daisy.training.pretrain import PretrainConfig

runner = CliRunner()


def one_line(result, *parts) -> bool:
    lines = result.output.strip().splitlines()
    return result.exit_code == 1 and len(lines) == 1 and all(p in lines[0] for p in parts)


@pytest.mark.parametrize(
    "options,named",
    [
        (["--steps", "-1"], "steps must be an integer at least 1, got -1"),
        (["--steps", "0"], "steps must be an integer at least 1, got 0"),
        (["--noise-prob", "5"], "noise_prob must be a number in 0.0..1.0, got 5.0"),
        (["--classes", "1"], "num_classes must be an integer at least 2, got 1"),
    ],
)
def test_pretrain_refuses_settings_that_cannot_make_a_run(tmp_path, options, named):
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--quick", *options])
    assert one_line(result, named), result.output
    assert not (tmp_path / "run").exists()


def test_pretrain_names_a_config_file_it_cannot_use(tmp_path):
    for text, why in [("not json", "Expecting value"), ("[1, 2]", "not a JSON object"), ('{"stepz": 3}', "stepz")]:
        (tmp_path / "my.json").write_text(text)
        result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "my.json")])
        assert one_line(result, "--config", "my.json", why), result.output
    (tmp_path / "my.json").write_text('{"lr": -1}')
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "my.json")])
    assert one_line(result, "lr must be a number at least"), result.output


def test_a_config_that_checks_is_one_the_defaults_pass():
    PretrainConfig().check()
    PretrainConfig.quick().check()
    with pytest.raises(ValueError, match="warmup must be an integer at least 0"):
        PretrainConfig(warmup=-5).check()


@pytest.mark.parametrize("option", ["--train", "--test"])
@pytest.mark.parametrize("value", ["-1", "0"])
def test_minisuperb_refuses_empty_splits_before_any_training(tmp_path, option, value):
    args = ["minisuperb", "--model", "daisy/assets/hubert-tiny-synth", "--quick", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, option, value])
    assert one_line(result, option, f"at least 1, got {value}"), result.output
    assert not (tmp_path / "o").exists()


def test_a_damaged_model_folder_is_named_in_one_line(tmp_path):
    import json
    import shutil

    shipped = "daisy/assets/hubert-tiny-synth"
    shutil.copytree(shipped, tmp_path / "cut")
    data = (tmp_path / "cut" / "kmeans.safetensors").read_bytes()
    (tmp_path / "cut" / "kmeans.safetensors").write_bytes(data[: len(data) // 3])
    assert one_line(runner.invoke(app, ["info", str(tmp_path / "cut")]), "kmeans.safetensors", "not a readable")
    shutil.copytree(shipped, tmp_path / "classes")
    config = json.loads((tmp_path / "classes" / "daisy.json").read_text())
    (tmp_path / "classes" / "daisy.json").write_text(json.dumps({**config, "num_classes": -3}))
    result = runner.invoke(app, ["info", str(tmp_path / "classes")])
    assert one_line(result, "daisy.json", "num_classes must be an integer of at least 2, got -3")


@pytest.mark.parametrize("command", ["noise-sweep", "minisuperb"])
def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, command):
    from daisy.io import run_lock

    args = [command, "--model", "daisy/assets/hubert-tiny-synth", "--quick", "--out", str(tmp_path / "o")]
    if command == "noise-sweep":
        args += ["--snr", "clean", "--limit", "2"]
    else:
        args += ["--tasks", "sid", "--size", "quick", "--train", "24", "--test", "8", "--budgets", "0.5"]
    with run_lock(tmp_path / "o"):
        result = runner.invoke(app, args)
    assert one_line(result, str(tmp_path / "o"), "is in use by another daisy run"), result.output
    assert runner.invoke(app, args).exit_code == 0  # free again: it runs
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".part")]  # nothing staged is left


def test_train_heads_refuses_a_nonsense_depth_before_reading_anything(tmp_path):
    args = ["train-heads", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--depth", "nan"]
    assert one_line(runner.invoke(app, args), "--depth must be a finite number, got nan")  # not "missing"
