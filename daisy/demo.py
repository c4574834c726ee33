"""`daisy demo`: the whole product on the embedded default, end to end."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from daisy.io import write_json
from daisy.upstream import HubertBackbone

console = Console()


def chirp(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)


def run_demo(out: Path) -> dict:
    out = Path(out)
    model_dir = out / "model"
    backbone = HubertBackbone.from_preset("tiny")
    backbone.save_pretrained(model_dir)
    backbone = HubertBackbone.from_pretrained(model_dir)
    wavs = [chirp(s) for s in (1.0, 2.5)]
    batch = torch.zeros(len(wavs), max(map(len, wavs)))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = torch.from_numpy(w)
    lengths = torch.tensor([len(w) for w in wavs])
    start = time.perf_counter()
    with torch.inference_mode():
        states = backbone.hidden_states(batch, lengths)
    elapsed = time.perf_counter() - start
    results = {
        "model": str(model_dir),
        "num_layers": backbone.num_layers,
        "hidden_size": backbone.hidden_size,
        "frames": backbone.frame_lengths(lengths).tolist(),
        "state_shapes": [list(s.shape) for s in states],
        "seconds": elapsed,
    }
    write_json(out / "report" / "results.json", results)
    console.print(
        f"{backbone.num_layers}-layer HuBERT saved to {model_dir}; {len(states)} hidden states "
        f"for {len(wavs)} utterances in {elapsed * 1000:.0f} ms; report in {out / 'report'}"
    )
    return results
