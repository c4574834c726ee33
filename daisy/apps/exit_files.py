"""`daisy exit`: each file's exit layer."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from daisy.audio import AudioError, AudioWarning, load
from daisy.calibration import exit_agreement
from daisy.io import shown
from daisy.model import EarlyExitHubert
from daisy.upstream.geometry import SAMPLE_RATE

# long files run window by window, so memory is bounded by the window whatever the file's length
WINDOW_SECONDS = 30.0


@torch.no_grad()
def exit_files(
    model: EarlyExitHubert, files: list[Path], agreement: bool = False, window_seconds: float = WINDOW_SECONDS
) -> tuple[list[dict], list[str]]:
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
            result = _run_windows(model, wav, int(window_seconds * SAMPLE_RATE), agreement)
        except (MemoryError, torch.OutOfMemoryError):
            errors.append(f"{shown(path)}: too long to run in this machine's memory ({len(wav) / SAMPLE_RATE:.0f} s)")
            continue
        results.append({"path": str(path), "num_layers": model.num_layers, **result, "warnings": notes})
    return results, errors


def windows(samples: int, width: int, min_samples: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive windows of `width` samples over `samples`; a tail too short for one frame
    joins the window before it."""
    spans = [(start, min(start + width, samples)) for start in range(0, samples, width)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < min_samples:
        spans[-2:] = [(spans[-2][0], samples)]
    return spans


def _run_windows(model: EarlyExitHubert, wav, width: int, agreement: bool) -> dict:
    """A file's exit, window by window (memory follows the window, not the file): `exit_layer` is the deepest
    window's, the layers the whole file needed; a file of several windows also gets each window's exit and
    the frame-weighted mean."""
    parts = []
    for start, stop in windows(len(wav), width, model.backbone.min_samples):
        batch = torch.from_numpy(wav[start:stop])[None]
        answer = model.full_answer(batch) if agreement else None
        out = model(batch, targets=answer, output_hidden_states=False)
        agrees = exit_agreement(out.scores["agreement"], out.exit_layers) if agreement else None
        parts.append((start, stop, int(out.exit_layers[0]), int(out.lengths[0]), out.scores.get("entropy"), agrees))
    frames = torch.tensor([p[3] for p in parts], dtype=torch.float64)
    exits = torch.tensor([p[2] for p in parts], dtype=torch.float64)
    entropy = None if parts[0][4] is None else torch.nanmean(torch.cat([p[4] for p in parts]), 0, keepdim=True)
    result = {
        "exit_layer": int(exits.max()),
        "seconds": len(wav) / SAMPLE_RATE,
        "frames": int(frames.sum()),
        # per layer, the mean entropy of the heads the policy read (None where none ran)
        "head_entropy": _listed(entropy),
    }
    if agreement:
        shares = torch.tensor([float(p[5]) for p in parts], dtype=torch.float64)
        result["agreement"] = round(float((shares * frames).sum() / frames.sum()), 4)
    if len(parts) > 1:
        result["mean_exit_layer"] = round(float((exits * frames).sum() / frames.sum()), 4)
        result["windows"] = [
            {"start": start / SAMPLE_RATE, "seconds": (stop - start) / SAMPLE_RATE, "exit_layer": exit_layer}
            for start, stop, exit_layer, *_ in parts
        ]
    return result


def _listed(scores: torch.Tensor | None) -> list[float | None] | None:
    if scores is None:
        return None
    return [None if v != v else round(v, 4) for v in scores[0].tolist()]
