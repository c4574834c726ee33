"""Exit policies: pure functions from per-layer, per-utterance scores to exit decisions.

A policy sees, after layer l (1-based), a dict of scores for the utterances still running, each a
(B,) tensor: `entropy` (mean frame entropy of head l's posterior, nats), `confidence` (mean max
posterior) and, when targets are known, `loss` (mean cross-entropy against them). It answers a (B,)
bool tensor: exit now. It never sees hidden states. The last layer always exits.

The same policy applied to a stored trace of scores (`exit_layers`) gives the exits that the live,
compacting model produces; sweeps over thresholds use that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


class Policy:
    name: str = ""
    needs: str = "entropy"  # the score the policy reads

    def decide(self, layer: int, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def reads(self, layer: int) -> bool:
        """Whether `decide` at `layer` looks at the scores: the live model scores only the layers that it does."""
        return True

    def check(self, num_layers: int) -> None:
        """Raise ValueError if the policy cannot run on a model of `num_layers` layers."""

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def exit_layers(self, trace: dict[str, torch.Tensor]) -> torch.Tensor:
        """Exit layer (1-based) per utterance from a full trace of scores, each (B, L)."""
        num_layers = next(iter(trace.values())).shape[1]
        batch = next(iter(trace.values())).shape[0]
        exits = torch.full((batch,), num_layers, dtype=torch.long)
        running = torch.ones(batch, dtype=torch.bool)
        for layer in range(1, num_layers):
            stop = self.decide(layer, {k: v[:, layer - 1] for k, v in trace.items()}) & running
            exits[stop] = layer
            running &= ~stop
        return exits


def _threshold_at(threshold: float | Sequence[float], layer: int) -> float:
    if isinstance(threshold, (int, float)):
        return float(threshold)
    return float(threshold[layer - 1])


def _check_min_layer(policy: Policy, num_layers: int) -> None:
    if not 1 <= policy.min_layer <= num_layers:
        raise ValueError(f"{policy.name} policy: min_layer {policy.min_layer} outside 1..{num_layers}")


@dataclass
class Entropy(Policy):
    """DAISY: exit once head entropy (nats) falls to the threshold (one value, or one per layer)."""

    threshold: float | list[float]
    min_layer: int = 1
    name = "entropy"
    needs = "entropy"

    def decide(self, layer, scores):
        if layer < self.min_layer:
            return torch.zeros_like(scores["entropy"], dtype=torch.bool)
        return scores["entropy"] <= _threshold_at(self.threshold, layer)

    def reads(self, layer):
        return layer >= self.min_layer

    def check(self, num_layers):
        _check_min_layer(self, num_layers)
        # one threshold per layer; the last may be left out, as the last layer always exits
        if not isinstance(self.threshold, (int, float)) and len(self.threshold) not in (num_layers - 1, num_layers):
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
    needs = "confidence"

    def decide(self, layer, scores):
        if layer < self.min_layer:
            return torch.zeros_like(scores["confidence"], dtype=torch.bool)
        return scores["confidence"] >= self.threshold

    def reads(self, layer):
        return layer >= self.min_layer

    def check(self, num_layers):
        _check_min_layer(self, num_layers)


@dataclass
class Fixed(Policy):
    """Always exit at `layer` (plain truncation)."""

    layer: int
    name = "fixed"
    needs = "entropy"

    def __post_init__(self):
        if self.layer < 1:
            raise ValueError(f"fixed exit layer must be >= 1 (layers are 1-based), got {self.layer}")

    def decide(self, layer, scores):
        any_score = next(iter(scores.values()))  # only for the batch shape
        return torch.full_like(any_score, layer >= self.layer, dtype=torch.bool)

    def reads(self, layer):
        return False

    def check(self, num_layers):
        if self.layer > num_layers:
            raise ValueError(f"fixed exit layer {self.layer} is past the model's {num_layers} layers")


@dataclass
class Oracle(Policy):
    """Exit once the true head loss against known targets falls to the threshold (analysis only)."""

    threshold: float
    name = "oracle"
    needs = "loss"

    def decide(self, layer, scores):
        if "loss" not in scores:
            raise ValueError("the oracle policy needs targets: pass targets= to the model or trace")
        return scores["loss"] <= self.threshold


@dataclass
class Budget(Entropy):
    """Entropy thresholds calibrated on held-out audio (`calibrate_budget`) to a target mean depth."""

    target_depth: float = 0.0
    name = "budget"


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


POLICIES = {cls.name: cls for cls in (Entropy, Budget, Confidence, Fixed, Oracle)}


def policy_from_dict(spec: dict) -> Policy:
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    try:
        return POLICIES[name](**spec)
    except TypeError as e:  # a missing or unknown field
        fields = ", ".join(POLICIES[name].__dataclass_fields__)
        raise ValueError(f"policy {name!r} takes {fields}; got {', '.join(spec) or 'nothing'}") from e


def override(saved: dict, options: dict) -> dict:
    """The spec of the `saved` policy changed by `options`: a new `policy` name starts from that name alone,
    other keys (threshold, layer, min_layer, ...) replace the saved ones. A calibrated budget given another
    threshold becomes a plain entropy policy (its target depth no longer holds)."""
    options = dict(options)
    name = options.pop("policy", saved["name"])
    base = saved if name == saved["name"] else {"name": name}
    if base["name"] == "budget" and "threshold" in options:
        base = {k: v for k, v in base.items() if k != "target_depth"} | {"name": "entropy"}
    return {**base, **options}
