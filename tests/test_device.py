"""--device and --precision on every command that runs a model: auto resolves to cuda only where torch sees
one, a device the machine lacks is a one-line error before any work, and bf16 autocast keeps the exits."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_early_exit, varied_batch
from daisy import audio, policies
from daisy.apps.cli import app
from daisy.model import EarlyExitHubert
from daisy.precision import autocast_name, exact, inference, resolve_device
from daisy.targets import TeacherHead

runner = CliRunner()
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture
def model_dir(tmp_path):
    model = random_early_exit()
    model.teacher = TeacherHead(model.backbone.hidden_size, 8, 12)  # an answer of its own: train-heads, --agreement
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def wavs(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "audio"
    folder.mkdir()
    paths = []
    for i, seconds in enumerate([1.0, 2.5]):
        paths.append(folder / f"utt{i}.wav")
        audio.save(paths[-1], 0.1 * rng.standard_normal(int(seconds * 16000)))
    return paths


def one_line_error(result, text: str) -> bool:
    lines = result.output.strip().splitlines()
    return result.exit_code == 1 and len(lines) == 1 and text in lines[0] and "Traceback" not in result.output


# every command that runs a model, with a model path that does not exist: the device must be refused first
COMMANDS = {
    "exit": lambda nope, out: ["exit", "--model", str(nope), str(out / "a.wav")],
    "train-heads": lambda nope, out: ["train-heads", "--model", str(nope), "--out", str(out)],
    "calibrate": lambda nope, out: ["calibrate", "--model", str(nope), "--depth", "2"],
    "noise-sweep": lambda nope, out: ["noise-sweep", "--model", str(nope), "--out", str(out)],
    "minisuperb": lambda nope, out: ["minisuperb", "--model", str(nope), "--out", str(out)],
    "bench": lambda nope, out: ["bench", "--model", str(nope), "--json", str(out / "speed.json")],
    "demo": lambda nope, out: ["demo", "--out", str(out), "--quick"],
    "pretrain": lambda nope, out: ["pretrain", "--out", str(out), "--quick"],
}


@no_cuda
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_on_a_machine_without_it_is_a_one_line_error_before_any_work(command, tmp_path):
    result = runner.invoke(app, [*COMMANDS[command](tmp_path / "nope", tmp_path / "out"), "--device", "cuda"])
    assert one_line_error(result, "--device cuda: this machine has no CUDA device"), result.output
    assert "nope" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "pretrain"])
def test_an_unknown_precision_is_a_one_line_error_before_any_work(command, tmp_path):
    args = [*COMMANDS[command](tmp_path / "nope", tmp_path / "out"), "--device", "cpu", "--precision", "fp16"]
    result = runner.invoke(app, args)
    assert one_line_error(result, "--precision must be one of fp32, bf16, got 'fp16'"), result.output
    assert not (tmp_path / "out").exists()


def test_auto_is_cuda_only_where_torch_sees_it(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"  # other names as given
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_exit_runs_on_cpu_in_either_precision_and_auto_is_cpu_here(model_dir, wavs):
    def exits(*options):
        result = runner.invoke(app, ["exit", "--model", str(model_dir), "--json", *options, *map(str, wavs)])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    plain = exits("--device", "cpu")
    if not torch.cuda.is_available():
        assert exits() == plain  # the default, auto, is the CPU here
    model = EarlyExitHubert.from_pretrained(model_dir)
    direct = [int(model(torch.from_numpy(audio.load(p))[None]).exit_layers[0]) for p in wavs]
    assert [r["exit_layer"] for r in plain] == direct  # fp32 on the CPU: the library's own answer
    bf16 = exits("--device", "cpu", "--precision", "bf16", "--agreement")
    assert len(bf16) == 2 and all(0 <= r["agreement"] <= 1 for r in bf16)
    assert all(r["head_entropy"] != p["head_entropy"] for r, p in zip(bf16, plain))  # autocast really ran


def test_calibrate_train_heads_and_noise_sweep_run_on_cpu(model_dir, wavs, tmp_path):
    data = str(wavs[0].parent)
    for precision in ("fp32", "bf16"):
        args = ["calibrate", "--model", str(model_dir), "--data", data, "--depth", "2", "--device", "cpu"]
        result = runner.invoke(app, [*args, "--precision", precision])
        assert result.exit_code == 0 and "mean exit depth" in result.output, result.output
    out = tmp_path / "heads"
    args = ["train-heads", "--model", str(model_dir), "--data", data, "--out", str(out), "--steps", "2"]
    result = runner.invoke(app, [*args, "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    log = json.loads((out / "heads_log.json").read_text())["log"]
    assert len(log) == 2 and all(np.isfinite(step["loss"]) for step in log)
    assert EarlyExitHubert.from_pretrained(out / "model").num_layers == 3
    args = ["noise-sweep", "--model", str(model_dir), "--audio", data, "--out", str(tmp_path / "sweep")]
    result = runner.invoke(
        app, [*args, "--noise", "white", "--snr", "clean,10", "--device", "cpu", "--precision", "bf16"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sweep" / "noise_sweep.json").read_text())["summary"]
    assert [(r["noise"], r["snr"]) for r in rows] == [("clean", None), ("white", 10.0)]


def test_minisuperb_extracts_on_the_device_in_the_precision_asked(model_dir, tmp_path, monkeypatch):
    import daisy.downstream.minisuperb as minisuperb

    seen = []

    def run(model, *args, **kw):
        seen.append((next(model.parameters()).device.type, autocast_name("cpu")))
        return {"results": {}, "scores": {}}

    monkeypatch.setenv("DAISY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(minisuperb, "run", run)
    monkeypatch.setattr(minisuperb, "markdown", lambda results, scores: "")
    args = ["minisuperb", "--model", str(model_dir), "--quick", "--tasks", "asr", "--train", "8", "--test", "4"]
    for options in (["--device", "cpu"], ["--device", "cpu", "--precision", "bf16"]):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), *options])
        assert result.exit_code == 0, result.output
    assert seen == [("cpu", "fp32"), ("cpu", "bf16")]


def test_minisuperb_features_are_cached_per_precision_and_probes_train_in_float32(tmp_path):
    from daisy.downstream.minisuperb import MiniSuperbConfig, extract, train_probe
    from daisy.downstream.tasks import TaskData

    model = random_early_exit()
    wavs = [np.asarray(w[:n]) for w, n in zip(*varied_batch(4))]
    plain = extract(model, wavs, tmp_path / "f")
    data, config = TaskData(wavs, speakers=[0, 1, 0, 1]), MiniSuperbConfig(size="quick")
    probe = train_probe("sid", plain, data, None, config)
    with inference("cpu", "bf16"):
        half = extract(model, wavs, tmp_path / "f")
        again = extract(model, wavs, tmp_path / "f")  # read back from its cache
        probe_inside = train_probe("sid", plain, data, None, config)
    assert plain.key != half.key == again.key and all(s.device.type == "cpu" for s in half.states)
    assert not torch.equal(plain.scores["entropy"], half.scores["entropy"])
    assert torch.equal(half.scores["entropy"], again.scores["entropy"])
    inside = probe_inside.state_dict()  # probes train in float32 inside the region: the same probe, bit for bit
    assert all(torch.equal(v, inside[k]) for k, v in probe.state_dict().items())


def test_head_training_steps_stay_float32_under_bf16():
    from daisy.training.train_heads import HeadObjective

    model = random_early_exit()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 5, 16, generator=g) * 1e-3 for _ in range(3)]
    valid, targets = torch.ones(2, 5, dtype=torch.bool), torch.randint(0, 12, (2, 5), generator=g)
    loss, _ = HeadObjective(model.heads)(feats, valid, targets)
    with inference("cpu", "bf16"):
        inside, _ = HeadObjective(model.heads)(feats, valid, targets)
        bf16_feats, _ = HeadObjective(model.heads)([f.bfloat16() for f in feats], valid, targets)
    assert inside.dtype == torch.float32 and torch.equal(loss, inside)
    assert torch.isfinite(bf16_feats)  # features that come in as bf16 are taken as float32


def test_bench_and_demo_take_the_device_and_precision(model_dir, wavs, tmp_path, monkeypatch):
    out = tmp_path / "speed.json"
    args = ["bench", "--model", str(model_dir), "--audio", str(wavs[0].parent), "--repeats", "1", "--json", str(out)]
    threads = torch.get_num_threads()
    try:
        result = runner.invoke(app, [*args, "--threads", "1", "--device", "cpu", "--precision", "bf16"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert (figures["device"], figures["precision"]) == ("cpu", "bf16")
    assert all(1 <= r["mean_depth"] <= 3 for r in figures["rows"])

    import daisy.apps.demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda folder, config: seen.append((config.device, config.precision)))
    for options in (["--device", "cpu"], ["--device", "cpu", "--precision", "bf16"]):
        assert runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), *options]).exit_code == 0
    assert seen == [("cpu", "fp32"), ("cpu", "bf16")]


def test_bf16_autocast_keeps_most_exits_and_the_scores_in_float32():
    model = random_early_exit()
    wavs, lengths = varied_batch(16)
    fp32 = model.trace(wavs, lengths, keep_states=False)
    with inference("cpu", "fp32"):  # fp32 is the model as it is, bit for bit
        assert torch.equal(model.trace(wavs, lengths, keep_states=False).scores["entropy"], fp32.scores["entropy"])
    with inference("cpu", "bf16"):
        bf16 = model.trace(wavs, lengths, keep_states=False)
    assert bf16.scores["entropy"].dtype == torch.float32  # decided on float32 scores of bf16 logits
    assert not torch.equal(bf16.scores["entropy"], fp32.scores["entropy"])  # autocast did run
    model.policy = policies.calibrate_budget(fp32.scores["entropy"], 2.0)
    exits = model.policy.exit_layers(fp32.scores)
    assert len(set(exits.tolist())) == 3  # exits at every layer: a share that can fall
    with inference("cpu", "bf16"):
        live = model(wavs, lengths, output_hidden_states=False).exit_layers
    assert torch.equal(live, model.policy.exit_layers(bf16.scores))  # the live path decides as its trace
    # measured on this model: 14 of 16 (its random heads magnify bf16's rounding of tiny feed-forward outputs)
    assert (live == exits).float().mean() >= 0.8


def test_exact_turns_autocast_off_inside_and_costs_nothing_outside():
    a = torch.randn(4, 8)
    with inference("cpu", "bf16"):
        assert (a @ a.T).dtype == torch.bfloat16
        with exact("cpu"):
            assert (a @ a.T).dtype == torch.float32 and autocast_name("cpu") == "fp32"
        assert autocast_name("cpu") == "bf16"
    assert type(exact("cpu")).__name__ == "nullcontext"


def test_under_torchrun_a_bare_cuda_is_each_process_s_own_gpu(monkeypatch):
    from daisy.distributed import rank_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("cuda") == "cuda:1"
    assert rank_device("cuda:0") == "cuda:0" and rank_device("cpu") == "cpu"  # chosen devices as given
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="LOCAL_RANK 1"):
        rank_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_device("cuda") == "cuda"
