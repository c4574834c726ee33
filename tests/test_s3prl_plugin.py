"""daisy models as s3prl upstreams, checked through s3prl's own S3PRLUpstream, Featurizers and runner."""

import argparse
import json
import pickle
import subprocess
import sys

import pytest
import torch

pytest.importorskip("s3prl", reason="s3prl extra not installed (pip install 'daisy-speech[s3prl]')")

from conftest import padded_batch, random_early_exit  # noqa: E402
from daisy import policies  # noqa: E402
from daisy.model import EarlyExitHubert  # noqa: E402
from daisy.upstream import s3prl_plugin  # noqa: E402

LENGTHS = [4000, 7000]  # 12 and 21 frames


@pytest.fixture(scope="module")
def s3prl_nn():
    assert s3prl_plugin.register() == ["daisy_hubert", "daisy_hubert_fixed"]
    import s3prl.nn

    return s3prl.nn


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random daisy model whose saved entropy threshold sends one test utterance out at layer 1
    and keeps the other running, so repeated exit states are exercised."""
    model = random_early_exit()
    with torch.no_grad():
        # every state comes out of a layer norm: move them off identity so s3prl's normalize=True shows
        for name, p in model.backbone.named_parameters():
            if "layer_norm" in name:
                p.add_(0.5 * torch.randn_like(p))
        first = model.trace(*padded_batch(LENGTHS)).scores["entropy"][:, 0]
    model.policy = policies.Entropy(threshold=float(first.mean()))
    model.set_task_policy("asr", policies.Entropy(threshold=1e9, min_layer=2))  # everyone exits at layer 2
    path = tmp_path_factory.mktemp("daisy") / "model"
    model.save_pretrained(path)
    return path


def reference(model_dir, policy=None):
    """Our own model's output on the test batch: (ExitOutput, lengths)."""
    model = EarlyExitHubert.from_pretrained(model_dir)
    if policy is not None:
        model.policy = policy
    wavs, lengths = padded_batch(LENGTHS)
    with torch.no_grad():
        return model(wavs, lengths), lengths


def assert_states_equal(ours, theirs, frames):
    assert len(theirs) == len(ours)
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        for i, n in enumerate(frames.tolist()):
            torch.testing.assert_close(b[i, :n], a[i, :n], atol=1e-5, rtol=0, msg=f"layer {layer}, utt {i}")


def test_names_listed(s3prl_nn):
    import s3prl.hub

    names = s3prl_nn.S3PRLUpstream.available_names()
    assert {"daisy_hubert", "daisy_hubert_fixed"} <= set(names)
    assert "daisy_hubert" in dir(s3prl.hub)  # the runner's -u listing


def test_s3prl_upstream_equals_our_model(s3prl_nn, model_dir):
    ours, lengths = reference(model_dir)
    assert ours.exit_layers.tolist() == [1, 3]  # precondition: exits differ
    upstream = s3prl_nn.S3PRLUpstream("daisy_hubert", path_or_url=str(model_dir)).eval()
    assert upstream.num_layers == 4 and upstream.downsample_rates == [320] * 4
    wavs, _ = padded_batch(LENGTHS)
    with torch.no_grad():
        states, state_lengths = upstream(wavs, lengths)
    assert_states_equal(ours.hidden_states, states, ours.lengths)
    # past utterance 0's exit (layer 1) its states repeat the exit state
    torch.testing.assert_close(states[3][0, :12], states[1][0, :12])
    assert not torch.allclose(states[3][1, :21], states[1][1, :21])
    # s3prl counts frames as ceil(samples / 320), one more than the conv front-end gives here
    assert state_lengths[0].tolist() == [13, 22] and ours.lengths.tolist() == [12, 21]


def test_list_input_and_exit_layers(s3prl_nn, model_dir):
    import s3prl.hub

    ours, lengths = reference(model_dir)
    wavs, _ = padded_batch(LENGTHS)
    expert = s3prl.hub.daisy_hubert(ckpt=str(model_dir), model_config=None, refresh=False)
    assert expert.get_downsample_rates("hidden_states") == 320
    with torch.no_grad():
        out = expert([w[:n] for w, n in zip(wavs, lengths.tolist())])
    assert out["exit_layers"].tolist() == ours.exit_layers.tolist()
    assert_states_equal(ours.hidden_states, out["hidden_states"], ours.lengths)
    assert_states_equal([ours.last_hidden_state], [out["last_hidden_state"]], ours.lengths)


def test_short_utterance_gets_a_frame(s3prl_nn, model_dir):
    upstream = s3prl_nn.S3PRLUpstream("daisy_hubert", path_or_url=str(model_dir)).eval()
    wavs, lengths = padded_batch([100, 7000])  # 100 samples: under one frame's 400-sample receptive field
    with torch.no_grad():
        states, state_lengths = upstream(wavs, lengths)
    assert state_lengths[0].tolist() == [1, 22]
    assert all(torch.isfinite(h).all() for h in states)


@pytest.mark.parametrize("normalize", [False, True])
def test_featurizer_is_softmax_weighted_sum(s3prl_nn, model_dir, normalize):
    ours, lengths = reference(model_dir)
    upstream = s3prl_nn.S3PRLUpstream("daisy_hubert", path_or_url=str(model_dir)).eval()
    featurizer = s3prl_nn.Featurizer(upstream, normalize=normalize)
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5]))
        wavs, _ = padded_batch(LENGTHS)
        feats, feats_len = featurizer(*upstream(wavs, lengths))
    stacked = torch.stack(ours.hidden_states)  # (L+1, B, T, D)
    if normalize:  # s3prl: F.layer_norm over the feature axis of each layer's state, no affine, eps 1e-5
        mean = stacked.mean(-1, keepdim=True)
        var = stacked.var(-1, unbiased=False, keepdim=True)
        stacked = (stacked - mean) / torch.sqrt(var + 1e-5)
    weights = torch.softmax(torch.tensor([0.3, -1.0, 2.0, 0.5]), 0)
    expected = (weights[:, None, None, None] * stacked).sum(0)
    assert_states_equal([expected], [feats], ours.lengths)


def test_runner_featurizer_is_softmax_weighted_sum(s3prl_nn, model_dir):
    """The runner's own Featurizer (s3prl.upstream.interfaces) on the upstream's dict output."""
    import s3prl.hub
    from s3prl.upstream.interfaces import Featurizer

    ours, lengths = reference(model_dir)
    expert = s3prl.hub.daisy_hubert(ckpt=str(model_dir)).eval()
    featurizer = Featurizer(expert, upstream_device="cpu")
    assert featurizer.downsample_rate == 320 and featurizer.output_dim == 16
    wavs, _ = padded_batch(LENGTHS)
    wav_list = [w[:n] for w, n in zip(wavs, lengths.tolist())]
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([-0.5, 1.0, 0.0, 2.0]))
        feats = featurizer(wav_list, expert(wav_list))
    weights = torch.softmax(torch.tensor([-0.5, 1.0, 0.0, 2.0]), 0)
    expected = (weights[:, None, None, None] * torch.stack(ours.hidden_states)).sum(0)
    assert_states_equal([expected], [torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)], ours.lengths)


@pytest.mark.parametrize(
    ("entry", "config", "options", "expected"),
    [
        ("daisy_hubert_fixed", {"layer": 2}, {}, policies.Fixed(layer=2)),
        ("daisy_hubert_fixed", None, {"layer": 1}, policies.Fixed(layer=1)),
        ("daisy_hubert", {"policy": "fixed", "layer": 2}, {}, policies.Fixed(layer=2)),
        ("daisy_hubert", {"policy": "fixed", "layer": 2}, {"layer": 1}, policies.Fixed(layer=1)),  # keywords win
        ("daisy_hubert", None, {"threshold": 10.0}, policies.Entropy(threshold=10.0)),  # the saved policy, changed
        ("daisy_hubert", None, {"policy": "confidence", "threshold": 0.0}, policies.Confidence(threshold=0.0)),
        ("daisy_hubert", None, {"task": "asr"}, policies.Entropy(threshold=1e9, min_layer=2)),  # the task's own
        ("daisy_hubert", {"task": "asr"}, {"threshold": 0.0}, policies.Entropy(threshold=0.0, min_layer=2)),
    ],
)
def test_policy_options(s3prl_nn, model_dir, tmp_path, entry, config, options, expected):
    model_config = None
    if config is not None:  # JSON, which the YAML reader also reads
        model_config = tmp_path / "policy.json"
        model_config.write_text(json.dumps(config))
    extra_conf = {**options, **({"model_config": str(model_config)} if model_config else {})}
    upstream = s3prl_nn.S3PRLUpstream(entry, path_or_url=str(model_dir), extra_conf=extra_conf).eval()
    assert upstream.upstream.model.policy == expected
    ours, lengths = reference(model_dir, expected)
    wavs, _ = padded_batch(LENGTHS)
    with torch.no_grad():
        out = upstream.upstream([w[:n] for w, n in zip(wavs, lengths.tolist())])
    assert out["exit_layers"].tolist() == ours.exit_layers.tolist()
    if isinstance(expected, policies.Fixed):
        assert out["exit_layers"].tolist() == [expected.layer] * 2
    assert_states_equal(ours.hidden_states, out["hidden_states"], ours.lengths)


def test_fixed_layer_from_yaml(s3prl_nn, model_dir, tmp_path):
    (tmp_path / "fixed.yaml").write_text("layer: 2\n")
    import s3prl.hub

    expert = s3prl.hub.daisy_hubert_fixed(ckpt=str(model_dir), model_config=str(tmp_path / "fixed.yaml"))
    with torch.no_grad():
        out = expert([torch.randn(5000), torch.randn(9000)])
    assert out["exit_layers"].tolist() == [2, 2]
    torch.testing.assert_close(out["hidden_states"][3], out["hidden_states"][2])


@pytest.mark.parametrize(
    ("entry", "options", "message"),
    [
        ("daisy_hubert_fixed", {}, "needs the exit layer"),
        ("daisy_hubert_fixed", {"policy": "entropy", "layer": 2}, "use daisy_hubert"),
        ("daisy_hubert", {"policy": "fixed", "threshold": 1.0}, "do not fit"),
        ("daisy_hubert", {"policy": "nope"}, "unknown policy"),
        ("daisy_hubert", {"target_depth": 1.0}, "target_depth 1.0 is not a setting"),
        ("daisy_hubert", {"policy": "budget", "threshold": 0.5, "target_depth": 3.0}, "calibrate"),
        ("daisy_hubert", {"policy": "budget"}, "policy 'budget' needs threshold"),
        ("daisy_hubert", {"train_exits": "dropout"}, "train_exits 'dropout': choose one of eval, live"),
        (
            "daisy_hubert",
            {"task": "sid"},
            r"model: no policy for task 'sid' in this model \(tasks with their own policy: asr",
        ),
    ],
)
def test_bad_policy_options(s3prl_nn, model_dir, entry, options, message):
    with pytest.raises(ValueError, match=message):
        s3prl_nn.S3PRLUpstream(entry, path_or_url=str(model_dir), extra_conf=options)


def test_missing_ckpt_says_what_to_pass(s3prl_nn):
    with pytest.raises(ValueError, match="path_or_url=DIR"):
        s3prl_nn.S3PRLUpstream("daisy_hubert")


def test_torchaudio_shim(s3prl_nn):
    """Reproduces the breakage the shim is for (a CUDA torchaudio wheel next to a CPU torch), then checks
    the shimmed import still gives the pure-Python features s3prl's upstreams use."""
    plain = subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True, text=True)
    if plain.returncode == 0:
        pytest.skip("torchaudio's extension loads here; the shim is a no-op")
    assert "OSError" in plain.stderr
    code = (
        "import torch; from daisy.upstream.s3prl_compat import import_torchaudio; ta = import_torchaudio(); "
        "print(tuple(ta.compliance.kaldi.fbank(torch.randn(1, 16000)).shape))"
    )
    shimmed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shimmed.returncode == 0, shimmed.stderr
    assert shimmed.stdout.strip().endswith("(98, 23)")


def test_runner_trains_and_evaluates(s3prl_nn, model_dir, tmp_path, capfd):
    """s3prl's run_downstream trains its `example` downstream (random audio, no download) on our upstream
    for two steps on CPU, then evaluates the saved checkpoint."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "runner: {total_steps: 2, gradient_clipping: 1, gradient_accumulate_steps: 1, log_step: 1,\n"
        "         eval_step: 2, save_step: 2, max_keep: 1, eval_dataloaders: [dev], evaluate_ratio: 0}\n"
        "optimizer: {name: TorchOptim, torch_optim_name: Adam, lr: 1.0e-2}\n"
        "downstream_expert:\n"
        "  datarc: {train_batch_size: 2, eval_batch_size: 2, num_workers: 0}\n"
        "  modelrc: {input_dim: 8}\n"
    )
    (tmp_path / "policy.yaml").write_text("threshold: 0.5\n")
    expdir = tmp_path / "exp"
    common = ["--device", "cpu", "-p", str(expdir)]
    train = ["-m", "train", "-d", "example", "-c", str(config), "-u", "daisy_hubert", "-k", str(model_dir)]
    assert s3prl_plugin.run_s3prl_downstream([*train, "-g", str(tmp_path / "policy.yaml"), *common]) == 0

    with torch.serialization.safe_globals([argparse.Namespace]):  # the runner's own Args, as it reloads them
        states = torch.load(expdir / "states-2.ckpt", weights_only=True)
    assert states["Args"].upstream == "daisy_hubert" and states["Step"] == 2
    assert states["Featurizer"]["weights"].shape == (4,)  # L + 1 states
    assert states["Featurizer"]["weights"].abs().sum() > 0  # trained away from s3prl's zero init
    assert states["Downstream"]["connector.weight"].shape == (8, 16)  # our hidden size in

    capfd.readouterr()
    evaluate = ["-m", "evaluate", "-e", str(expdir / "states-2.ckpt"), "-t", "test", *common]
    assert s3prl_plugin.run_s3prl_downstream(evaluate) == 0
    out, err = capfd.readouterr()
    assert "Loading Featurizer weights from the previous experiment" in out
    assert "Loading Downstream weights from the previous experiment" in out
    assert "test: 1it" in err


def test_runner_checkpoints_need_the_namespace_shim(s3prl_nn, tmp_path):
    """Why `allow_runner_checkpoints` exists: torch's default `weights_only` load refuses the runner's
    `Args` namespace. Fails once torch accepts it, and the shim can go."""
    import argparse

    torch.save({"Args": argparse.Namespace(upstream="daisy_hubert")}, tmp_path / "states.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(tmp_path / "states.ckpt")


# -- import order: s3prl before or after daisy.upstream / register() -------------------------------------
def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_daisy_first_needs_no_register(model_dir):
    """`import daisy.upstream` before s3prl: s3prl.hub gets our names as it loads, without register()."""
    code = f"""
import daisy.upstream
import torch
from s3prl.nn import S3PRLUpstream
upstream = S3PRLUpstream("daisy_hubert", path_or_url={str(model_dir)!r}).eval()
with torch.no_grad():
    states, _ = upstream(torch.randn(1, 8000), torch.tensor([8000]))
print(len(states))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("4")


def test_s3prl_first_then_daisy(model_dir):
    """s3prl imported before daisy: where torchaudio's extension cannot load (a CPU torch next to PyPI's
    CUDA torchaudio wheel) that import fails by itself, and succeeds once daisy.upstream is imported; where
    it loads, s3prl.hub gets our names when daisy.upstream is imported. Either way no register() is needed."""
    code = f"""
try:
    import s3prl.hub
    print("s3prl loaded first:", hasattr(s3prl.hub, "daisy_hubert"))
except OSError as e:
    print("s3prl alone:", type(e).__name__, "_torchaudio" in str(e))
import daisy.upstream
import s3prl.hub
from s3prl.nn import S3PRLUpstream
print("names:", "daisy_hubert" in dir(s3prl.hub), "daisy_hubert" in S3PRLUpstream.available_names())
print(type(S3PRLUpstream("daisy_hubert", path_or_url={str(model_dir)!r}).upstream).__name__)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] in ("s3prl alone: OSError True", "s3prl loaded first: False")
    assert lines[-2:] == ["names: True True", "UpstreamExpert"]


# -- training mode (the runner's -f) ----------------------------------------------------------------------
def varied_wavs(n=12):
    from conftest import varied_batch

    wavs, lengths = varied_batch(n)
    return [w[:k] for w, k in zip(wavs, lengths.tolist())]


@pytest.fixture
def near_threshold(s3prl_nn, model_dir):
    """An expert whose threshold is the median first-layer entropy of `varied_wavs`: dropout moves some
    utterances across it."""
    import s3prl.hub

    expert = s3prl.hub.daisy_hubert(ckpt=str(model_dir)).eval()
    wavs = varied_wavs()
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    with torch.no_grad():
        entropy = expert.model.trace(batch, torch.tensor([len(w) for w in wavs])).scores["entropy"]
    expert.model.policy = policies.Entropy(threshold=float(entropy[:, 0].median()))
    return expert, wavs


def test_training_mode_exits_as_in_eval_mode(near_threshold):
    expert, wavs = near_threshold
    with torch.no_grad():
        evaluated = expert(wavs)["exit_layers"]
    assert len(set(evaluated.tolist())) > 1  # precondition: exits differ between utterances
    expert.train()
    torch.manual_seed(0)
    runs = [expert(wavs) for _ in range(3)]
    for out in runs:
        assert out["exit_layers"].tolist() == evaluated.tolist()
    assert expert.model.training and expert.model.heads.training  # the decision pass left the modes as they were
    assert not torch.allclose(runs[0]["hidden_states"][-1], runs[1]["hidden_states"][-1])  # dropout is on
    runs[0]["last_hidden_state"].pow(2).mean().backward()  # gradients reach the backbone
    assert expert.model.backbone.model.encoder.layers[0].feed_forward.output_dense.weight.grad.abs().sum() > 0


def test_live_training_exits_move_with_dropout(s3prl_nn, model_dir):
    """What `train_exits: eval` prevents: deciding on the training pass, exits change from call to call."""
    import s3prl.hub

    live = s3prl.hub.daisy_hubert(ckpt=str(model_dir), train_exits="live").train()
    wavs = varied_wavs()
    batch, lengths = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), torch.tensor([len(w) for w in wavs])
    torch.manual_seed(0)
    with torch.no_grad():  # a threshold amid the entropies dropout gives (it lowers them here)
        entropy = live.model.trace(batch, lengths).scores["entropy"]
        live.model.policy = policies.Entropy(threshold=float(entropy[:, 0].median()))
        exits = {tuple(live(wavs)["exit_layers"].tolist()) for _ in range(5)}
    assert len(exits) > 1


def test_training_pass_without_dropout_equals_eval_mode(near_threshold):
    """The training pass's states (each utterance run to its exit, the exit state repeated past it) are
    the eval-mode model's own once dropout is off."""
    expert, wavs = near_threshold
    with torch.no_grad():
        evaluated = expert(wavs)
        for module in expert.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(getattr(module, "dropout", None), float):  # attention: a rate given to sdpa
                module.dropout = 0.0
        trained = expert.train()(wavs)
    assert trained["exit_layers"].tolist() == evaluated["exit_layers"].tolist()
    frames = expert.model.backbone.frame_lengths(torch.tensor([len(w) for w in wavs]))
    states = [*evaluated["hidden_states"], evaluated["last_hidden_state"]]
    assert_states_equal(states, [*trained["hidden_states"], trained["last_hidden_state"]], frames)
