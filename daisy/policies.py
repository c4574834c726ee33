"""Exit policies: pure functions from per-layer, per-utterance scores to exit decisions.

A policy names the scores it reads (`needs`): `entropy` (mean frame entropy of head l's posterior,
nats), `confidence` (mean max posterior) or, when targets are known, `loss` (mean cross-entropy
against them), each a (B,) tensor for the utterances still running. `last_layer` is where everyone
left exits (the model's last layer, or a fixed policy's layer); `reads(layer)` says at which layers
before it the policy decides, and only there is `decide` called, answering a (B,) bool tensor: exit
now. A policy that needs no score (fixed) decides nothing. It never sees hidden states.

Entropy policies decide per utterance by default. `decide_per="batch"` is the rule of DAISY's own code
instead: after layer l the whole batch exits together once the mean entropy over all the batch's valid
(unpadded) frames, pooled across utterances, falls to the threshold; it also reads `frames`, each
utterance's valid frame count (B,), to pool them. Its exits depend on the batch-mates, so over a stored
trace they are taken batch by batch (`exit_layers_in_batches`).

The same policy applied to a stored trace of scores (`exit_layers`) gives the exits that the live,
compacting model produces; sweeps over thresholds use that. Fields are checked when a policy is made
(a NaN, infinite or out-of-range threshold is a ValueError naming it), so daisy.json, the CLI and
s3prl options all get the same checks.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields

import torch


class Policy:
    name: str = ""
    needs: tuple[str, ...] = ("entropy",)  # the scores `decide` reads; empty: it decides nothing

    def decide(self, layer: int, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Exit now, (B,) bool, after `layer`; called only where `reads(layer)`, with `needs` in `scores`."""
        raise NotImplementedError

    def reads(self, layer: int) -> bool:
        """Whether the policy decides after `layer`: the live model scores only the layers where it does."""
        return bool(self.needs)

    def last_layer(self, num_layers: int) -> int:
        """Where every utterance still running exits on a model of `num_layers` layers."""
        return num_layers

    def check(self, num_layers: int) -> None:
        """Raise ValueError if the policy cannot run on a model of `num_layers` layers."""

    def require(self, available) -> None:
        """Raise ValueError unless every score the policy reads is among `available` (names)."""
        missing = [name for name in self.needs if name not in available]
        if missing:
            have = ", ".join(sorted(available)) or "none"
            raise ValueError(f"the {self.name} policy reads {', '.join(missing)} scores; given only: {have}")

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def exit_layers(self, trace: dict[str, torch.Tensor]) -> torch.Tensor:
        """Exit layer (1-based) per utterance from a trace of scores, each (B, L); the trace may hold more
        scores than the policy reads (`calibration.trace_scores` gives all of them)."""
        per_layer = [v for v in trace.values() if v.dim() == 2]
        if not per_layer:
            raise ValueError("an empty trace: no scores to apply the policy to")
        self.require(trace)
        batch, num_layers = per_layer[0].shape
        last = self.last_layer(num_layers)
        exits = torch.full((batch,), last, dtype=torch.long)
        running = torch.ones(batch, dtype=torch.bool)
        for layer in range(1, last):
            if not self.reads(layer):
                continue
            # per-layer scores (B, L) at this layer; per-utterance ones (B,), such as frames, as they are
            at_layer = {k: trace[k][:, layer - 1] if trace[k].dim() == 2 else trace[k] for k in self.needs}
            stop = self.decide(layer, at_layer) & running
            exits[stop] = layer
            running &= ~stop
        return exits


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(policy: str, field: str, value, low: float = -math.inf, high: float = math.inf, what: str = "") -> float:
    """`value` as a float, or a ValueError naming the policy, the field and the value."""
    if not _is_number(value) or not (math.isfinite(value) and low <= value <= high):
        bounds = f" in {low:g}..{high:g}" if math.isfinite(high) else f" >= {low:g}" if math.isfinite(low) else ""
        raise ValueError(f"{policy} policy: {field} must be a finite number{bounds}{what}, got {value!r}")
    return float(value)


def _whole(policy: str, field: str, value, hint: str = "") -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{policy} policy: {field} must be a whole number >= 1{hint}, got {value!r}")
    return int(value)


def _threshold_at(threshold: float | Sequence[float], layer: int) -> float:
    if isinstance(threshold, float):
        return threshold
    return threshold[layer - 1]


def _check_min_layer(policy: Policy, num_layers: int) -> None:
    if not 1 <= policy.min_layer <= num_layers:
        raise ValueError(f"{policy.name} policy: min_layer {policy.min_layer} outside 1..{num_layers}")


DECIDE_PER = ("utterance", "batch")


@dataclass
class Entropy(Policy):
    """DAISY: exit once head entropy (nats) falls to the threshold (one value, or one per layer); per
    utterance, or (`decide_per="batch"`, DAISY's code) the whole batch at once on its pooled frames."""

    threshold: float | list[float]
    min_layer: int = 1
    decide_per: str = "utterance"
    name = "entropy"
    needs = ("entropy",)

    def __post_init__(self):
        if isinstance(self.threshold, Sequence) and not isinstance(self.threshold, str):
            if not self.threshold:
                raise ValueError(f"{self.name} policy: threshold is an empty list (give a number or one per layer)")
            self.threshold = [
                _finite(self.name, f"threshold[{i}]", t, what=" (nats)") for i, t in enumerate(self.threshold)
            ]
        else:
            self.threshold = _finite(self.name, "threshold", self.threshold, what=" (nats) or a list of them")
        self.min_layer = _whole(self.name, "min_layer", self.min_layer)
        if self.decide_per not in DECIDE_PER:
            raise ValueError(f"{self.name} policy: decide_per must be 'utterance' or 'batch', got {self.decide_per!r}")
        self.needs = ("entropy", "frames") if self.decide_per == "batch" else ("entropy",)

    def decide(self, layer, scores):
        entropy, threshold = scores["entropy"], _threshold_at(self.threshold, layer)
        if self.decide_per == "utterance":
            return entropy <= threshold
        # DAISY's rule: the mean over every valid frame of the batch (utterance means weighted by their frames)
        frames = scores["frames"].to(entropy.dtype)
        pooled = torch.linalg.vecdot(entropy, frames) / frames.sum()
        return (pooled <= threshold).expand_as(entropy)

    def require(self, available):
        if self.decide_per == "batch" and "frames" not in available and "entropy" in available:
            raise ValueError(
                f"the {self.name} policy deciding per batch pools the batch's frames: give each utterance's valid "
                "frame count as 'frames' (B,) beside the scores"
            )
        super().require(available)

    def to_dict(self):
        spec = super().to_dict()
        if self.decide_per == "utterance":  # the default is left out: policies saved without it read the same
            del spec["decide_per"]
        return spec

    def reads(self, layer):
        return layer >= self.min_layer

    def check(self, num_layers):
        _check_min_layer(self, num_layers)
        # one threshold per layer; the last may be left out, as the last layer always exits
        if isinstance(self.threshold, list) and len(self.threshold) not in (num_layers - 1, num_layers):
            raise ValueError(
                f"{self.name} policy: {len(self.threshold)} per-layer thresholds for a {num_layers}-layer model "
                f"(give {num_layers}, or {num_layers - 1} without the last layer)"
            )


@dataclass
class Confidence(Policy):
    """Exit once the head's mean max-posterior reaches the threshold."""

    threshold: float
    min_layer: int = 1
    name = "confidence"
    needs = ("confidence",)

    def __post_init__(self):
        what = " (a mean max-posterior)"
        self.threshold = _finite(self.name, "threshold", self.threshold, 0.0, 1.0, what)
        self.min_layer = _whole(self.name, "min_layer", self.min_layer)

    def decide(self, layer, scores):
        return scores["confidence"] >= self.threshold

    def reads(self, layer):
        return layer >= self.min_layer

    def check(self, num_layers):
        _check_min_layer(self, num_layers)


@dataclass
class Fixed(Policy):
    """Always exit at `layer` (plain truncation): reads no score, decides nothing."""

    layer: int
    name = "fixed"
    needs = ()

    def __post_init__(self):
        self.layer = _whole(self.name, "layer", self.layer, " (layers are 1-based)")

    def last_layer(self, num_layers):
        return min(self.layer, num_layers)

    def check(self, num_layers):
        if self.layer > num_layers:
            raise ValueError(f"fixed exit layer {self.layer} is past the model's {num_layers} layers")


@dataclass
class Oracle(Policy):
    """Exit once the true head loss against known targets falls to the threshold (analysis only)."""

    threshold: float
    name = "oracle"
    needs = ("loss",)

    def __post_init__(self):
        self.threshold = _finite(self.name, "threshold", self.threshold, what=" (nats)")

    def require(self, available):
        if "loss" not in available:
            raise ValueError("the oracle policy needs targets: pass targets= to the model or trace")

    def decide(self, layer, scores):
        return scores["loss"] <= self.threshold


@dataclass
class Budget(Entropy):
    """Entropy thresholds calibrated on held-out audio (`calibrate_budget`) to a target mean depth."""

    target_depth: float = 0.0  # what the calibration aimed at, in layers (a record: decisions use the thresholds)
    name = "budget"

    def __post_init__(self):
        super().__post_init__()
        self.target_depth = _finite(self.name, "target_depth", self.target_depth, 0.0, what=" (layers)")


def calibrate_budget(
    entropy: torch.Tensor, target_depth: float, per_layer: bool = False, min_layer: int = 1, rare_exits: float = 0.0
) -> Budget:
    """Entropy thresholds whose mean exit depth on held-out traces `entropy` (N, L) is closest to
    `target_depth` (in layers) from below, with no exit before `min_layer`.

    One shared threshold is found by bisection over the observed entropies (mean depth falls
    monotonically as the threshold rises). `per_layer` instead uses, at every layer, the same
    quantile of that layer's entropies, which balances exits across layers.

    `rare_exits`: where at most this share of the utterances would exit below some layer k (k no deeper
    than the target), calibrate again with `min_layer` k: the live model then runs no head below k, whose
    cost every utterance pays for the few that would have exited there. 0 (the default) keeps `min_layer`.
    """
    if not 0 <= rare_exits < 1:
        raise ValueError(f"rare_exits is a share of the utterances, in 0..1, got {rare_exits}")
    policy = _bisect_budget(entropy, target_depth, per_layer, min_layer)
    if rare_exits == 0:
        return policy
    exits = policy.exit_layers({"entropy": entropy})
    raised = min_layer
    while raised + 1 <= target_depth and (exits < raised + 1).float().mean().item() <= rare_exits:
        raised += 1
    return policy if raised == min_layer else _bisect_budget(entropy, target_depth, per_layer, raised)


def _bisect_budget(entropy: torch.Tensor, target_depth: float, per_layer: bool, min_layer: int) -> Budget:
    num_layers = entropy.shape[1]
    if not 1 <= min_layer <= num_layers:
        raise ValueError(f"min_layer {min_layer} outside 1..{num_layers}")
    if not min_layer <= target_depth <= num_layers:
        raise ValueError(f"target depth {target_depth} outside {min_layer}..{num_layers} (min_layer {min_layer})")
    trace = {"entropy": entropy}
    # only the layers the policy can exit at: their entropies set the quantiles
    readable = entropy[:, min_layer - 1 :]

    target_depth = round(target_depth, 6)  # 0.6 * 6 is 3.5999999999999996

    def policy_for(q: float) -> Budget:
        if per_layer:
            above = torch.quantile(readable, q, dim=0).tolist()
            threshold = [above[0]] * (min_layer - 1) + above  # layers below min_layer are never read
            return Budget(threshold=threshold, min_layer=min_layer, target_depth=target_depth)
        return Budget(
            threshold=float(torch.quantile(readable.flatten(), q)), min_layer=min_layer, target_depth=target_depth
        )

    def depth(q: float) -> float:
        return policy_for(q).exit_layers(trace).float().mean().item()

    lo, hi = 0.0, 1.0  # quantile 0 exits almost nobody early, 1 exits everyone at layer 1
    if depth(lo) <= target_depth:
        return policy_for(lo)
    for _ in range(40):
        mid = (lo + hi) / 2
        if depth(mid) > target_depth:
            lo = mid
        else:
            hi = mid
    return policy_for(hi)


def exit_layers_in_batches(policy: Policy, trace: dict[str, torch.Tensor], groups) -> torch.Tensor:
    """Exit layer per utterance of a trace (name -> (N, L), or (N,) for `frames`) whose utterances the live
    model runs in `groups` (lists of row indices, e.g. `daisy.data.batching.batches`' first items): a
    batch-level rule decides for each group as the live model does for that batch."""
    exits = torch.zeros(len(next(iter(trace.values()))), dtype=torch.long)
    for idx in groups:
        exits[idx] = policy.exit_layers({k: v[idx] for k, v in trace.items()})
    return exits


ROUNDING = 1e-5  # entropies closer than this (relative) may swap order between a trace and a live run


def calibrate_rule(
    entropy: torch.Tensor,
    frames: torch.Tensor,
    groups,
    target_depth: float,
    decide_per: str = "batch",
    min_layer: int = 1,
) -> Entropy:
    """The entropy rule deciding per `decide_per` whose mean exit depth over the utterances of `groups` (lists
    of rows of entropy (N, L) and frames (N,), run as those batches) is the closest to `target_depth` it can
    reach; of two equally close, the deeper. A batch rule exits each batch as one, so it reaches few depths.
    One shared threshold, midway between two of the entropies the rule compares (utterance means, or the
    batches' pooled means) that lie more than `ROUNDING` apart (relative), so that a live run's rounding
    (other batch widths, another summation order) does not move an exit; closer ones count as one."""
    num_layers = entropy.shape[1]
    if not 1 <= min_layer <= target_depth <= num_layers:
        raise ValueError(f"target depth {target_depth} outside {min_layer}..{num_layers} (min_layer {min_layer})")
    rows = [i for idx in groups for i in idx]
    if decide_per == "batch":
        weights = frames.to(entropy.dtype)
        compared = torch.stack([weights[idx] @ entropy[idx] / weights[idx].sum() for idx in groups])  # (G, L)
    else:
        compared = entropy[rows]
    seen = compared[:, min_layer - 1 : num_layers - 1].flatten().unique()  # at the layers where exits happen
    if not len(seen):  # min_layer is the last layer: nobody exits before it whatever the threshold
        return Entropy(threshold=0.0, min_layer=min_layer, decide_per=decide_per)
    apart = (seen[1:] - seen[:-1]) > ROUNDING * seen.abs().max().clamp_min(1.0)
    middles = ((seen[1:] + seen[:-1]) / 2)[apart].tolist()
    candidates = [float(seen[0]) - 1.0] + middles + [float(seen[-1]) + 1.0]
    trace, depths = {"entropy": entropy, "frames": frames}, {}
    for threshold in candidates:
        policy = Entropy(threshold=threshold, min_layer=min_layer, decide_per=decide_per)
        depths[threshold] = exit_layers_in_batches(policy, trace, groups)[rows].float().mean().item()
    best = min(candidates, key=lambda t: (abs(depths[t] - target_depth), -depths[t]))
    return Entropy(threshold=best, min_layer=min_layer, decide_per=decide_per)


POLICIES = {cls.name: cls for cls in (Entropy, Budget, Confidence, Fixed, Oracle)}


def policy_from_dict(spec: dict) -> Policy:
    """The policy a spec like {"name": "entropy", "threshold": 0.8} describes; a ValueError naming what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError(f"a policy is a mapping like {{'name': 'entropy', 'threshold': 0.8}}, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    cls = POLICIES[name]
    takes = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    unknown = [k for k in spec if k not in takes]
    missing = [k for k in required if k not in spec]
    if unknown or missing:
        problem = f"has no field {', '.join(unknown)}" if unknown else f"needs {', '.join(missing)}"
        # a field of one other policy only (budget's target_depth) says which policy was meant
        owners = {k: [other for other, c in POLICIES.items() if k in c.__dataclass_fields__] for k in unknown}
        hint = "".join(f"; {k} is the {o[0]} policy's" for k, o in owners.items() if len(o) == 1)
        raise ValueError(f"policy {name!r} {problem} (it takes {', '.join(takes)}){hint}")
    return cls(**spec)


def override(saved: dict, options: dict) -> dict:
    """The spec of the `saved` policy changed by `options`: a new `policy` name starts from that name alone,
    other keys (threshold, layer, min_layer, ...) replace the saved ones. A calibrated budget given another
    threshold becomes a plain entropy policy (its target depth no longer holds)."""
    options = dict(options)
    if "target_depth" in options:
        raise ValueError(
            f"target_depth {options['target_depth']!r} is not a setting but what a budget's calibration aimed at; "
            "to exit at a mean depth, calibrate (`daisy calibrate --depth`)"
        )
    name = options.pop("policy", saved["name"])
    base = saved if name == saved["name"] else {"name": name}
    if base["name"] == "budget" and "threshold" in options:
        base = {k: v for k, v in base.items() if k != "target_depth"} | {"name": "entropy"}
    return {**base, **options}
