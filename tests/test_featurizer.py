"""WeightedSum: s3prl's static weighted sum and DAISY's dynamic / per-depth sums over exited states."""

from __future__ import annotations

import importlib
import math
import types

import pytest
import torch
import torch.nn.functional as F

from daisy.downstream.featurizer import MODES, WeightedSum

L, B, T, D = 4, 3, 5, 6


def states(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, D, generator=g, dtype=dtype) + i for i in range(L + 1)]


def randomised(mode, layer_norm=False, seed=1):
    featurizer = WeightedSum(L, mode, layer_norm).double()
    with torch.no_grad():
        featurizer.weights.copy_(torch.randn(featurizer.weights.shape, generator=torch.Generator().manual_seed(seed)))
    return featurizer


def by_hand(logits, hs, b, exit_layer):
    """sum_{l <= e} softmax(logits[0..e])_l * h_l for utterance b, in plain Python arithmetic."""
    z = [math.exp(float(logits[i])) for i in range(exit_layer + 1)]
    return sum(z[i] / sum(z) * hs[i][b] for i in range(exit_layer + 1))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_every_mode_equals_static_at_full_depth_when_fresh(layer_norm):
    hs = states()
    static = WeightedSum(L, "static", layer_norm).double()(hs)
    for mode in MODES:
        featurizer = WeightedSum(L, mode, layer_norm).double()
        full = torch.full((B,), L)
        torch.testing.assert_close(featurizer(hs, full), static, rtol=0, atol=1e-12)
        torch.testing.assert_close(featurizer(hs), static, rtol=0, atol=1e-12)
    # and a fresh featurizer is the plain mean of the states
    expected = torch.stack(hs).mean(0) if not layer_norm else torch.stack([F.layer_norm(h, (D,)) for h in hs]).mean(0)
    torch.testing.assert_close(static, expected)


def test_dynamic_is_the_softmax_over_the_states_each_utterance_ran():
    hs, featurizer = states(), randomised("dynamic")
    exits = torch.tensor([1, 3, 4])
    out = featurizer(hs, exits)
    for b, e in enumerate(exits.tolist()):
        torch.testing.assert_close(out[b], by_hand(featurizer.weights.detach(), hs, b, e))


def test_per_depth_uses_the_weight_row_of_each_exit():
    hs, featurizer = states(), randomised("per_depth")
    exits = torch.tensor([2, 1, 4])
    out = featurizer(hs, exits)
    for b, e in enumerate(exits.tolist()):
        torch.testing.assert_close(out[b], by_hand(featurizer.weights.detach()[e - 1], hs, b, e))


def test_static_is_the_softmax_over_all_states_whatever_the_exit():
    hs, featurizer = states(), randomised("static")
    out = featurizer(hs, torch.tensor([1, 2, 4]))
    for b in range(B):
        torch.testing.assert_close(out[b], by_hand(featurizer.weights.detach(), hs, b, L))


@pytest.mark.parametrize("mode", ["dynamic", "per_depth"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_exited_output_ignores_states_past_the_exit(mode, layer_norm):
    hs, featurizer = states(), randomised(mode, layer_norm)
    exits = torch.tensor([2, 1, 3])
    before = featurizer(hs, exits)
    perturbed = [h.clone() for h in hs]
    for b, e in enumerate(exits.tolist()):
        for layer in range(e + 1, L + 1):
            perturbed[layer][b] = 1e3 * torch.randn(T, D, dtype=torch.float64)
    assert torch.equal(featurizer(perturbed, exits), before)
    # the stacked-tensor input gives the same answer as the list
    assert torch.equal(featurizer(torch.stack(perturbed), exits), before)


@pytest.mark.parametrize("mode", ["dynamic", "per_depth"])
def test_exited_states_of_the_model_give_the_same_features_as_the_full_trace(mode):
    """ExitOutput repeats the exit state past the exit (s3prl's fixed width); the exited sum cannot tell."""
    from daisy.model import Trace

    hs, featurizer = states(), randomised(mode)
    exits = torch.tensor([3, 1, 4])
    exited = Trace(hs, torch.full((B,), T), {}).select(exits)
    assert torch.equal(featurizer(exited.hidden_states, exits), featurizer(hs, exits))
    static = randomised("static")
    assert not torch.allclose(static(exited.hidden_states, exits), static(hs, exits))


def test_static_does_read_states_past_the_exit():
    hs, featurizer = states(), randomised("static")
    exits = torch.tensor([2, 2, 2])
    perturbed = [h.clone() for h in hs]
    perturbed[L] += 1.0
    assert not torch.allclose(featurizer(perturbed, exits), featurizer(hs, exits))


def test_layer_norm_standardises_each_state_over_features_before_weighting():
    hs, featurizer = states(), randomised("dynamic", layer_norm=True)
    exits = torch.tensor([4, 2, 1])
    normed = [(h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5) for h in hs]
    out = featurizer(hs, exits)
    for b, e in enumerate(exits.tolist()):
        torch.testing.assert_close(out[b], by_hand(featurizer.weights.detach(), normed, b, e))


@pytest.mark.parametrize("mode", MODES)
def test_weight_table_rows_are_distributions_over_the_states_run(mode):
    table = randomised(mode).weight_table()
    assert table.shape == (L, L + 1)
    torch.testing.assert_close(table.sum(-1), torch.ones(L, dtype=torch.float64))
    past_exit = torch.arange(L + 1)[None, :] > torch.arange(1, L + 1)[:, None]
    assert bool((table[past_exit] == 0).all()) == (mode != "static")
    torch.testing.assert_close(randomised(mode).normalized_weights, table[-1])


def test_per_depth_trains_only_the_rows_of_exits_seen():
    hs, featurizer = states(), randomised("per_depth")
    featurizer(hs, torch.tensor([2, 2, 3])).sum().backward()
    grad = featurizer.weights.grad
    assert grad[[0, 3]].abs().max() == 0
    assert grad[1, :3].abs().min() > 0 and grad[2, :4].abs().min() > 0
    assert grad[1, 3:].abs().max() == 0  # states past exit 2 get no gradient


def test_bad_inputs_are_refused_with_clear_errors():
    featurizer = WeightedSum(L)
    hs = states(dtype=torch.float32)
    with pytest.raises(ValueError, match="expected 5 hidden states"):
        featurizer(hs[:-1])
    with pytest.raises(ValueError, match=r"1\.\.4"):
        featurizer(hs, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="exit layers for a batch"):
        featurizer(hs, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="mode"):
        WeightedSum(L, "mean")


# -- against s3prl's own Featurizers (run with the s3prl environment; skipped where it is absent) ------------------


def import_or_skip(module: str):
    try:
        try:
            return importlib.import_module(module)
        except OSError:  # torchaudio's CUDA extension next to a CPU torch: the plugin's shim applies
            from daisy.upstream.s3prl_compat import import_torchaudio

            import_torchaudio()
            return importlib.import_module(module)
    except Exception as error:  # s3prl missing, or still broken
        pytest.skip(f"{module} not importable here ({type(error).__name__}: {error})")


@pytest.mark.parametrize("layer_norm", [False, True])
def test_static_matches_s3prl_nn_featurizer(layer_norm):
    upstream_module = import_or_skip("s3prl.nn.upstream")
    stub = types.SimpleNamespace(hidden_sizes=[D] * (L + 1), downsample_rates=[320] * (L + 1), num_layers=L + 1)
    theirs = upstream_module.Featurizer(stub, normalize=layer_norm).double()
    ours = randomised("static", layer_norm)
    with torch.no_grad():
        theirs.weights.copy_(ours.weights)
    hs = states()
    expected, _ = theirs(hs, [torch.full((B,), T)] * (L + 1))
    torch.testing.assert_close(ours(hs), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_static_matches_s3prl_legacy_featurizer(layer_norm):
    """The Featurizer of s3prl's downstream runner (upstream/interfaces.py), which MiniSUPERB and DAISY use."""
    interfaces = import_or_skip("s3prl.upstream.interfaces")
    hs = states()

    class Upstream(torch.nn.Module):
        def forward(self, wavs):
            return {"hidden_states": [h[: len(wavs), : len(wavs[0]) // 320] for h in hs]}

        def get_downsample_rates(self, key):
            return 320

    theirs = interfaces.Featurizer(Upstream(), upstream_device="cpu", normalize=layer_norm).double()
    ours = randomised("static", layer_norm)
    with torch.no_grad():
        theirs.weights.copy_(ours.weights)
    wavs = [torch.zeros(T * 320) for _ in range(B)]
    expected = torch.stack(theirs(wavs, {"hidden_states": hs}))
    torch.testing.assert_close(ours(hs), expected, rtol=0, atol=1e-12)
