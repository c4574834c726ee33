"""`daisy exit`: each file's exit layer."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from daisy.audio import AudioError, AudioWarning, load
from daisy.io import shown
from daisy.model import EarlyExitHubert


@torch.no_grad()
def exit_files(model: EarlyExitHubert, files: list[Path]) -> tuple[list[dict], list[str]]:
    """Each readable file's exit layer (run alone: batch 1), and one message per unreadable file.

    A file that was read with a warning (truncated, silent) keeps its result, the messages under
    "warnings"; one file's failure, memory included, never stops the others."""
    results, errors = [], []
    for path in files:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AudioWarning)
                wav = load(path, min_samples=model.backbone.min_samples)
        except (AudioError, MemoryError) as e:
            errors.append(
                str(e) if isinstance(e, AudioError) else f"{shown(path)}: too large for this machine's memory"
            )
            continue
        notes = [str(w.message) for w in caught if issubclass(w.category, AudioWarning)]
        for w in caught:  # others go on as if never caught
            if not issubclass(w.category, AudioWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        try:
            out = model(torch.from_numpy(wav)[None], output_hidden_states=False)
        except (MemoryError, torch.OutOfMemoryError):
            errors.append(f"{shown(path)}: too long to run in this machine's memory ({len(wav) / 16000:.0f} s)")
            continue
        results.append(
            {
                "path": str(path),
                "exit_layer": int(out.exit_layers[0]),
                "num_layers": model.num_layers,
                "seconds": len(wav) / 16000,
                "frames": int(out.lengths[0]),
                "warnings": notes,
            }
        )
    return results, errors
