"""`daisy exit`: each file's exit layer."""

from __future__ import annotations

from pathlib import Path

import torch

from daisy.audio import AudioError, load
from daisy.model import EarlyExitHubert


@torch.no_grad()
def exit_files(model: EarlyExitHubert, files: list[Path]) -> tuple[list[dict], list[str]]:
    """Each readable file's exit layer (run alone: batch 1), and one message per unreadable file."""
    results, errors = [], []
    for path in files:
        try:
            wav = load(path, min_samples=model.backbone.min_samples)
        except AudioError as e:
            errors.append(str(e))
            continue
        out = model(torch.from_numpy(wav)[None], output_hidden_states=False)
        results.append(
            {
                "path": str(path),
                "exit_layer": int(out.exit_layers[0]),
                "num_layers": model.num_layers,
                "seconds": len(wav) / 16000,
                "frames": int(out.lengths[0]),
            }
        )
    return results, errors
