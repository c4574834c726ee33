"""Operating points: exit thresholds calibrated on held-out audio, per model and per task, to a target mean
depth or to a guaranteed agreement with the full model's own answer (`calibrate_agreement`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom

from daisy import domain, policies
from daisy.data.batching import batches
from daisy.model import EarlyExitHubert, check_task_name


@torch.no_grad()
def trace_scores(
    model: EarlyExitHubert, wavs: list[np.ndarray], batch_size: int = 8, agreement: bool = False
) -> dict[str, torch.Tensor]:
    """Every head's scores for every utterance: name -> (N, L), in the order of `wavs`. `agreement` also
    runs the full model for its own answer per frame (`model.full_answer`) and scores every head against it
    (`agreement` and `loss`; see `exit_agreement`)."""
    out: dict[str, torch.Tensor] = {}
    for idx, padded, lengths in batches(wavs, batch_size):
        targets = model.full_answer(padded, lengths) if agreement else None
        trace = model.trace(padded, lengths, targets, keep_states=False)  # scores only: no copies of states
        for name, value in trace.scores.items():
            out.setdefault(name, torch.zeros(len(wavs), model.num_layers))[idx] = value.cpu()  # off any GPU
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
        "domain": domain.reference(entropy, policy),  # to tell audio unlike this at run time (daisy.domain)
    }
    _install(model, policy, record, task)
    return policy


def _install(model: EarlyExitHubert, policy: policies.Policy, record: dict, task: str | None) -> None:
    """`policy` as the model's own (task None) or as `task`'s, with how it was calibrated in the provenance."""
    if task is None:
        model.policy = policy
        model.config.provenance["calibration"] = record
    else:
        model.set_task_policy(task, policy)
        model.config.provenance.setdefault("task_calibration", {})[task] = record


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


# -- a guaranteed agreement with the full model ------------------------------------------------------------


def can_answer(model: EarlyExitHubert) -> bool:
    """Whether the model gives its own full-depth answer (`model.full_answer`): a teacher-target model needs
    its teacher head."""
    return model.config.targets != "teacher" or model.teacher is not None


def exit_agreement(agreement: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """Each utterance's agreement (N,) at its exit layer, from the per-layer trace score (N, L): the share of
    its frames where the exit layer's head gives the full model's answer. An utterance that exits at the last
    layer has run the full model, whose answer is then its own: it agrees fully (1.0), whatever head L says."""
    at_exit = agreement.gather(1, (exits - 1)[:, None].long())[:, 0]
    return torch.where(exits == agreement.shape[1], torch.ones_like(at_exit), at_exit)


def threshold_exits(entropy: torch.Tensor, thresholds: torch.Tensor, min_layer: int = 1) -> torch.Tensor:
    """Exit layers (N, J) of the entropy policy at each of `thresholds` (J,) with `min_layer`, as
    `policies.Entropy(t, min_layer).exit_layers` gives them one at a time: the first layer from `min_layer`
    (before the last) whose entropy is at most t, else the last."""
    num_layers = entropy.shape[1]
    readable = entropy[:, min_layer - 1 : num_layers - 1]  # the layers the policy decides after
    if readable.shape[1] == 0:
        return torch.full((entropy.shape[0], len(thresholds)), num_layers, dtype=torch.long)
    # entropy only ever falls to the threshold once: the running minimum is above t exactly before the exit
    running_min = readable.cummin(1).values
    later = (running_min[:, :, None] > thresholds[None, None, :]).sum(1)
    return min_layer + later


def hb_p_value(risk: float, n: int, alpha: float) -> float:
    """Hoeffding-Bentkus p-value (Bates et al. 2021, Angelopoulos et al. 2021's Learn then Test) of the null
    "the mean of a [0, 1] loss is above `alpha`", given its mean `risk` over `n` independent draws."""
    if risk >= alpha:
        return 1.0
    a = max(risk, 0.0)
    kl = (a * math.log(a / alpha) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - alpha))
    hoeffding = math.exp(-n * kl)
    bentkus = math.e * float(binom.cdf(math.ceil(n * risk - 1e-9), n, alpha))
    return min(hoeffding, bentkus, 1.0)


def agreement_bound(agreement: torch.Tensor, delta: float) -> float:
    """Lower confidence bound on the mean of `agreement` (per utterance, in [0, 1]) at level 1 - `delta`: the
    lowest mean agreement that the Hoeffding-Bentkus test does not reject at level `delta`."""
    risk, n = 1.0 - float(agreement.double().mean()), len(agreement)
    lo, hi = risk, 1.0  # the p-value falls as the null's risk rises: bisect for where it crosses delta
    if hi <= lo or hb_p_value(risk, n, hi - 1e-12) > delta:
        return 1.0 - hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if hb_p_value(risk, n, mid) > delta else (lo, mid)
    return 1.0 - hi


def check_agreement(target: float, delta: float) -> None:
    if not 0 < target < 1:  # also NaN
        raise ValueError(f"agreement must be a share strictly between 0 and 1, got {target}")
    if not 0 < delta < 1:
        raise ValueError(f"delta (the risk that the guarantee fails) must be strictly between 0 and 1, got {delta}")


@dataclass
class AgreementChoice:
    """The cheapest threshold that passed (`index` into the thresholds searched) and, on the calibration
    data, its mean exit depth, mean agreement and that agreement's lower confidence bound."""

    threshold: float
    index: int
    mean_depth: float
    agreement: float
    bound: float


def search_agreement(
    entropy: torch.Tensor,
    agreement: torch.Tensor,
    target: float,
    delta: float,
    thresholds: torch.Tensor,
    min_layer: int = 1,
) -> AgreementChoice:
    """Learn then Test with fixed-sequence testing: walk `thresholds` (fixed before seeing the data, ascending:
    deepest to cheapest) and test, at each, the null "mean agreement at the exits < `target`" with the
    Hoeffding-Bentkus p-value over the utterances of the trace (`entropy`, `agreement`: (N, L)); stop at the
    first not rejected at level `delta`. The last rejected is returned: with probability at least 1 - delta
    over calibration sets drawn like this one, its mean agreement on such utterances is at least `target`.
    Mean depth falls along the sequence, so it is the cheapest threshold the test allows."""
    check_agreement(target, delta)
    if not 1 <= min_layer <= entropy.shape[1]:
        raise ValueError(f"min_layer {min_layer} outside 1..{entropy.shape[1]}")
    if len(thresholds) > 1 and bool((thresholds[1:] < thresholds[:-1]).any()):
        raise ValueError("thresholds must be ascending (deepest exits first)")
    exits = threshold_exits(entropy, thresholds, min_layer)  # (N, J)
    n, chosen = len(entropy), None
    for j in range(len(thresholds)):
        agree = exit_agreement(agreement, exits[:, j])
        if hb_p_value(1.0 - float(agree.double().mean()), n, 1.0 - target) > delta:
            break
        chosen = j, agree
    if chosen is None:
        # all agreeing (nobody exits early) passes only with n >= log(delta) / log(target)
        need = math.ceil(math.log(delta) / math.log(target))
        raise ValueError(
            f"no threshold's agreement can be guaranteed >= {target:g} at delta {delta:g} from {n} utterances "
            f"(at least {need} needed even when every exit agrees); give more audio, or a lower --agreement"
        )
    j, agree = chosen
    return AgreementChoice(
        threshold=float(thresholds[j]),
        index=j,
        mean_depth=float(exits[:, j].float().mean()),
        agreement=float(agree.double().mean()),
        bound=agreement_bound(agree, delta),
    )


# thresholds searched: fixed in advance (the guarantee needs it), evenly over 0..log C nats, C the head classes
AGREEMENT_GRID = 2000


def agreement_thresholds(num_classes: int, steps: int = AGREEMENT_GRID) -> torch.Tensor:
    """The entropy thresholds `calibrate_agreement` searches, deepest first: 0 to the largest entropy."""
    return torch.linspace(0.0, math.log(num_classes), steps + 1)


def calibrate_agreement(
    model: EarlyExitHubert,
    wavs: list[np.ndarray],
    agreement: float,
    delta: float = 0.05,
    min_layer: int = 1,
    task: str | None = None,
    scores: dict[str, torch.Tensor] | None = None,
) -> tuple[policies.Entropy, AgreementChoice]:
    """The cheapest shared entropy threshold (exiting no earlier than `min_layer`) whose exits agree with the
    model's own full-depth answer on a share `agreement` of the frames of an utterance on average, guaranteed
    with confidence 1 - `delta` over utterances drawn like `wavs` (`search_agreement`). Saved as `model.policy`,
    or with `task` as that task's policy, with provenance["calibration"] (or ["task_calibration"][task]).
    `scores`: `trace_scores(model, wavs, agreement=True)` when already made. Returns the policy and choice."""
    if task is not None:
        check_task_name(task)
    check_agreement(agreement, delta)  # before the trace, which takes a while
    if not 1 <= min_layer <= model.num_layers:
        raise ValueError(f"min_layer {min_layer} outside 1..{model.num_layers}")
    if scores is None:
        scores = trace_scores(model, wavs, agreement=True)
    thresholds = agreement_thresholds(model.heads.num_classes)
    choice = search_agreement(scores["entropy"], scores["agreement"], agreement, delta, thresholds, min_layer)
    policy = policies.Entropy(threshold=choice.threshold, min_layer=min_layer)
    record = {
        "utterances": len(wavs),
        "target_agreement": agreement,
        "delta": delta,
        "agreement": round(choice.agreement, 4),
        "agreement_bound": round(choice.bound, 4),
        "reached_depth": round(choice.mean_depth, 4),
        "min_layer": min_layer,
        "answer": "teacher argmax" if model.config.targets == "teacher" else "last head's argmax",
        "bound": "Hoeffding-Bentkus, fixed-sequence (Learn then Test), per-utterance frame agreement",
        "domain": domain.reference(scores["entropy"], policy),  # as calibrate_model: audio unlike this is named
    }
    _install(model, policy, record, task)
    return policy, choice
