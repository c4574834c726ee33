"""EarlyExitHubert: compaction, batch invariance, the offline trace path, persistence."""

import json

import pytest
import torch

from conftest import padded_batch, random_early_exit, varied_batch
from daisy import policies
from daisy.model import EarlyExitHubert


def median_threshold(model, wavs, lengths):
    """An entropy threshold that lets some utterances exit at layer 1 and not others, far from every
    observed score (so rounding in batched vs single runs cannot flip a decision): the middle of the
    widest gap between the sorted layer-1 scores, away from the extremes."""
    with torch.no_grad():
        entropy = model.trace(wavs, lengths).scores["entropy"]
    values = entropy[:, 0].sort().values
    middle = values[1:-1]
    gap = int((middle[1:] - middle[:-1]).argmax())
    return float(middle[gap] + middle[gap + 1]) / 2


def test_fixed_at_last_layer_equals_the_backbone():
    model = random_early_exit()
    wavs, lengths = varied_batch(4)
    model.policy = policies.Fixed(layer=model.num_layers)
    with torch.no_grad():
        out = model(wavs, lengths)
        expected = model.backbone.hidden_states(wavs, lengths)
    assert out.exit_layers.tolist() == [3] * 4
    for a, b in zip(out.hidden_states, expected):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out.last_hidden_state, expected[-1])
    assert out.scores == {}  # a fixed exit runs no head


def test_fixed_exit_truncates_and_repeats_the_exit_state():
    model = random_early_exit()
    wavs, lengths = varied_batch(3)
    model.policy = policies.Fixed(layer=2)
    with torch.no_grad():
        out = model(wavs, lengths)
        expected = model.backbone.hidden_states(wavs, lengths, num_layers=2)
    assert out.exit_layers.tolist() == [2, 2, 2]
    torch.testing.assert_close(out.hidden_states[2], expected[2])
    torch.testing.assert_close(out.hidden_states[3], expected[2])
    torch.testing.assert_close(out.last_hidden_state, expected[2])


def test_fixed_exit_runs_only_its_layers_and_decides_nothing(monkeypatch):
    model = random_early_exit()
    wavs, lengths = varied_batch(3)
    model.policy = policies.Fixed(layer=2)
    ran = []
    original = model.backbone.layer
    monkeypatch.setattr(
        model.backbone, "layer", lambda i, *args, **kwargs: ran.append(i) or original(i, *args, **kwargs)
    )
    monkeypatch.setattr(policies.Fixed, "decide", lambda *args: pytest.fail("a fixed exit needs no decisions"))
    with torch.no_grad():
        out = model(wavs, lengths, output_hidden_states=False)
    assert ran == [1, 2] and out.exit_layers.tolist() == [2, 2, 2] and out.scores == {}


@pytest.mark.parametrize(
    "stable,norm,head_input", [(False, "layer", "ffn"), (True, "layer", "output"), (False, "group", "ffn")]
)
def test_outputs_do_not_depend_on_batch_mates(stable, norm, head_input):
    model = random_early_exit(stable=stable, norm=norm, head_input=head_input)
    wavs, lengths = varied_batch(8)
    model.policy = policies.Entropy(threshold=median_threshold(model, wavs, lengths))
    with torch.no_grad():
        batched = model(wavs, lengths)
        assert len(set(batched.exit_layers.tolist())) > 1, "test needs varied exits"
        frames = batched.lengths.tolist()
        for i, n in enumerate(lengths.tolist()):
            alone = model(wavs[i : i + 1, :n])
            assert alone.exit_layers.item() == batched.exit_layers[i].item()
            for a, b in zip(alone.hidden_states, batched.hidden_states):
                torch.testing.assert_close(a[0, : frames[i]], b[i, : frames[i]], atol=1e-5, rtol=0)
            for name, s in alone.scores.items():
                torch.testing.assert_close(s[0], batched.scores[name][i], atol=1e-5, rtol=0, equal_nan=True)


def test_live_path_equals_policy_applied_to_the_trace():
    model = random_early_exit()
    wavs, lengths = varied_batch(8, seed=1)
    threshold = median_threshold(model, wavs, lengths)
    for policy in [
        policies.Entropy(threshold=threshold),
        policies.Confidence(threshold=0.5),
        policies.Entropy(threshold=[threshold - 0.2, threshold + 0.1, 0.0]),
        policies.Entropy(threshold=threshold, min_layer=2),  # layer 1 is neither read nor scored
        policies.Confidence(threshold=0.5, min_layer=2),
        policies.Budget(threshold=[threshold, threshold + 0.1], min_layer=2, target_depth=2.5),
        policies.Fixed(layer=1),
        policies.Fixed(layer=2),
    ]:
        model.policy = policy
        with torch.no_grad():
            live = model(wavs, lengths)
            trace = model.trace(wavs, lengths)
        exits = policy.exit_layers(trace.scores)
        assert exits.tolist() == live.exit_layers.tolist()
        offline = trace.select(exits, policy)
        for i, n in enumerate(live.lengths.tolist()):
            for a, b in zip(live.hidden_states, offline.hidden_states):
                torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                live.last_hidden_state[i, :n], offline.last_hidden_state[i, :n], atol=1e-5, rtol=0
            )
        assert set(live.scores) == set(policy.needs)  # a fixed exit needs none: no head runs
        for name, value in live.scores.items():  # only what the policy reads, for the layers run
            torch.testing.assert_close(value, offline.scores[name], equal_nan=True)
            assert value[:, 0].isnan().all() == (getattr(policy, "min_layer", 1) > 1)


def test_the_live_path_decides_only_where_the_policy_reads(monkeypatch):
    model = random_early_exit()  # 3 layers
    wavs, lengths = varied_batch(4)
    decided, scored = [], []
    original_decide, original_scores = policies.Confidence.decide, model.heads.scores
    monkeypatch.setattr(
        policies.Confidence,
        "decide",
        lambda self, layer, s: decided.append((layer, set(s))) or original_decide(self, layer, s),
    )
    monkeypatch.setattr(model.heads, "scores", lambda layer, *a: scored.append(layer) or original_scores(layer, *a))
    model.policy = policies.Confidence(threshold=1.0, min_layer=2)  # nobody is that sure: everyone runs on
    with torch.no_grad():
        out = model(wavs, lengths)
    assert out.exit_layers.tolist() == [3] * 4
    assert decided == [(2, {"confidence"})] and scored == [2]  # not below min_layer, not at the last layer


def test_compaction_runs_each_layer_only_on_utterances_still_running():
    model = random_early_exit()
    wavs, lengths = varied_batch(8, seed=2)
    model.policy = policies.Entropy(threshold=median_threshold(model, wavs, lengths))
    seen = []
    original = model.backbone.layer

    def spy(i, x, mask, *args, **kwargs):
        seen.append((i, x.shape[0], x.shape[1], int(mask.sum(1).max())))
        return original(i, x, mask, *args, **kwargs)

    model.backbone.layer = spy
    with torch.no_grad():
        out = model(wavs, lengths)
    for i, rows, width, longest in seen:
        assert rows == int((out.exit_layers >= i).sum())
        assert width == longest  # time axis trimmed to the longest utterance still running


def test_oracle_policy_reads_the_true_loss_and_needs_targets():
    model = random_early_exit()
    wavs, lengths = varied_batch(4)
    model.policy = policies.Oracle(threshold=1.0)
    model.backbone.layer = lambda *a, **k: pytest.fail("checked before any layer runs")
    with pytest.raises(ValueError, match="needs targets"):
        model(wavs, lengths)
    del model.backbone.layer
    targets = torch.zeros(4, 40, dtype=torch.long)
    with torch.no_grad():
        out = model(wavs, lengths, targets=targets)
        trace = model.trace(wavs, lengths, targets=targets)
    assert out.exit_layers.tolist() == policies.Oracle(threshold=1.0).exit_layers(trace.scores).tolist()
    model.policy = policies.Fixed(layer=2)  # targets add the loss to any policy's scores
    with torch.no_grad():
        fixed = model(wavs, lengths, targets=targets)
    assert fixed.exit_layers.tolist() == [2] * 4 and fixed.scores["loss"][:, :2].isfinite().all()


def test_save_and_load_round_trip(tmp_path):
    model = random_early_exit()
    model.policy = policies.Entropy(threshold=[1.0, 2.0, 3.0], min_layer=2)
    model.save_pretrained(tmp_path / "m")
    loaded = EarlyExitHubert.from_pretrained(tmp_path / "m")
    assert loaded.policy == model.policy
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "daisy.json",
        "heads.safetensors",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    # saving over a model directory keeps what is not the model's (a card) and drops parts it no longer has
    (tmp_path / "m" / "MODEL_CARD.md").write_text("# card\n")
    (tmp_path / "m" / "kmeans.safetensors").write_bytes(b"stale")
    loaded.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "MODEL_CARD.md").read_text() == "# card\n"
    assert not (tmp_path / "m" / "kmeans.safetensors").exists()
    wavs, lengths = varied_batch(3)
    with torch.no_grad():
        a, b = model(wavs, lengths), loaded(wavs, lengths)
    assert a.exit_layers.tolist() == b.exit_layers.tolist()
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)


def test_task_policies_round_trip_beside_the_models_own_and_are_chosen_by_name(tmp_path):
    model = random_early_exit()
    own = model.policy
    model.set_task_policy("asr", policies.Fixed(layer=3))
    model.set_task_policy("se", policies.Entropy(threshold=[0.5, 0.7], min_layer=2))
    assert model.policy == own and model.tasks == ["asr", "se"]
    with pytest.raises(ValueError, match="fixed exit layer 4 is past the model's 3 layers"):
        model.set_task_policy("sid", policies.Fixed(layer=4))
    model.save_pretrained(tmp_path / "m")
    loaded = EarlyExitHubert.from_pretrained(tmp_path / "m")
    assert loaded.policy == own and loaded.task_policy("se") == policies.Entropy(threshold=[0.5, 0.7], min_layer=2)
    wavs, lengths = varied_batch(3)
    with torch.no_grad():
        assert loaded.use_task("asr")(wavs, lengths).exit_layers.tolist() == [3, 3, 3]
    assert loaded.policy == policies.Fixed(layer=3)
    with pytest.raises(
        ValueError, match=r"no policy for task 'sid' in this model \(tasks with their own policy: asr, se\)"
    ):
        loaded.task_policy("sid")
    config = json.loads((tmp_path / "m" / "daisy.json").read_text())
    for policy, problem in [
        ({"name": "fixed", "layer": 9}, "fixed exit layer 9 is past"),
        ({"name": "x"}, "unknown"),
        (5, ""),
    ]:
        (tmp_path / "m" / "daisy.json").write_text(json.dumps({**config, "task_policies": {"sid": policy}}))
        with pytest.raises(ValueError, match=f"daisy.json: task 'sid'.s policy: {problem}"):
            EarlyExitHubert.from_pretrained(tmp_path / "m")


def test_new_heads_get_each_tasks_budget_calibrated_again_and_other_task_policies_kept():
    from daisy.calibration import calibrate_model, recalibrate_tasks

    model = random_early_exit()
    wavs = [w[:n].numpy() for w, n in zip(*varied_batch(8))]
    before = calibrate_model(model, wavs, 2.5, per_layer=True, min_layer=2, task="asr")
    model.set_task_policy("sid", policies.Fixed(layer=2))
    with torch.no_grad():
        for head in model.heads.heads:  # as if the heads had trained on: other entropies
            head.weight.mul_(0.3)
    assert recalibrate_tasks(model, wavs) == ["sid"]
    after = model.task_policy("asr")
    assert (after.target_depth, after.min_layer, len(after.threshold)) == (2.5, 2, len(before.threshold))
    assert after.threshold != before.threshold
    reached = after.exit_layers(model.trace(*varied_batch(8), keep_states=False).scores).float().mean().item()
    assert model.config.provenance["task_calibration"]["asr"]["reached_depth"] == pytest.approx(reached, abs=1e-4)
    assert model.task_policy("sid") == policies.Fixed(layer=2)


def test_new_heads_get_each_tasks_budget_calibrated_as_it_was_asked_for_rare_exits_included():
    from daisy.calibration import calibrate_model, recalibrate_tasks

    model = random_early_exit()
    wavs = [w[:n].numpy() for w, n in zip(*varied_batch(8))]
    assert calibrate_model(model, wavs, 2.5, task="asr", rare_exits=0.99).min_layer == 2  # raised up to the target
    with torch.no_grad():
        for head in model.heads.heads:
            head.weight.mul_(0.3)
    recalibrate_tasks(model, wavs)
    record = model.config.provenance["task_calibration"]["asr"]
    assert (record["requested_min_layer"], record["min_layer"], record["rare_exits"]) == (1, 2, 0.99)
    assert model.task_policy("asr").min_layer == 2


def test_loading_a_plain_backbone_dir_says_what_is_missing(tmp_path):
    model = random_early_exit()
    model.backbone.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no daisy.json"):
        EarlyExitHubert.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "text, problem",
    [("{not json", "Expecting property name"), ('{"num_classes": 12, "colour": 1}', "colour"), ("{}", "num_classes")],
)
def test_a_broken_daisy_json_is_named_with_its_problem(tmp_path, text, problem):
    random_early_exit().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "daisy.json").write_text(text)
    with pytest.raises(ValueError, match=f"daisy.json: .*{problem}"):
        EarlyExitHubert.from_pretrained(tmp_path / "model")


def test_bad_input_reaches_the_user_as_value_error():
    model = random_early_exit()
    with pytest.raises(ValueError, match="utterance 0 has 100 samples"):
        model(*padded_batch([100]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_any_float_input_runs_as_float32(dtype):
    model = random_early_exit()
    wavs, lengths = varied_batch(2)
    wavs = wavs.to(dtype)  # soundfile reads float64 by default
    with torch.no_grad():
        got, want = model(wavs, lengths), model(wavs.float(), lengths)
    assert got.exit_layers.tolist() == want.exit_layers.tolist()
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=0, atol=0)


def test_corrupt_or_mismatched_weight_files_are_named(tmp_path):
    random_early_exit().save_pretrained(tmp_path / "m")
    heads = tmp_path / "m" / "heads.safetensors"
    saved = heads.read_bytes()
    heads.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="heads.safetensors: not a readable safetensors file"):
        EarlyExitHubert.from_pretrained(tmp_path / "m")
    heads.write_bytes(saved)
    config = json.loads((tmp_path / "m" / "daisy.json").read_text())
    (tmp_path / "m" / "daisy.json").write_text(json.dumps({**config, "num_classes": 5}))
    mismatch = r"heads.safetensors: exit heads do not match the model \(heads.0.bias: \(12,\) in the file, \(5,\)"
    with pytest.raises(ValueError, match=mismatch):
        EarlyExitHubert.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "daisy.json").write_text(json.dumps({**config, "policy": {"name": "fixed", "layer": 9}}))
    with pytest.raises(ValueError, match="daisy.json: fixed exit layer 9 is past the model's 3 layers"):
        EarlyExitHubert.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "daisy.json").write_text(json.dumps({**config, "policy": {"name": "entropi"}}))
    with pytest.raises(ValueError, match="daisy.json: unknown policy 'entropi'"):
        EarlyExitHubert.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "daisy.json").write_text(json.dumps(config))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load the HuBERT weights"):
        EarlyExitHubert.from_pretrained(tmp_path / "m")


def test_head_scores_equal_their_definitions_over_valid_frames():
    from daisy.heads import ExitHeads

    torch.manual_seed(0)
    heads = ExitHeads(2, 16, 7)
    feats = torch.randn(3, 10, 16) * 3
    mask = torch.arange(10)[None] < torch.tensor([10, 6, 1])[:, None]
    targets = torch.randint(0, 7, (3, 10))
    got = heads.scores(2, feats, mask, targets)
    for b in range(3):
        n = int(mask[b].sum())
        logits = heads.heads[1](feats[b, :n])
        dist = torch.distributions.Categorical(logits=logits)
        torch.testing.assert_close(got["entropy"][b], dist.entropy().mean())
        torch.testing.assert_close(got["confidence"][b], dist.probs.max(-1).values.mean())
        torch.testing.assert_close(got["loss"][b], torch.nn.functional.cross_entropy(logits, targets[b, :n]))
    assert set(heads.scores(1, feats, mask, which=("entropy",))) == {"entropy"}


def test_a_low_rank_head_is_the_product_of_its_two_factors_and_round_trips(tmp_path):
    from daisy.heads import ExitHeads

    heads = ExitHeads(3, 16, 12, rank=4)
    feats = torch.randn(2, 5, 16)
    down, up = heads.heads[1]
    torch.testing.assert_close(heads.logits(2, feats), feats @ (up.weight @ down.weight).T + up.bias)
    assert down.bias is None and sum(p.numel() for p in heads.heads[0].parameters()) == 16 * 4 + 4 * 12 + 12
    for rank in (0, 12):
        with pytest.raises(ValueError, match="head rank must be in 1..11"):
            ExitHeads(3, 16, 12, rank=rank)
    model = EarlyExitHubert.from_backbone(random_early_exit().backbone, 12, head_rank=4)
    assert model.heads.rank == 4 and model.config.head_rank == 4
    model.save_pretrained(tmp_path / "m")
    loaded = EarlyExitHubert.from_pretrained(tmp_path / "m")
    wavs, lengths = varied_batch(3)
    with torch.no_grad():
        a, b = model.trace(wavs, lengths), loaded.trace(wavs, lengths)
    torch.testing.assert_close(a.scores["entropy"], b.scores["entropy"])


def test_batches_name_a_too_short_array_by_its_index():
    import numpy as np

    from daisy.data.batching import batches

    arrays = [np.zeros(1000, np.float32), np.zeros(300), np.zeros(800), np.zeros(50)]
    with pytest.raises(ValueError, match=r"wavs\[1\] \(300 samples\), wavs\[3\] \(50 samples\)"):
        next(batches(arrays, min_samples=400))
    assert sorted(i for idx, _, _ in batches(arrays) for i in idx) == [0, 1, 2, 3]
