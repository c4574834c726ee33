"""Supervised early-exit ASR: CTC exit branches on a HuBERT's layers, the baselines DAISY is compared with.

- Wright et al. (arXiv 2309.09546): a `Linear(D, V)` CTC head after every layer, trained with the sum of
  the exits' CTC losses, from a random encoder or by fine-tuning a pretrained one.
- HuBERT-EE (arXiv 2204.06328): a fine-tuned model's final CTC head plus exit branches (self-attention
  + CTC) at chosen intermediate layers, trained with the fine-tuned model frozen.

The model is an `EarlyExitHubert` whose exit heads are CTC branches, so it runs DAISY's layer loop and
compaction unchanged: after layer l, branch l scores each utterance still running with the scores DAISY's
policies read, here over the CTC posterior (blank included): `entropy`, the frame-averaged entropy (nats),
and `confidence`, the frame-averaged max posterior (the "posterior probability" rule). So
`daisy.policies.Entropy` and `Confidence` serve as they are; `model.policy` restricts whatever policy it is
given to the layers that have a branch (`AtLayers`). `transcribe` returns each utterance's CTC logits from
its exit layer's branch; `trace_logits` gives every branch's logits and scores, to which any policy applies
offline with the same exits as the live path.

Choices where the papers are silent (docs/method.md, "Supervised early exit"):
- HuBERT-EE's branch: one multi-head self-attention block (the backbone's head count, padded frames
  masked) with a residual add and layer norm, then `Linear(D, V)`. Default layers: HuBERT Base's 5, 8,
  11 scaled to the model's depth (floor of l * L / 12), so Base gets exactly the paper's.
- Branches read the layer's output state (`head_input="output"`); the vocabulary is the caller's (the
  ASR command uses the probes' characters: blank 0, space, apostrophe, a-z).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from daisy.model import DaisyConfig, EarlyExitHubert, ExitOutput
from daisy.policies import Policy
from daisy.upstream import HubertBackbone

BRANCH_KINDS = ("linear", "attention")


def hubert_ee_layers(num_layers: int) -> tuple[int, ...]:
    """HuBERT-EE's branch layers (5, 8, 11 of HuBERT Base's 12) scaled to `num_layers`, below the last layer."""
    return tuple(sorted({max(1, k * num_layers // 12) for k in (5, 8, 11)} - {num_layers}))


class AttentionBranch(nn.Module):
    """HuBERT-EE's exit branch: self-attention over the layer's frames (residual + layer norm), then CTC logits."""

    def __init__(self, hidden_size: int, vocab_size: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden_size)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, x, x, key_padding_mask=~mask, need_weights=False)
        return self.out(self.norm(x + attended))


class CTCBranches(nn.Module):
    """CTC branches at `layers` (1-based; the last layer always has one, a plain Linear: the model's final CTC
    head). `kind` "linear" (Wright) or "attention" (HuBERT-EE) sets the intermediate branches. `heads[l-1]` is
    an empty placeholder where layer l has no branch, so the list lines up with the backbone's layers."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        vocab_size: int,
        layers: tuple[int, ...] | None = None,
        kind: str = "linear",
        attention_heads: int = 4,
    ):
        super().__init__()
        if kind not in BRANCH_KINDS:
            raise ValueError(f"branch kind must be one of {', '.join(BRANCH_KINDS)}, got {kind!r}")
        if vocab_size < 2:
            raise ValueError(f"a CTC vocabulary needs the blank and at least one label, got {vocab_size}")
        layers = tuple(range(1, num_layers + 1)) if layers is None else tuple(layers)
        bad = [layer for layer in layers if not (isinstance(layer, int) and 1 <= layer <= num_layers)]
        if bad or not layers:
            raise ValueError(f"branch layers must be whole numbers in 1..{num_layers}, got {list(layers)}")
        self.layers = tuple(sorted(set(layers) | {num_layers}))
        self.kind, self.vocab_size, self.num_classes = kind, vocab_size, vocab_size

        def branch(layer: int) -> nn.Module:
            if layer not in self.layers:
                return nn.Identity()  # no parameters, never called
            if kind == "linear" or layer == num_layers:
                return nn.Linear(hidden_size, vocab_size)
            return AttentionBranch(hidden_size, vocab_size, attention_heads)

        self.heads = nn.ModuleList(branch(layer) for layer in range(1, num_layers + 1))

    def logits(self, layer: int, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features (B, T, D) of layer `layer` (1-based), mask (B, T) -> CTC logits (B, T, V)."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} has no CTC branch (branches at {list(self.layers)})")
        head = self.heads[layer - 1]
        return head(features, mask) if isinstance(head, AttentionBranch) else head(features)

    def scores(
        self,
        layer: int,
        features: torch.Tensor,
        mask: torch.Tensor,
        targets: torch.Tensor | None = None,
        which: tuple[str, ...] = ("entropy", "confidence"),
        weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`entropy` and/or `confidence` of branch `layer`'s CTC posterior, each (B,); NaN where the layer has
        no branch (a trace scores every layer). The interface of `ExitHeads.scores`, which the layer loop calls."""
        if targets is not None:
            raise ValueError("CTC branches take no frame targets (the oracle policy is DAISY's only)")
        if layer not in self.layers:
            return {name: features.new_full(features.shape[:1], float("nan")) for name in which}
        weights = self.frame_weights(mask) if weights is None else weights
        return posterior_scores(self.logits(layer, features, mask), weights, which)

    @staticmethod
    def frame_weights(mask: torch.Tensor) -> torch.Tensor:
        weights = mask.float()
        return weights / weights.sum(1, keepdim=True).clamp_min(1.0)


def posterior_scores(logits: torch.Tensor, weights: torch.Tensor, which=("entropy", "confidence")) -> dict:
    """Frame-averaged entropy (nats) and max posterior of softmax(logits) (B, T, V), weights (B, T) -> (B,) each."""
    logp = logits.float().log_softmax(-1)
    out = {}
    if "entropy" in which:
        out["entropy"] = torch.linalg.vecdot(-torch.linalg.vecdot(logp.exp(), logp), weights)
    if "confidence" in which:
        out["confidence"] = torch.linalg.vecdot(logp.amax(-1).exp(), weights)
    return out


@dataclass
class AtLayers(Policy):
    """`inner` deciding only at `layers` (where there is a branch): the live model scores no other layer, and
    offline exits (`exit_layers`) read no other column of a trace."""

    inner: Policy
    layers: tuple[int, ...]
    name = "at-layers"

    @property
    def needs(self) -> tuple[str, ...]:
        return self.inner.needs

    def decide(self, layer, scores):
        return self.inner.decide(layer, scores)

    def reads(self, layer):
        return layer in self.layers and self.inner.reads(layer)

    def last_layer(self, num_layers):
        return self.inner.last_layer(num_layers)

    def check(self, num_layers):
        self.inner.check(num_layers)

    def to_dict(self) -> dict:
        return {"name": self.name, "inner": self.inner.to_dict(), "layers": list(self.layers)}


@dataclass
class CTCExitOutput:
    """exit_layers (B,), lengths (B,) frames, logits (B, T, V) from each utterance's exit branch, scores as
    `ExitOutput.scores`."""

    exit_layers: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor
    scores: dict[str, torch.Tensor]


class SupervisedExitHubert(EarlyExitHubert):
    """A HuBERT with CTC exit branches (`CTCBranches`), run by DAISY's layer loop with compaction."""

    def __init__(self, backbone: HubertBackbone, branches: CTCBranches, recipe: str = ""):
        config = DaisyConfig(
            num_classes=branches.vocab_size,
            head_input="output",
            policy={"name": "entropy", "threshold": 0.0},
            provenance={"recipe": recipe},
        )
        super().__init__(backbone, branches, config)

    @classmethod
    def build(
        cls,
        backbone: HubertBackbone,
        vocab_size: int,
        layers: tuple[int, ...] | None = None,
        kind: str = "linear",
        recipe: str = "",
        seed: int = 0,
    ) -> SupervisedExitHubert:
        """Fresh branches (seeded) at `layers` (None: every layer) on `backbone`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            branches = CTCBranches(
                backbone.num_layers,
                backbone.hidden_size,
                vocab_size,
                layers,
                kind,
                backbone.config.num_attention_heads,
            )
        return cls(backbone, branches, recipe)

    @property
    def branch_layers(self) -> tuple[int, ...]:
        return self.heads.layers

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Any policy over `entropy` / `confidence`, restricted to the layers with a branch."""
        if not isinstance(policy, AtLayers) and len(self.branch_layers) < self.num_layers:
            policy = AtLayers(policy, self.branch_layers)
        policy.check(self.num_layers)
        self._policy = policy

    def forward(self, wavs, lengths=None, targets=None, output_hidden_states: bool = False) -> ExitOutput:
        if targets is not None:
            raise ValueError("a supervised exit model takes no frame targets")
        return self._run(wavs, lengths, None, self.policy, output_hidden_states)

    def _frame_mask(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]

    @torch.no_grad()
    def transcribe(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> CTCExitOutput:
        """Live early exit under `self.policy` (compaction), then each utterance's exit branch on its exit state."""
        out = self(wavs, lengths)
        mask = self._frame_mask(out.lengths, out.last_hidden_state.shape[1])
        logits = out.last_hidden_state.new_zeros(*mask.shape, self.heads.vocab_size)
        for layer in out.exit_layers.unique().tolist():
            rows = out.exit_layers == layer
            logits[rows] = self.heads.logits(layer, out.last_hidden_state[rows], mask[rows]).to(logits.dtype)
        return CTCExitOutput(out.exit_layers, out.lengths, logits, out.scores)

    @torch.no_grad()
    def trace_logits(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
        """Every layer run for every utterance: (scores name -> (B, L), NaN where no branch; branch layer ->
        logits (B, T, V); frames (B,)). `policy.exit_layers(scores)` gives the live path's exits."""
        trace = self.trace(wavs, lengths)
        mask = self._frame_mask(trace.lengths, trace.hidden_states[0].shape[1])
        logits = {layer: self.heads.logits(layer, trace.hidden_states[layer], mask) for layer in self.branch_layers}
        return trace.scores, logits, trace.lengths

    def ctc_loss(
        self,
        wavs: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        layers: tuple[int, ...] | None = None,
        frozen_backbone: bool = False,
    ) -> tuple[torch.Tensor, dict[int, float]]:
        """The sum over branch `layers` (default all) of each branch's CTC loss (torch's mean reduction: per
        utterance divided by its target length, then averaged), and each branch's loss. targets (B, S) label ids
        >= 1, padded. `frozen_backbone`: the layers run without gradients (only the branches learn)."""
        layers = self.branch_layers if layers is None else tuple(layers)
        missing = [layer for layer in layers if layer not in self.branch_layers]
        if missing:
            raise ValueError(f"no CTC branch at layer(s) {missing} (branches at {list(self.branch_layers)})")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_backbone):
            x, mask = self.embed(wavs, lengths)
            bias = self.backbone.attention_bias(mask, x.dtype)
        frames = mask.sum(1)
        total, parts = x.new_zeros(()), {}
        for layer in range(1, max(layers) + 1):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_backbone):
                x = self.backbone.layer(layer, x, mask, bias)
            if layer not in layers:
                continue
            logp = self.heads.logits(layer, x, mask).float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
            loss = F.ctc_loss(logp, targets, frames, target_lengths, blank=0, zero_infinity=True)
            total = total + loss
            parts[layer] = float(loss.detach())
        return total, parts

    def save_pretrained(self, *args, **kwargs):
        raise NotImplementedError("supervised exit models are trained and evaluated in one run; they are not saved")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise NotImplementedError("supervised exit models are built on a backbone: SupervisedExitHubert.build")
