"""daisy.bench helpers: turn-taking timing, paired ratios and realistic random heads."""

import numpy as np
import pytest
import torch

from conftest import random_early_exit
from daisy.bench import TRAINED_LOGIT_STD, interleaved_seconds, median_ratio, spread_like_trained


def test_settings_take_turns_and_only_second_calls_are_timed():
    calls = []
    fns = {name: (lambda p, n, name=name: calls.append((name, p))) for name in ("a", "b")}
    times = interleaved_seconds(fns, [("x", None), ("y", None)], repeats=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    # per batch: a twice, then b twice; batches in order; rounds repeat that
    assert calls[:8] == [("a", "x")] * 2 + [("b", "x")] * 2 + [("a", "y")] * 2 + [("b", "y")] * 2
    assert len(calls) == 24


def test_median_ratio_pairs_rounds():
    # drift doubles every round; the paired ratio stays 2, the ratio of medians would not
    assert median_ratio([2.0, 4.0, 8.0], [1.0, 2.0, 4.0]) == 2.0
    assert median_ratio([3.0, 1.0, 100.0], [1.0, 1.0, 1.0]) == 3.0


@pytest.mark.parametrize("head_input", ["ffn", "output"])
def test_random_heads_get_the_logit_spread_of_trained_ones(head_input):
    model = random_early_exit(head_input=head_input)
    wav = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    spread_like_trained(model, wav)
    with torch.no_grad():
        x, mask = model.embed(torch.from_numpy(wav)[None], None)
        for layer in range(1, model.num_layers + 1):
            x, ffn = model.backbone.layer(layer, x, mask, return_ffn=True)
            logits = model.heads.logits(layer, ffn if head_input == "ffn" else x)
            assert logits.std(-1).mean().item() == pytest.approx(TRAINED_LOGIT_STD, rel=1e-4)
