"""Long files run window by window: each window's exit is the exit of that stretch run alone."""

import numpy as np
import torch

from conftest import random_early_exit
from daisy import audio, policies
from daisy.apps.exit_files import exit_files, windows


def test_windows_cover_the_file_and_fold_a_tail_too_short_for_a_frame():
    assert windows(100, 40, 10) == [(0, 40), (40, 80), (80, 100)]
    assert windows(85, 40, 10) == [(0, 40), (40, 85)]
    assert windows(30, 40, 10) == [(0, 30)]


def test_a_long_file_exits_window_by_window(tmp_path):
    model = random_early_exit()
    rng = np.random.default_rng(0)
    wav = np.concatenate([0.1 * rng.standard_normal(16000), 0.5 * np.sin(np.arange(24000) / 3.0)]).astype(np.float32)
    audio.save(tmp_path / "long.wav", wav)
    read = audio.load(tmp_path / "long.wav")
    spans = [(0, 16000), (16000, 32000), (32000, len(read))]
    with torch.no_grad():  # a threshold between the windows' first heads: some leave at layer 1, some do not
        first = [float(model.trace(torch.from_numpy(read[a:b])[None]).scores["entropy"][0, 0]) for a, b in spans]
    model.policy = policies.Entropy(threshold=(min(first) + max(first)) / 2)
    [whole], _ = exit_files(model, [tmp_path / "long.wav"])
    assert "windows" not in whole  # shorter than the default window: one run, as before
    [long], errors = exit_files(model, [tmp_path / "long.wav"], window_seconds=1.0)
    assert not errors
    with torch.no_grad():
        alone = [model(torch.from_numpy(read[a:b])[None], output_hidden_states=False) for a, b in spans]
    assert [w["exit_layer"] for w in long["windows"]] == [int(o.exit_layers[0]) for o in alone]
    assert [w["start"] for w in long["windows"]] == [0.0, 1.0, 2.0]
    assert long["exit_layer"] == max(int(o.exit_layers[0]) for o in alone)
    frames = [int(o.lengths[0]) for o in alone]
    assert long["frames"] == sum(frames)
    expected = sum(int(o.exit_layers[0]) * n for o, n in zip(alone, frames)) / sum(frames)
    assert abs(long["mean_exit_layer"] - expected) < 1e-4
    assert len({w["exit_layer"] for w in long["windows"]}) > 1  # the windows really differ
