"""benchmarks/heads_alone.py: the head calls it replays are the live forward's, one per scored layer."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import random_early_exit
from daisy import audio

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "heads_alone.py"


def test_replays_each_head_call_of_the_live_forward(tmp_path):
    model = random_early_exit()
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    frames = []
    for i, seconds in enumerate([1.0, 2.5]):
        wav = 0.1 * rng.standard_normal(int(seconds * 16000)).astype(np.float32)
        audio.save(tmp_path / "audio" / f"utt{i}.wav", wav)
        with torch.inference_mode():
            frames.append(int(model(torch.from_numpy(wav)[None]).lengths[0]))
    out = tmp_path / "heads.json"
    args = ["--model", str(tmp_path / "model"), "--audio", str(tmp_path / "audio"), "--utterances", "2"]
    args += ["--rounds", "2", "--threads", "1", "--json", str(out)]
    subprocess.run([sys.executable, str(SCRIPT), *args], check=True)
    result = json.loads(out.read_text())
    # full depth, every head the live path scores: layers 1..L-1 (the last always exits), per utterance
    heads = model.num_layers - 1
    assert result["head_calls"] == 2 * heads and sorted(result["frames_per_call"]) == sorted(frames * heads)
    assert result["threads"] == 1
    assert result["inside_s"] > 0 and result["alone_s"] > 0 and result["rest_s"] > 0
    assert result["inside_share"] == result["inside_s"] / result["rest_s"]
    assert result["alone_one_thread_s"] > 0
    assert result["alone_one_thread_share"] == result["alone_one_thread_s"] / result["rest_s"]
