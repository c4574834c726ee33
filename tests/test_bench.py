"""daisy.analysis.speed helpers: turn-taking timing, paired ratios and realistic random heads."""

import types

import numpy as np
import pytest
import torch

from conftest import random_early_exit
from daisy import policies
from daisy.analysis.speed import (
    TRAINED_LOGIT_STD,
    _with_quartiles,
    interleaved_seconds,
    ratio_quartiles,
    spread_like_trained,
    timed_inside,
)
from daisy.heads import ExitHeads
from daisy.model import EarlyExitHubert


def test_settings_take_turns_and_only_second_calls_are_timed():
    calls = []
    fns = {name: (lambda p, n, name=name: calls.append((name, p))) for name in ("a", "b")}
    times = interleaved_seconds(fns, [("x", None), ("y", None)], repeats=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    # per batch: a twice, then b twice; batches in order; rounds repeat that
    assert calls[:8] == [("a", "x")] * 2 + [("b", "x")] * 2 + [("a", "y")] * 2 + [("b", "y")] * 2
    assert len(calls) == 24


def test_ratios_are_paired_by_round():
    # drift doubles every round; the paired ratio stays 2, the ratio of medians would not
    assert ratio_quartiles([2.0, 4.0, 8.0], [1.0, 2.0, 4.0]) == (2.0, 2.0, 2.0)
    assert ratio_quartiles([3.0, 1.0, 100.0], [1.0, 1.0, 1.0])[1] == 3.0
    assert ratio_quartiles([5.0], [2.0]) == (2.5, 2.5, 2.5)


def test_quartiles_of_ratios_show_the_spread_over_rounds():
    q1, median, q3 = ratio_quartiles([1.0, 1.1, 1.2, 1.3, 1.4], [1.0] * 5)
    assert (q1, median, q3) == pytest.approx((1.1, 1.2, 1.3))
    cell = _with_quartiles("overhead", lambda x: f"{x * 100:+.1f} %")
    assert cell({"overhead": 0.046, "overhead_quartiles": [0.039, 0.052]}) == "+4.6 % (+3.9 % to +5.2 %)"


@pytest.mark.parametrize("head_input, head_rank", [("ffn", None), ("output", None), ("ffn", 4)])
def test_random_heads_get_the_logit_spread_of_trained_ones(head_input, head_rank):
    model = random_early_exit(head_input=head_input)
    if head_rank is not None:
        model = EarlyExitHubert.from_backbone(model.backbone, 12, head_rank=head_rank)
    wav = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    spread_like_trained(model, wav)
    with torch.no_grad():
        x, mask = model.embed(torch.from_numpy(wav)[None], None)
        for layer in range(1, model.num_layers + 1):
            x, ffn = model.backbone.layer(layer, x, mask, return_ffn=True)
            logits = model.heads.logits(layer, ffn if head_input == "ffn" else x)
            assert logits.std(-1).mean().item() == pytest.approx(TRAINED_LOGIT_STD, rel=1e-4)


def test_time_inside_the_heads_is_measured_and_the_model_left_as_it_was(monkeypatch):
    """On a fake clock where each layer takes 1 and each head call 3, the share inside is exact."""
    import daisy.analysis.speed

    clock = [0.0]
    monkeypatch.setattr(daisy.analysis.speed, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    model = random_early_exit()
    never, own = policies.Entropy(threshold=-1.0), model.policy
    layer, scores = model.backbone.layer, ExitHeads.scores

    def tick(fn, cost):
        def ticked(*args, **kwargs):
            clock[0] += cost
            return fn(*args, **kwargs)

        return ticked

    monkeypatch.setattr(model.backbone, "layer", tick(layer, 1.0))
    monkeypatch.setattr(ExitHeads, "scores", tick(scores, 3.0))
    groups = [(torch.randn(2, 8000), torch.tensor([8000, 6000]))] * 2
    with torch.inference_mode():
        shares = timed_inside(model, never, groups, repeats=2)
    heads = model.num_layers - 1  # no head runs after the last layer, where everyone exits
    assert shares == [pytest.approx(3 * heads / (3 * heads + model.num_layers))] * 2
    with torch.inference_mode():  # a policy that exits no earlier than layer 2 runs no head below it
        shares = timed_inside(model, policies.Entropy(threshold=-1.0, min_layer=2), groups, repeats=2)
    assert shares == [pytest.approx(3 * (heads - 1) / (3 * (heads - 1) + model.num_layers))] * 2
    assert "scores" not in vars(model.heads) and model.policy is own and "decide" not in vars(never)


def test_the_first_head_a_models_own_policy_reads():
    from daisy.analysis.speed import first_read

    model = random_early_exit()  # 3 layers
    for policy, first in [
        (policies.Entropy(threshold=1.0), 1),
        (policies.Confidence(threshold=0.5, min_layer=2), 2),
        (policies.Fixed(layer=2), 1),  # reads none: no heads of its own to time
    ]:
        model.policy = policy
        assert first_read(model) == first, policy


@pytest.mark.parametrize(
    "option, value, problem",
    [
        ("--utterances", "-3", "--utterances must be at least 1, got -3"),
        ("--repeats", "0", "--repeats must be at least 1, got 0"),
        ("--threads", "0", "--threads must be at least 1, got 0"),
        ("--classes", "1", "--classes must be at least 2, got 1"),
        ("--head-rank", "0", "--head-rank must be at least 1, got 0"),
        ("--depth", "nan", "--depth is a mean exit depth in layers, at least 1, got nan"),
        ("--depth", "0.5", "--depth is a mean exit depth in layers, at least 1, got 0.5"),
    ],
)
def test_bench_refuses_nonsense_options_before_any_work(monkeypatch, option, value, problem):
    from typer.testing import CliRunner

    import daisy.analysis.speed
    from daisy.apps.cli import app

    monkeypatch.setattr(daisy.analysis.speed, "load_model", lambda *a: pytest.fail("checked before any work"))
    result = CliRunner().invoke(app, ["bench", option, value])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [f"error: {problem}"], result.output
