"""How the recording level moves exits: the same utterances scaled by a range of gains.

DAISY reads how sure the model is of its own answer, so a level the model never saw in pretraining can
look like noise to it. A model pretrained with `normalize` (zero mean, unit variance per input) does not
see the level at all.
"""

from __future__ import annotations

import math

import numpy as np

from daisy.calibration import trace_scores
from daisy.model import EarlyExitHubert


def rms_dbfs(wav: np.ndarray) -> float:
    """RMS level in dB relative to a full-scale (1.0) constant."""
    return float(10 * np.log10(np.mean(np.square(wav, dtype=np.float64)) + 1e-20))


def exits_at_gains(model: EarlyExitHubert, wavs: list[np.ndarray], gains_db) -> list[dict]:
    """Per gain: the inputs' mean RMS level, the mean exit layer under the model's own policy and the shares
    exiting at layer 1 and at the last layer. Inputs are scaled without clipping (the model takes any float)."""
    rows = []
    for gain in (float(g) for g in gains_db):
        if not math.isfinite(gain):
            raise ValueError(f"gains are finite numbers of dB, got {gain}")
        scaled = [w * np.float32(10 ** (gain / 20)) for w in wavs]
        exits = model.policy.exit_layers(trace_scores(model, scaled)).float()
        rows.append(
            {
                "gain_db": gain,
                "rms_dbfs": round(float(np.mean([rms_dbfs(w) for w in scaled])), 1),
                "mean_exit": round(exits.mean().item(), 2),
                "share_layer_1": round((exits == 1).float().mean().item(), 3),
                "share_last_layer": round((exits == model.num_layers).float().mean().item(), 3),
            }
        )
    return rows


def speaker_levels(wavs: list[np.ndarray], speakers: list[str]) -> dict:
    """How much the recording level tells speakers apart: the spread (std, dB) of the speakers' mean RMS
    levels against the mean spread within a speaker. A corpus where the first is much larger ties level
    to speaker, so a model that sees the level can use it as a speaker cue."""
    by_speaker: dict[str, list[float]] = {}
    for wav, speaker in zip(wavs, speakers, strict=True):
        by_speaker.setdefault(speaker, []).append(rms_dbfs(wav))
    means = np.array([np.mean(v) for v in by_speaker.values()])
    return {
        "speakers": len(by_speaker),
        "speaker_mean_dbfs_min": round(float(means.min()), 1),
        "speaker_mean_dbfs_max": round(float(means.max()), 1),
        "between_speakers_std_db": round(float(means.std()), 2),
        "within_speaker_std_db": round(float(np.mean([np.std(v) for v in by_speaker.values()])), 2),
    }


def markdown_table(rows: list[dict]) -> list[str]:
    """The rows of `exits_at_gains` as markdown lines."""
    return [
        "| gain (dB) | mean RMS (dBFS) | mean exit | exit at layer 1 | exit at the last layer |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['gain_db']:+g} | {r['rms_dbfs']:.1f} | {r['mean_exit']:.2f} | {r['share_layer_1']:.0%} | "
            f"{r['share_last_layer']:.0%} |"
            for r in rows
        ],
    ]
