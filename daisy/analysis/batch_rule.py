"""Per-utterance compaction against DAISY's own per-batch rule, at the same mean depth, timed in one run.

DAISY's code decides once per batch: after layer l the whole batch exits together once the mean entropy
over all its valid frames falls to the threshold (`policies.Entropy(decide_per="batch")`). Ours decides per
utterance and drops finished utterances from the batch (compaction). On the same utterances, in the same
length-sorted batches (of 16 by default), this times:
  full        the model at full depth, no heads
  utterance   the per-utterance entropy rule with compaction
  batch       DAISY's per-batch rule
Both rules read every head and have one shared threshold (`policies.calibrate_rule`). The batch rule is
calibrated first, to the mean depth nearest the target that it can reach (a batch exits as one, so few
depths are reachable), then the utterance rule to the depth nearest that one it reaches (a threshold step
moves one utterance's exit); their live mean and frame-weighted depths are printed. `ideal` is the time
ratio that the frame-weighted depths alone predict, t_front + (d / L)(t_full - t_front) for each rule, as
in `daisy bench`'s ideal speedup.

    daisy bench --batch-rule [--model DIR] [--audio DIR] [--depth D] [--utterances 32] [--repeats 5]
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from daisy import policies
from daisy.analysis.speed import (
    device_batches,
    exit_depths,
    front_end_call,
    interleaved_seconds,
    ratio_quartiles,
    under_policy,
)
from daisy.calibration import trace_scores
from daisy.data.batching import length_groups
from daisy.model import EarlyExitHubert
from daisy.upstream.geometry import SAMPLE_RATE

BATCH = 16
RULES = ("full", "utterance", "batch")


def calibrated_rules(
    model: EarlyExitHubert, wavs: list[np.ndarray], depth: float, groups: list[list[int]]
) -> tuple[policies.Policy, policies.Policy]:
    """(utterance rule, batch rule) at the same mean depth on `wavs` run in `groups`: the batch rule as near
    `depth` as it gets, the utterance rule calibrated to the depth the batch rule reached."""
    entropy = trace_scores(model, wavs)["entropy"]
    frames = model.backbone.frame_lengths(torch.tensor([len(w) for w in wavs]))
    batch_rule = policies.calibrate_rule(entropy, frames, groups, depth, "batch")
    trace = {"entropy": entropy, "frames": frames}
    reached = policies.exit_layers_in_batches(batch_rule, trace, groups).float().mean().item()
    return policies.calibrate_rule(entropy, frames, groups, reached, "utterance"), batch_rule


def compare(
    model: EarlyExitHubert, wavs: list[np.ndarray], depth: float, repeats: int, batch_size: int = BATCH
) -> dict:
    """Times of the full model and of both rules over `wavs` in batches of `batch_size`; the figures
    `table` prints. Ratios are medians of per-round ratios, with their quartiles."""
    order = length_groups([len(w) for w in wavs], batch_size)  # the batches `device_batches` makes
    utterance_rule, batch_rule = calibrated_rules(model, wavs, depth, order)
    groups = device_batches(model, wavs, batch_size)
    previous = model.policy
    rules = {"full": policies.Fixed(layer=model.num_layers), "utterance": utterance_rule, "batch": batch_rule}
    try:
        with torch.inference_mode():
            fns = {"front_end": front_end_call(model), **{k: under_policy(model, p) for k, p in rules.items()}}
            t = interleaved_seconds(fns, groups, repeats)
            depths = {k: exit_depths([under_policy(model, p)(*g) for g in groups]) for k, p in rules.items()}
    finally:
        model.policy = previous
    audio = sum(len(w) for w in wavs) / SAMPLE_RATE
    t_front, t_full = statistics.median(t["front_end"]), statistics.median(t["full"])

    def predicted(weighted_depth: float) -> float:
        return t_front + weighted_depth / model.num_layers * (t_full - t_front)

    ratio = ratio_quartiles(t["batch"], t["utterance"])
    result = {
        "batch_size": batch_size,
        "utterances": len(wavs),
        "audio_seconds": audio,
        "threads": torch.get_num_threads(),
        "num_layers": model.num_layers,
        "front_end_s": t_front,
        "policies": {k: rules[k].to_dict() for k in ("utterance", "batch")},
        "rules": {},
        "batch_over_utterance": ratio[1],
        "batch_over_utterance_quartiles": [ratio[0], ratio[2]],
        "ideal": predicted(depths["batch"][1]) / predicted(depths["utterance"][1]),
    }
    for name in RULES:
        seconds = statistics.median(t[name])
        result["rules"][name] = {
            "seconds": seconds,
            "utterances_per_s": len(wavs) / seconds,
            "rtf": seconds / audio,
            "mean_depth": depths[name][0],
            "frame_weighted_depth": depths[name][1],
            "speedup": ratio_quartiles(t["full"], t[name])[1],
        }
    return result


def table(result: dict) -> Table:
    """The comparison as a rich table: one row per setting, the ratio in the caption."""
    quartiles = " to ".join(f"{q:.2f}" for q in result["batch_over_utterance_quartiles"])
    out = Table(
        title=f"per-utterance compaction vs DAISY's per-batch rule at batch {result['batch_size']} "
        f"({result['num_layers']} layers, {result['utterances']} utterances, {result['audio_seconds']:.1f} s of "
        f"audio, {result['threads']} threads)",
        caption=f"batch rule time / utterance rule time: {result['batch_over_utterance']:.2f} ({quartiles}); "
        f"ideal from the frame-weighted depths: {result['ideal']:.2f}",
    )
    for name in ("rule", "mean depth", "frame-weighted depth", "time", "utterances/s", "RTF", "speedup vs full"):
        out.add_column(name, justify="right")
    labels = {"full": "full depth", "utterance": "per utterance (ours)", "batch": "per batch (DAISY's code)"}
    for name, r in result["rules"].items():
        out.add_row(
            labels[name],
            f"{r['mean_depth']:.2f}",
            f"{r['frame_weighted_depth']:.2f}",
            f"{r['seconds'] * 1000:.0f} ms",
            f"{r['utterances_per_s']:.1f}",
            f"{r['rtf']:.3f}",
            f"{r['speedup']:.2f}x",
        )
    return out


def print_table(result: dict) -> None:
    Console(width=250).print(table(result))
