"""Operating points: exit thresholds calibrated on held-out audio to a target mean depth, per model and per task."""

from __future__ import annotations

import numpy as np
import torch

from daisy import policies
from daisy.data.batching import batches
from daisy.model import EarlyExitHubert, check_task_name


@torch.no_grad()
def trace_scores(model: EarlyExitHubert, wavs: list[np.ndarray], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Every head's scores for every utterance: name -> (N, L), in the order of `wavs`."""
    out: dict[str, torch.Tensor] = {}
    for idx, padded, lengths in batches(wavs, batch_size):
        trace = model.trace(padded, lengths, keep_states=False)  # scores only: no per-layer copies of states
        for name, value in trace.scores.items():
            out.setdefault(name, torch.zeros(len(wavs), model.num_layers))[idx] = value
    return out


# Tasks that get an operating point of their own when a model is made (`daisy ship`, `daisy demo`), as
# shares of the layers, as DAISY's paper gives each task its threshold: clean ASR on the shipped model
# comes within 2 % of the full model only at about 0.95 L (docs/results.md, "Clean ASR's operating point")
TASK_DEPTH_FRACTIONS = {"asr": 0.95}


# Calibrations run no head below the layer under which at most this share of the held-out audio would exit:
# every utterance pays for every head read. 0.1 keeps the heads within 3 % of the shipped model at batch 1
# (its policy reads heads 3-5; 0.05 read 2-5, 3.5 %) with exits still rising with noise and SID and SE
# unmoved beyond probe noise (docs/results.md, "Heads the policy never needs")
RARE_EXITS = 0.1


def calibrate_model(
    model: EarlyExitHubert,
    wavs: list[np.ndarray],
    depth: float,
    per_layer: bool = False,
    min_layer: int = 1,
    task: str | None = None,
    entropy: torch.Tensor | None = None,
    rare_exits: float = RARE_EXITS,
):
    """Entropy thresholds that reach mean exit `depth` on `wavs`, exiting no earlier than `min_layer` (the
    live model then runs no head below it), raised past layers where at most `rare_exits` of `wavs` would
    exit: `model.policy`, or with `task` that task's saved policy (the model's own policy left as it is).
    `entropy`: the model's trace of `wavs` when already made. Returns the policy."""
    if task is not None:
        check_task_name(task)  # before the trace, which takes a while
    if entropy is None:
        entropy = trace_scores(model, wavs)["entropy"]
    policy = policies.calibrate_budget(entropy, depth, per_layer=per_layer, min_layer=min_layer, rare_exits=rare_exits)
    record = {
        "utterances": len(wavs),
        "target_depth": round(depth, 6),
        "reached_depth": round(policy.exit_layers({"entropy": entropy}).float().mean().item(), 4),
        "per_layer": per_layer,
        "min_layer": policy.min_layer,
        "requested_min_layer": min_layer,  # what a recalibration asks again (min_layer is after the rare rule)
        "rare_exits": rare_exits,
    }
    if task is None:
        model.policy = policy
        model.config.provenance["calibration"] = record
    else:
        model.set_task_policy(task, policy)
        model.config.provenance.setdefault("task_calibration", {})[task] = record
    return policy


def calibrate_operating_points(
    model: EarlyExitHubert, wavs: list[np.ndarray], fraction: float, task_fractions: dict | None = None
) -> None:
    """The model's default policy at `fraction` of its layers on average, and each task's own policy at its
    share (`task_fractions`, default TASK_DEPTH_FRACTIONS), all calibrated on the held-out `wavs`."""
    entropy = trace_scores(model, wavs)["entropy"]
    calibrate_model(model, wavs, fraction * model.num_layers, entropy=entropy)
    own = TASK_DEPTH_FRACTIONS if task_fractions is None else task_fractions
    for task, share in own.items():
        calibrate_model(model, wavs, share * model.num_layers, task=task, entropy=entropy)


def recalibrate_tasks(model: EarlyExitHubert, wavs: list[np.ndarray], entropy: torch.Tensor | None = None) -> list[str]:
    """After the heads have changed, each task's calibrated budget again, as it was asked for (its target
    depth, shared or per-layer thresholds, and the min_layer and rare-exits rule its calibration recorded)
    on the held-out `wavs` (`entropy`: their trace by the new heads, when already made). Returns the tasks
    whose policies are not calibrated budgets: they stay as saved, with thresholds set for the heads before."""
    saved = {task: model.task_policy(task) for task in model.tasks}
    budgets = {task: policy for task, policy in saved.items() if isinstance(policy, policies.Budget)}
    if budgets and entropy is None:
        entropy = trace_scores(model, wavs)["entropy"]
    recorded = model.config.provenance.get("task_calibration", {})
    for task, old in budgets.items():
        per_layer = not isinstance(old.threshold, (int, float))
        # a policy saved without that record (set by hand, or by an older version) keeps its min_layer as is
        asked = recorded.get(task, {})
        min_layer, rare_exits = asked.get("requested_min_layer", old.min_layer), asked.get("rare_exits", 0.0)
        calibrate_model(model, wavs, old.target_depth, per_layer, min_layer, task, entropy, rare_exits=rare_exits)
    return [t for t in model.tasks if t not in budgets]
