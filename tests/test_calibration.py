"""Calibrating to a guaranteed agreement with the full model: checked on simulated traces whose truth is known."""

import math

import pytest
import torch

from conftest import random_early_exit, varied_batch
from daisy import policies
from daisy.calibration import (
    agreement_bound,
    calibrate_agreement,
    exit_agreement,
    hb_p_value,
    search_agreement,
    threshold_exits,
    trace_scores,
)

# A simulated population: three kinds of utterance (easy, middling, hard) with these shares, each with fixed
# head entropies per layer (so each kind's exit at a threshold is known) and a mean frame agreement per layer
# (the last layer agrees fully by definition). The truth of any threshold is then a weighted sum.
SHARES = torch.tensor([0.5, 0.3, 0.2])
ENTROPY = torch.tensor([[2.2, 1.2, 0.4, 0.1], [2.8, 1.8, 0.9, 0.3], [3.5, 2.6, 1.6, 0.6]])
MEAN_AGREEMENT = torch.tensor([[0.70, 0.90, 0.96, 0.99], [0.55, 0.87, 0.93, 0.99], [0.40, 0.70, 0.93, 0.99]])
THRESHOLDS = torch.tensor([0.0, 0.5, 1.0, 1.3, 1.9, 2.5, 3.0])
FRAMES = 10


def true_agreement(index: int) -> float:
    exits = threshold_exits(ENTROPY, THRESHOLDS[index : index + 1])[:, 0]
    return float((SHARES * exit_agreement(MEAN_AGREEMENT, exits)).sum())


def draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n utterances: their entropies (n, L) and per-layer frame agreements, FRAMES frames each."""
    kind = torch.multinomial(SHARES, n, replacement=True, generator=g)
    agree = torch.binomial(torch.full((n, 4), float(FRAMES)), MEAN_AGREEMENT[kind], generator=g) / FRAMES
    return ENTROPY[kind], agree


def test_the_simulation_has_a_threshold_just_below_the_target():
    truth = [true_agreement(j) for j in range(len(THRESHOLDS))]
    assert truth[0] == 1.0 and truth == sorted(truth, reverse=True)
    assert truth[3] > 0.9 > truth[4] > 0.89  # the trap: on 150 utterances, often above 0.9


def test_the_bound_holds_at_its_rate_over_many_calibration_sets_and_the_naive_choice_does_not():
    g = torch.Generator().manual_seed(0)
    target, delta, draws = 0.9, 0.1, 200
    truth = [true_agreement(j) for j in range(len(THRESHOLDS))]
    violated = naive_violated = bound_missed = 0
    for _ in range(draws):
        entropy, agree = draw(150, g)
        choice = search_agreement(entropy, agree, target, delta, THRESHOLDS)
        violated += truth[choice.index] < target
        bound_missed += truth[choice.index] < choice.bound
        assert choice.bound >= target and choice.agreement >= choice.bound
        # without a bound: the cheapest threshold whose agreement on the calibration set reaches the target
        exits = threshold_exits(entropy, THRESHOLDS)
        means = [float(exit_agreement(agree, exits[:, j]).mean()) for j in range(len(THRESHOLDS))]
        naive = max(j for j, m in enumerate(means) if m >= target)
        naive_violated += truth[naive] < target
    assert violated / draws <= delta + 0.04
    assert bound_missed / draws <= delta + 0.04
    assert naive_violated / draws > 0.3  # the test can tell a guarantee from none


def test_the_chosen_threshold_is_the_cheapest_before_the_first_that_fails():
    g = torch.Generator().manual_seed(1)
    entropy, agree = draw(400, g)
    choice = search_agreement(entropy, agree, 0.85, 0.05, THRESHOLDS)
    exits = threshold_exits(entropy, THRESHOLDS)
    depths = exits.float().mean(0).tolist()
    assert depths == sorted(depths, reverse=True)  # the sequence runs deepest to cheapest
    passed = [hb_p_value(1 - float(exit_agreement(agree, exits[:, j]).mean()), 400, 0.15) <= 0.05 for j in range(7)]
    first_fail = passed.index(False) if False in passed else len(passed)
    assert choice.index == first_fail - 1 and choice.index > 0
    assert choice.mean_depth == pytest.approx(depths[choice.index]) and choice.mean_depth < 4
    assert choice.threshold == pytest.approx(float(THRESHOLDS[choice.index]))


def test_a_later_threshold_that_would_pass_is_not_reached_past_a_failure():
    # agreement dips at the middle threshold and recovers after: fixed-sequence testing stops at the dip
    entropy = torch.tensor([[2.0, 1.0, 0.2]] * 100)
    agree = torch.tensor([[0.99, 0.5, 1.0]] * 100)
    choice = search_agreement(entropy, agree, 0.9, 0.1, torch.tensor([0.0, 0.5, 1.5]))
    assert choice.index == 1 and choice.mean_depth == 3.0  # 1.5's exits (layer 2) agree on half
    choice = search_agreement(entropy, agree, 0.9, 0.1, torch.tensor([0.0, 0.5, 2.5]))
    assert choice.index == 2 and choice.mean_depth == 1.0


def test_too_few_utterances_or_bad_numbers_are_one_line_errors():
    entropy, agree = torch.ones(10, 3), torch.ones(10, 3)
    with pytest.raises(ValueError, match="at least 22 needed"):
        search_agreement(entropy, agree, 0.9, 0.1, THRESHOLDS)  # 0.9 ** 10 > 0.1: even perfect agreement fails
    assert search_agreement(torch.ones(22, 3), torch.ones(22, 3), 0.9, 0.1, THRESHOLDS).index == len(THRESHOLDS) - 1
    for target, delta in ((1.0, 0.1), (0.0, 0.1), (math.nan, 0.1), (0.9, 0.0), (0.9, 1.5)):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            search_agreement(entropy, agree, target, delta, THRESHOLDS)
    with pytest.raises(ValueError, match="ascending"):
        search_agreement(entropy, agree, 0.5, 0.1, THRESHOLDS.flip(0))


def test_hb_p_value_and_bound_agree_with_each_other():
    assert hb_p_value(0.0, 50, 0.1) == pytest.approx(0.9**50)  # all agree: the exact binomial tail
    assert hb_p_value(0.2, 50, 0.1) == 1.0
    agree = torch.rand(300, generator=torch.Generator().manual_seed(2)) * 0.2 + 0.8
    bound = agreement_bound(agree, 0.05)
    assert bound < float(agree.mean())
    risk = 1 - float(agree.mean())
    assert hb_p_value(risk, 300, 1 - bound + 1e-6) <= 0.05 < hb_p_value(risk, 300, 1 - bound - 1e-3)


def test_threshold_exits_are_the_entropy_policys_exits():
    entropy = torch.rand(50, 5, generator=torch.Generator().manual_seed(3)) * 3
    thresholds = torch.linspace(0, 3, 31)
    for min_layer in (1, 3, 5):
        exits = threshold_exits(entropy, thresholds, min_layer)
        for j, t in enumerate(thresholds.tolist()):
            policy = policies.Entropy(threshold=t, min_layer=min_layer)
            assert exits[:, j].tolist() == policy.exit_layers({"entropy": entropy}).tolist()


def test_exit_agreement_reads_the_exit_layer_and_counts_the_last_as_full():
    agreement = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 0.3]])
    assert exit_agreement(agreement, torch.tensor([2, 3])).tolist() == pytest.approx([0.6, 1.0])


def test_head_agreement_is_the_share_of_valid_frames_whose_argmax_is_the_target():
    from daisy.heads import ExitHeads

    torch.manual_seed(0)
    heads = ExitHeads(2, 16, 7)
    feats = torch.randn(3, 10, 16) * 3
    mask = torch.arange(10)[None] < torch.tensor([10, 6, 1])[:, None]
    targets = torch.randint(0, 7, (3, 10))
    targets[0, :5] = heads.logits(2, feats[0, :5]).argmax(-1)  # half of the first utterance agrees at least
    got = heads.scores(2, feats, mask, targets)["agreement"]
    for b in range(3):
        n = int(mask[b].sum())
        want = (heads.logits(2, feats[b, :n]).argmax(-1) == targets[b, :n]).float().mean()
        torch.testing.assert_close(got[b], want)
    assert got[0] >= 0.5


def test_calibrate_agreement_on_a_model_saves_the_policy_and_its_record():
    model = random_early_exit(num_classes=12)
    wavs, lengths = varied_batch(30)
    audio = [w[:n].numpy() for w, n in zip(wavs, lengths)]
    with pytest.raises(ValueError, match="no pretraining head"):
        calibrate_agreement(model, audio, 0.5, 0.1)  # a teacher-target model without its teacher: no answer
    model.config.targets = "kmeans"  # the answer is then head L's argmax: head L agrees with itself
    scores = trace_scores(model, audio, agreement=True)
    assert set(scores) >= {"entropy", "agreement", "loss"}
    assert ((scores["agreement"] >= 0) & (scores["agreement"] <= 1 + 1e-6)).all()
    assert scores["agreement"][:, -1].tolist() == pytest.approx([1.0] * 30)
    policy, choice = calibrate_agreement(model, audio, 0.5, 0.2, task="asr", scores=scores)
    assert model.task_policy("asr") == policy and model.policy != policy
    record = model.config.provenance["task_calibration"]["asr"]
    assert record["agreement_bound"] >= 0.5 and record["reached_depth"] == pytest.approx(choice.mean_depth, abs=1e-4)
    assert record["domain"]["utterances"] == 30  # what daisy exit compares new audio with
    exits = policy.exit_layers(scores)
    assert float(exit_agreement(scores["agreement"], exits).mean()) == pytest.approx(choice.agreement)
