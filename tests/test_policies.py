"""Exit policies as pure functions of scores."""

import pytest
import torch

from daisy import policies

# 4 utterances x 4 layers of entropies (nats)
ENTROPY = torch.tensor(
    [
        [0.5, 0.4, 0.3, 0.2],  # confident from layer 1
        [2.0, 0.9, 0.5, 0.1],  # crosses 1.0 at layer 2
        [2.0, 1.8, 1.5, 1.2],  # never below 1.0: runs to the end
        [1.5, 1.2, 0.8, 0.6],  # crosses at layer 3
    ]
)


def test_entropy_threshold_exits_at_the_first_layer_below():
    assert policies.Entropy(threshold=1.0).exit_layers({"entropy": ENTROPY}).tolist() == [1, 2, 4, 3]


def test_per_layer_thresholds_and_min_layer():
    per_layer = policies.Entropy(threshold=[0.1, 1.0, 1.0, 0.0])
    assert per_layer.exit_layers({"entropy": ENTROPY}).tolist() == [2, 2, 4, 3]
    late = policies.Entropy(threshold=1.0, min_layer=3)
    assert late.exit_layers({"entropy": ENTROPY}).tolist() == [3, 3, 4, 3]


def test_the_last_layer_always_exits():
    assert policies.Entropy(threshold=-1.0).exit_layers({"entropy": ENTROPY}).tolist() == [4, 4, 4, 4]


def test_fixed_confidence_and_oracle():
    assert policies.Fixed(layer=2).exit_layers({"entropy": ENTROPY}).tolist() == [2, 2, 2, 2]
    confidence = torch.tensor([[0.9, 0.9, 0.9, 0.9], [0.1, 0.2, 0.7, 0.8], [0.1, 0.1, 0.1, 0.1], [0.5, 0.6, 0.6, 0.6]])
    assert policies.Confidence(threshold=0.6).exit_layers({"confidence": confidence}).tolist() == [1, 3, 4, 2]
    assert policies.Oracle(threshold=1.0).exit_layers({"loss": ENTROPY}).tolist() == [1, 2, 4, 3]
    with pytest.raises(ValueError, match="layers are 1-based"):
        policies.Fixed(layer=0)


def test_budget_calibration_reaches_the_target_depth_from_below():
    torch.manual_seed(0)
    entropy = torch.rand(200, 6).cumsum(1).flip(1)  # falls with depth, like trained heads
    for target in [1.5, 3.0, 4.5]:
        for per_layer in (False, True):
            budget = policies.calibrate_budget(entropy, target, per_layer=per_layer)
            depth = budget.exit_layers({"entropy": entropy}).float().mean().item()
            assert target - 0.25 <= depth <= target, (target, per_layer, depth)
            assert budget.target_depth == target
    with pytest.raises(ValueError, match="outside 1..6"):
        policies.calibrate_budget(entropy, 7.0)


def test_budget_calibration_with_a_min_layer_never_exits_below_it():
    torch.manual_seed(0)
    entropy = torch.rand(200, 6).cumsum(1).flip(1)
    for per_layer in (False, True):
        budget = policies.calibrate_budget(entropy, 3.5, per_layer=per_layer, min_layer=3)
        exits = budget.exit_layers({"entropy": entropy})
        assert budget.min_layer == 3 and exits.min() >= 3
        assert 3.25 <= exits.float().mean().item() <= 3.5
        assert not budget.reads(2) and budget.reads(3)
    with pytest.raises(ValueError, match="target depth 2.0 outside 3..6"):
        policies.calibrate_budget(entropy, 2.0, min_layer=3)


def test_budget_calibration_skips_the_heads_of_layers_where_exits_are_rare():
    torch.manual_seed(0)
    entropy = torch.rand(200, 6).cumsum(1).flip(1)
    plain = policies.calibrate_budget(entropy, 3.5)
    exits = plain.exit_layers({"entropy": entropy})
    assert plain.min_layer == 1 and (exits == 1).sum() == 8 and (exits <= 2).sum() == 41  # 4 %, then 20.5 %
    for rare, min_layer in [(0.03, 1), (0.05, 2), (0.2, 2), (0.25, 3)]:
        budget = policies.calibrate_budget(entropy, 3.5, rare_exits=rare)
        depth = budget.exit_layers({"entropy": entropy}).float()
        assert budget.min_layer == min_layer and depth.min() >= min_layer, rare
        assert 3.25 <= depth.mean().item() <= 3.5 and not budget.reads(min_layer - 1)
    assert policies.calibrate_budget(entropy, 3.5, min_layer=2, rare_exits=0.99).min_layer == 3  # up to the target
    with pytest.raises(ValueError, match="rare_exits is a share of the utterances, in 0..1, got 1.5"):
        policies.calibrate_budget(entropy, 3.5, rare_exits=1.5)


def test_policies_round_trip_through_dicts():
    for policy in [
        policies.Entropy(threshold=[1.0, 2.0]),
        policies.Fixed(layer=3),
        policies.Confidence(0.7),
        policies.Oracle(2.0),
        policies.Budget(threshold=1.5, target_depth=3.0),
    ]:
        assert policies.policy_from_dict(policy.to_dict()) == policy
    with pytest.raises(ValueError, match="unknown policy 'magic'"):
        policies.policy_from_dict({"name": "magic"})


def test_a_policy_that_does_not_fit_the_model_is_refused_when_set():
    from conftest import random_early_exit

    model = random_early_exit()  # 3 layers
    model.policy = policies.Entropy(threshold=[1.0, 2.0])  # the last layer's threshold may be left out
    model.policy = policies.Entropy(threshold=[1.0, 2.0, 3.0])
    for policy, problem in [
        (policies.Fixed(layer=4), "fixed exit layer 4 is past the model's 3 layers"),
        (policies.Entropy(threshold=[1.0]), "1 per-layer thresholds for a 3-layer model"),
        (policies.Budget(threshold=[1.0] * 4, target_depth=2.0), "4 per-layer thresholds"),
        (policies.Confidence(0.5, min_layer=4), "min_layer 4 outside 1..3"),
    ]:
        with pytest.raises(ValueError, match=problem):
            model.policy = policy
    assert model.policy == policies.Entropy(threshold=[1.0, 2.0, 3.0])  # unchanged


def test_policy_fields_that_do_not_fit_are_named():
    for spec, problem in [
        ({"name": "fixed", "threshold": 1.0}, "policy 'fixed' has no field threshold (it takes layer)"),
        ({"name": "entropy"}, "policy 'entropy' needs threshold (it takes threshold, min_layer, decide_per)"),
        # a budget's field on another policy says whose it is
        (
            {"name": "entropy", "threshold": 1.0, "target_depth": 3.0},
            "policy 'entropy' has no field target_depth (it takes threshold, min_layer, decide_per); "
            "target_depth is the budget policy's",
        ),
        ("entropy", "a policy is a mapping"),
    ]:
        with pytest.raises(ValueError) as caught:
            policies.policy_from_dict(spec)
        assert str(caught.value) == problem or str(caught.value).startswith(problem), spec


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "spec, problem, got",
    [
        ({"name": "entropy", "threshold": NAN}, "entropy policy: threshold must be a finite number", "nan"),
        ({"name": "entropy", "threshold": INF}, "entropy policy: threshold must be a finite number", "inf"),
        ({"name": "entropy", "threshold": -INF}, "entropy policy: threshold must be a finite number", "-inf"),
        ({"name": "entropy", "threshold": "3.0"}, "entropy policy: threshold must be a finite number", "'3.0'"),
        ({"name": "entropy", "threshold": True}, "entropy policy: threshold must be a finite number", "True"),
        ({"name": "entropy", "threshold": [1.0, NAN]}, "entropy policy: threshold[1] must be a finite number", "nan"),
        ({"name": "entropy", "threshold": 1.0, "min_layer": 0}, "entropy policy: min_layer must be a whole", "0"),
        ({"name": "entropy", "threshold": 1.0, "min_layer": 1.5}, "entropy policy: min_layer must be a whole", "1.5"),
        (
            {"name": "confidence", "threshold": 1.5},
            "confidence policy: threshold must be a finite number in 0..1",
            "1.5",
        ),
        (
            {"name": "confidence", "threshold": -0.1},
            "confidence policy: threshold must be a finite number in 0..1",
            "-0.1",
        ),
        (
            {"name": "confidence", "threshold": NAN},
            "confidence policy: threshold must be a finite number in 0..1",
            "nan",
        ),
        ({"name": "oracle", "threshold": NAN}, "oracle policy: threshold must be a finite number", "nan"),
        (
            {"name": "fixed", "layer": "2"},
            "fixed policy: layer must be a whole number >= 1 (layers are 1-based)",
            "'2'",
        ),
        ({"name": "budget", "threshold": 1.0, "target_depth": NAN}, "budget policy: target_depth must be", "nan"),
        ({"name": "budget", "threshold": INF, "target_depth": 2.0}, "budget policy: threshold must be", "inf"),
    ],
)
def test_nonsense_settings_are_refused_naming_the_field_and_value(spec, problem, got):
    with pytest.raises(ValueError) as caught:
        policies.policy_from_dict(spec)
    message = str(caught.value)
    assert message.startswith(problem) and message.endswith(f"got {got}") and "\n" not in message
    with pytest.raises(ValueError, match="empty list"):
        policies.Entropy(threshold=[])


def test_settings_on_the_edge_are_accepted():
    assert policies.Confidence(threshold=0).threshold == 0.0 and policies.Confidence(threshold=1).threshold == 1.0
    assert policies.Entropy(threshold=(1, 2)) == policies.Entropy(threshold=[1.0, 2.0])  # any sequence: a list
    assert policies.Entropy(threshold=-1.0).threshold == -1.0  # exits nobody early: a setting, not nonsense


def test_policies_say_what_they_read_and_where_everyone_exits():
    assert policies.Entropy(threshold=1.0).needs == ("entropy",)
    assert policies.Confidence(threshold=0.5).needs == ("confidence",)
    assert policies.Oracle(threshold=1.0).needs == ("loss",)
    fixed = policies.Fixed(layer=2)
    assert fixed.needs == () and not any(fixed.reads(layer) for layer in range(1, 5))
    assert fixed.last_layer(4) == 2 and policies.Entropy(threshold=1.0).last_layer(4) == 4
    late = policies.Confidence(threshold=0.5, min_layer=3)
    assert [late.reads(layer) for layer in range(1, 5)] == [False, False, True, True]


def test_every_policy_applies_to_a_trace_of_every_score():
    confidence = 1 - ENTROPY / 2  # high where entropy is low
    trace = {"entropy": ENTROPY, "confidence": confidence, "loss": ENTROPY}
    assert policies.Entropy(threshold=1.0).exit_layers(trace).tolist() == [1, 2, 4, 3]
    assert policies.Confidence(threshold=0.5).exit_layers(trace).tolist() == [1, 2, 4, 3]
    assert policies.Oracle(threshold=1.0).exit_layers(trace).tolist() == [1, 2, 4, 3]
    assert policies.Fixed(layer=3).exit_layers(trace).tolist() == [3, 3, 3, 3]


def test_decide_runs_only_on_the_layers_a_policy_reads(monkeypatch):
    seen = []
    original = policies.Entropy.decide
    monkeypatch.setattr(
        policies.Entropy, "decide", lambda self, layer, s: seen.append(layer) or original(self, layer, s)
    )
    policies.Entropy(threshold=-1.0, min_layer=2).exit_layers({"entropy": ENTROPY})
    assert seen == [2, 3]  # neither below min_layer nor at the last layer (everyone exits there)


def test_a_trace_without_the_score_a_policy_reads_is_named():
    with pytest.raises(ValueError, match="the confidence policy reads confidence scores; given only: entropy"):
        policies.Confidence(threshold=0.5).exit_layers({"entropy": ENTROPY})
    with pytest.raises(ValueError, match="the oracle policy needs targets"):
        policies.Oracle(threshold=1.0).exit_layers({"entropy": ENTROPY})


def test_overriding_a_saved_policy():
    budget = {"name": "budget", "threshold": 0.7, "min_layer": 2, "target_depth": 3.6}
    assert policies.override(budget, {}) == budget
    # another threshold: the calibrated depth no longer holds, so it is a plain entropy policy
    assert policies.override(budget, {"threshold": 0.2}) == {"name": "entropy", "threshold": 0.2, "min_layer": 2}
    assert policies.override(budget, {"policy": "fixed", "layer": 3}) == {"name": "fixed", "layer": 3}
    assert policies.override(budget, {"min_layer": 3}) == {**budget, "min_layer": 3}
    with pytest.raises(ValueError, match="target_depth 3.0 is not a setting but what a budget's calibration aimed at"):
        policies.override(budget, {"threshold": 0.2, "target_depth": 3.0})
