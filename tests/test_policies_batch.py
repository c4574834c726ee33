"""DAISY's own exit rule (`decide_per="batch"`): the whole batch exits together at the first layer where the
mean entropy over all its valid frames falls to the threshold."""

import json

import pytest
import torch

from conftest import random_early_exit, varied_batch
from daisy import policies
from daisy.model import EarlyExitHubert

# 3 utterances x 4 layers of mean entropies, and their valid frames
ENTROPY = torch.tensor([[0.2, 0.1, 0.1, 0.1], [2.0, 1.5, 0.9, 0.5], [1.6, 1.2, 0.6, 0.2]])
FRAMES = torch.tensor([10, 30, 60])


def batch_rule(threshold, **fields):
    return policies.Entropy(threshold=threshold, decide_per="batch", **fields)


def test_the_batch_exits_where_the_mean_over_all_its_frames_falls_to_the_threshold():
    # pooled per layer: (10 e0 + 30 e1 + 60 e2) / 100 = 1.58, 1.18, 0.64, 0.28
    trace = {"entropy": ENTROPY, "frames": FRAMES}
    assert batch_rule(1.0).exit_layers(trace).tolist() == [3, 3, 3]
    assert batch_rule(1.2).exit_layers(trace).tolist() == [2, 2, 2]
    assert batch_rule(1.0, min_layer=4).exit_layers(trace).tolist() == [4, 4, 4]
    # frames are pooled: the plain mean of the utterance means (1.27 at layer 1) would exit at 1.3 already
    assert batch_rule(1.3).exit_layers(trace).tolist() == [2, 2, 2]
    assert batch_rule(1.3).exit_layers({"entropy": ENTROPY, "frames": torch.tensor([1, 1, 1])}).tolist() == [1] * 3
    assert policies.Entropy(threshold=1.0).exit_layers(trace).tolist() == [1, 3, 3]  # per utterance


def test_on_a_batch_of_one_it_is_the_utterance_rule():
    for row in range(3):
        one = {"entropy": ENTROPY[row : row + 1], "frames": FRAMES[row : row + 1]}
        for threshold in (0.15, 0.7, 1.3):
            utterance = policies.Entropy(threshold=threshold).exit_layers(one)
            assert batch_rule(threshold).exit_layers(one).tolist() == utterance.tolist()


def test_the_live_model_exits_the_batch_together_where_the_trace_says():
    model = random_early_exit()  # 3 layers
    wavs, lengths = varied_batch(6, seed=3)
    frames = model.backbone.frame_lengths(lengths)
    with torch.no_grad():
        entropy = model.trace(wavs, lengths, keep_states=False).scores["entropy"]  # (6, 3)
    # by hand: the frame-weighted mean of the utterance means, per layer; thresholds just under it at layer 1
    # and just over it at layer 2
    pooled = (entropy * frames[:, None]).sum(0) / frames.sum()
    threshold = [float(pooled[0]) - 1e-3, float(pooled[1]) + 1e-3, 0.0]
    model.policy = batch_rule(threshold)
    with torch.no_grad():
        out = model(wavs, lengths)
    assert out.exit_layers.tolist() == [2] * 6
    per_utterance = policies.Entropy(threshold=threshold).exit_layers({"entropy": entropy})
    assert len(set(per_utterance.tolist())) > 1  # the utterance rule would have split this batch
    assert model.policy.exit_layers({"entropy": entropy, "frames": frames}).tolist() == [2] * 6
    # and on a batch of one, each utterance exits where the utterance rule sends it
    for i, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            alone = model(wavs[i : i + 1, :n], lengths[i : i + 1])
        assert alone.exit_layers.tolist() == [int(per_utterance[i])]


def test_the_pooled_mean_is_daisys_mean_over_every_valid_frame_of_the_batch():
    """DAISY's code: softmax over each frame, drop the padded frames, one mean over what is left."""
    model = random_early_exit()
    wavs, lengths = varied_batch(4, seed=5)
    seen = []
    original = policies.Entropy.decide

    def spy(self, layer, scores):
        seen.append((layer, scores["entropy"], scores["frames"]))
        return original(self, layer, scores)

    model.policy = batch_rule(-1.0)  # nobody exits early: every head is read
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(policies.Entropy, "decide", spy)
        model(wavs, lengths)
        x, mask = model.embed(wavs, lengths)
        for layer, entropy, frames in seen:
            for i in range(1, layer + 1):
                x, ffn = model.backbone.layer(i, x, mask, return_ffn=True)
            probs = model.heads.logits(layer, ffn).softmax(-1)[mask]  # (valid frames, C)
            daisy = (-(probs * probs.log()).sum(-1)).mean()
            ours = (entropy * frames).sum() / frames.sum()
            torch.testing.assert_close(ours, daisy, rtol=1e-5, atol=1e-6)
            x, mask = model.embed(wavs, lengths)
    assert [layer for layer, _, _ in seen] == [1, 2]


def test_a_batch_rule_round_trips_through_a_saved_model(tmp_path):
    model = random_early_exit()
    model.policy = batch_rule(0.8, min_layer=2)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "daisy.json").read_text())["policy"]
    assert saved == {"name": "entropy", "threshold": 0.8, "min_layer": 2, "decide_per": "batch"}
    assert EarlyExitHubert.from_pretrained(tmp_path / "m").policy == model.policy
    budget = policies.Budget(threshold=0.5, target_depth=2.0, decide_per="batch")
    assert policies.policy_from_dict(budget.to_dict()) == budget
    # the default is left out, so policies saved before the option existed compare equal
    assert policies.Entropy(threshold=0.8).to_dict() == {"name": "entropy", "threshold": 0.8, "min_layer": 1}


def test_a_bad_decide_per_is_one_line_naming_it(tmp_path):
    with pytest.raises(ValueError) as caught:
        policies.policy_from_dict({"name": "entropy", "threshold": 1.0, "decide_per": "frame"})
    assert str(caught.value) == "entropy policy: decide_per must be 'utterance' or 'batch', got 'frame'"
    model = random_early_exit()
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "daisy.json"
    config = json.loads(path.read_text())
    config["policy"]["decide_per"] = "batches"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as caught:
        EarlyExitHubert.from_pretrained(tmp_path / "m")
    message = str(caught.value)
    assert message.startswith(str(path)) and "decide_per must be 'utterance' or 'batch'" in message
    assert "\n" not in message


def test_a_trace_without_frame_counts_is_named():
    with pytest.raises(ValueError, match="give each utterance's valid frame count as 'frames'"):
        batch_rule(1.0).exit_layers({"entropy": ENTROPY})


def test_exits_over_a_trace_are_taken_batch_by_batch():
    trace = {"entropy": ENTROPY, "frames": FRAMES}
    exits = policies.exit_layers_in_batches(batch_rule(1.0), trace, [[0], [1, 2]])
    assert exits.tolist() == [1, 3, 3]  # utterance 0 alone exits at once; 1 and 2 pool to 0.73 at layer 3


@pytest.mark.parametrize("decide_per", ["batch", "utterance"])
def test_a_rule_is_calibrated_to_the_closest_depth_it_can_reach(decide_per):
    torch.manual_seed(0)
    entropy = torch.rand(64, 6).cumsum(1).flip(1)  # falls with depth, like trained heads
    frames = torch.randint(50, 400, (64,))
    groups = [list(range(i, i + 16)) for i in range(0, 64, 16)]
    trace = {"entropy": entropy, "frames": frames}
    compared = entropy  # the values the rule compares with its threshold
    if decide_per == "batch":
        compared = torch.stack([frames[g].float() @ entropy[g] / frames[g].sum() for g in groups])
    reachable = set()
    for target in (1.0, 2.5, 3.0, 4.25, 6.0):
        policy = policies.calibrate_rule(entropy, frames, groups, target, decide_per)
        assert policy.decide_per == decide_per
        depth = policies.exit_layers_in_batches(policy, trace, groups).float().mean().item()
        reachable.add(depth)
        # no threshold comes closer: try every value compared, and a little either side
        values = compared.flatten()
        for t in torch.cat([values, values - 1e-4, values + 1e-4]).tolist():
            rule = policies.Entropy(threshold=t, decide_per=decide_per)
            other = policies.exit_layers_in_batches(rule, trace, groups).float().mean().item()
            assert abs(depth - target) <= abs(other - target) + 1e-9, (target, t)
        # the threshold lies between two compared values, not on one
        assert (compared[:, :-1] - policy.threshold).abs().min() > 1e-6
    assert len(reachable) > 2
    with pytest.raises(ValueError, match="target depth 7 outside 1..6"):
        policies.calibrate_rule(entropy, frames, groups, 7)


def test_entropies_closer_than_rounding_are_never_split_by_a_threshold():
    """A live run (other batch widths, another summation order) may swap two entropies 1e-6 apart."""
    entropy = torch.tensor([[5.0, 4.0], [5.000001, 4.0], [3.0, 2.0], [3.0, 2.0]])
    frames, groups = torch.tensor([10, 10, 10, 10]), [[0, 1, 2, 3]]
    rule = policies.calibrate_rule(entropy, frames, groups, 1.25, "utterance")
    # splitting 5.0 from 5.000001 would reach 1.25 exactly; as one value, 1.5 is the deeper of the nearest two
    assert rule.exit_layers({"entropy": entropy}).tolist() == [2, 2, 1, 1]
