"""`daisy exit`: each file's exit layer."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from daisy.audio import AudioError, AudioWarning, load
from daisy.calibration import exit_agreement
from daisy.io import shown
from daisy.model import EarlyExitHubert


@torch.no_grad()
def exit_files(model: EarlyExitHubert, files: list[Path], agreement: bool = False) -> tuple[list[dict], list[str]]:
    """Each readable file's exit layer (run alone: batch 1), and one message per unreadable file. `agreement`
    also runs the full model: each result then holds the share of frames where the exit agrees with its answer.

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
            batch = torch.from_numpy(wav)[None]
            answer = model.full_answer(batch) if agreement else None
            out = model(batch, targets=answer, output_hidden_states=False)
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
                # per layer, the mean entropy of the heads the policy read (None where none ran)
                "head_entropy": _listed(out.scores.get("entropy")),
                "warnings": notes,
            }
        )
        if agreement:
            results[-1]["agreement"] = round(float(exit_agreement(out.scores["agreement"], out.exit_layers)), 4)
    return results, errors


def _listed(scores: torch.Tensor | None) -> list[float | None] | None:
    if scores is None:
        return None
    return [None if v != v else round(v, 4) for v in scores[0].tolist()]
