"""Supervised early-exit ASR model (CTC branches): live exits match offline ones, and the summed CTC loss learns."""

import pytest
import torch

from conftest import tiny_config, varied_batch
from daisy.policies import Confidence, Entropy
from daisy.supervised_exits import AtLayers, CTCBranches, SupervisedExitHubert, hubert_ee_layers
from daisy.training.ctc_exits import CTCTrainConfig, train_recipe
from daisy.upstream import HubertBackbone

VOCAB = 7


def _model(kind: str, layers, num_layers: int = 4, seed: int = 0) -> SupervisedExitHubert:
    torch.manual_seed(seed)
    backbone = HubertBackbone.from_config(tiny_config(stable=False, num_hidden_layers=num_layers))
    model = SupervisedExitHubert.build(backbone, VOCAB, layers, kind, seed=seed).eval()
    with torch.no_grad():  # sharper random branches, so the scores differ between utterances
        for head in model.heads.heads:
            for p in head.parameters():
                if p.dim() == 2:
                    p.mul_(8.0)
    return model


def test_hubert_ee_layers_are_the_papers_on_base():
    assert hubert_ee_layers(12) == (5, 8, 11)
    assert hubert_ee_layers(6) == (2, 4, 5)


@pytest.mark.parametrize(("kind", "layers"), [("linear", None), ("attention", (1, 2))])
@pytest.mark.parametrize("selection", ["entropy", "posterior"])
def test_live_exits_and_transcripts_match_the_trace(kind, layers, selection):
    model = _model(kind, layers)
    wavs, lengths = varied_batch(8)
    scores, logits, frames = model.trace_logits(wavs, lengths)
    name = "entropy" if selection == "entropy" else "confidence"
    readable = [layer for layer in model.branch_layers if layer < model.num_layers]
    values = scores[name][:, [layer - 1 for layer in readable]]
    assert torch.isfinite(values).all()
    seen = set()
    for q in (0.25, 0.5, 0.75):
        threshold = float(values.quantile(q))
        model.policy = Entropy(threshold=threshold) if name == "entropy" else Confidence(threshold=threshold)
        offline = model.policy.exit_layers(scores)
        live = model.transcribe(wavs, lengths)
        assert torch.equal(live.exit_layers, offline)
        assert set(offline.tolist()) <= set(model.branch_layers)  # never at a layer without a branch
        seen |= set(offline.tolist())
        for i, layer in enumerate(offline.tolist()):
            n = int(frames[i])
            torch.testing.assert_close(live.logits[i, :n], logits[layer][i, :n], atol=1e-4, rtol=1e-4)
    assert len(seen) > 1  # the sweep reached more than one exit layer: compaction was exercised


def test_layers_without_a_branch_are_never_scored_or_exited_at():
    model = _model("attention", (2,))
    assert model.branch_layers == (2, 4)
    model.policy = Entropy(threshold=100.0)  # everyone would exit at the first layer read
    assert isinstance(model.policy, AtLayers) and [model.policy.reads(layer) for layer in (1, 2, 3)] == [
        False,
        True,
        False,
    ]
    wavs, lengths = varied_batch(4)
    out = model.transcribe(wavs, lengths)
    assert out.exit_layers.tolist() == [2] * 4
    assert torch.isnan(out.scores["entropy"][:, 0]).all()  # layer 1 has no branch: not scored
    scores, _, _ = model.trace_logits(wavs, lengths)
    assert torch.isnan(scores["entropy"][:, [0, 2]]).all() and torch.isfinite(scores["entropy"][:, 1]).all()


def test_summed_ctc_loss_decreases_on_a_tiny_batch():
    model = _model("linear", None, num_layers=3).train()
    wavs, lengths = varied_batch(4)
    targets = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 3, 5], [2, 4, 6]])
    target_lengths = torch.tensor([3, 3, 3, 2])
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, parts = model.ctc_loss(wavs, lengths, targets, target_lengths)
        assert sorted(parts) == [1, 2, 3] and loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_frozen_backbone_trains_only_the_branches():
    model = _model("attention", (1, 2), num_layers=3).train()
    wavs, lengths = varied_batch(2)
    loss, _ = model.ctc_loss(wavs, lengths, torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), (1, 2), True)
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.heads.heads[0].parameters())
    assert all(p.grad is None for p in model.heads.heads[2].parameters())  # the final head is not in `layers`


def test_recipes_leave_the_pretrained_backbone_as_it_was():
    torch.manual_seed(0)
    backbone = HubertBackbone.from_config(tiny_config(stable=False, num_hidden_layers=3))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    wavs = [w[:n].numpy() for w, n in zip(*varied_batch(3))]
    labels = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5])]
    model, cost = train_recipe("hubert-ee", backbone, wavs, labels, VOCAB, CTCTrainConfig(steps=2, batch_size=2))
    assert cost.steps == 4 and set(cost.stages) == {"finetune", "branches"} and cost.seconds > 0
    assert model.branch_layers == (1, 2, 3)  # floor(5, 8, 11 * 3 / 12) = 1, 2, 2, and the last layer
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and not any(k.startswith("feature_extractor") for k in changed)  # conv front-end frozen


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: CTCBranches(4, 16, VOCAB, (0, 2)), "branch layers must be whole numbers in 1..4"),
        (lambda: CTCBranches(4, 16, VOCAB, kind="lstm"), "branch kind must be one of linear, attention"),
        (lambda: CTCBranches(4, 16, 1), "a CTC vocabulary needs the blank"),
        (lambda: train_recipe("wright", None, [], [], VOCAB, CTCTrainConfig()), "unknown recipe 'wright'"),
        (lambda: CTCTrainConfig(steps=0), "steps must be a whole number >= 1"),
    ],
)
def test_bad_settings_are_named(make, problem):
    with pytest.raises(ValueError, match=problem):
        make()
