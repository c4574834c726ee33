"""DAISY's exit heads: one linear classifier over the C target classes after each transformer layer.

Head l maps a frame's layer-l feature (D,) to logits (C,). Its exit scores, per utterance, average
over the valid frames: `entropy` of the softmax posterior (nats; DAISY's label-free proxy of the
self-supervised loss), `confidence` (max posterior) and, with targets, `loss` (cross-entropy) and
`agreement` (share of frames whose argmax is the target: with the full model's answer as targets, the
quality an exit at that layer keeps; see calibration.py).
"""

from __future__ import annotations

import torch
from torch import nn

from daisy.precision import exact


class ExitHeads(nn.Module):
    """`rank` None: DAISY's plain Linear(D, C) per layer. A rank r factorises it as Linear(D, r) then
    Linear(r, C), the same classifier restricted to rank r, at r (D + C) / (D C) of its multiply-adds."""

    def __init__(self, num_layers: int, hidden_size: int, num_classes: int, rank: int | None = None):
        super().__init__()
        if rank is not None and not 1 <= rank < min(hidden_size, num_classes):
            raise ValueError(f"head rank must be in 1..{min(hidden_size, num_classes) - 1} (below D and C), got {rank}")
        self.num_classes, self.rank = num_classes, rank

        def head() -> nn.Module:
            if rank is None:
                return nn.Linear(hidden_size, num_classes)
            return nn.Sequential(nn.Linear(hidden_size, rank, bias=False), nn.Linear(rank, num_classes))

        self.heads = nn.ModuleList(head() for _ in range(num_layers))

    def logits(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """features (..., D) of layer `layer` (1-based) -> logits (..., C)."""
        return self.heads[layer - 1](features)

    def scores(
        self,
        layer: int,
        features: torch.Tensor,
        mask: torch.Tensor,
        targets: torch.Tensor | None = None,
        which: tuple[str, ...] = ("entropy", "confidence"),
        weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """features (B, T, D), mask (B, T) valid frames, targets (B, T) class ids -> scores, each (B,).

        `which` limits the work to the scores a policy reads; `loss` and `agreement` are added whenever
        targets are given.
        `weights` = `frame_weights(mask)` may be passed in when the mask is reused across layers.
        """
        logits = self.logits(layer, features).float()  # under bf16 autocast the head runs in bf16, not its scores
        weights = self.frame_weights(mask) if weights is None else weights
        with exact(logits.device):
            return self._scores(logits, weights, targets, which)

    @staticmethod
    def _scores(logits, weights, targets, which) -> dict[str, torch.Tensor]:
        out = {}
        # On the live path this runs after every layer: few vectorised kernels (log_softmax, exp, vecdot;
        # torch.special.entr is three times slower on CPU) keep it a small share of the layer it scores.
        if "entropy" in which or "confidence" in which:
            logp = logits.log_softmax(-1)
            if "entropy" in which:
                out["entropy"] = torch.linalg.vecdot(-torch.linalg.vecdot(logp.exp(), logp), weights)
            if "confidence" in which:
                out["confidence"] = torch.linalg.vecdot(logp.amax(-1).exp(), weights)
        if targets is not None:
            picked = logits.gather(-1, targets.clamp_min(0)[..., None].long())[..., 0]
            out["loss"] = torch.linalg.vecdot(logits.logsumexp(-1) - picked, weights)
            out["agreement"] = torch.linalg.vecdot((logits.argmax(-1) == targets).float(), weights)
        return out

    @staticmethod
    def frame_weights(mask: torch.Tensor) -> torch.Tensor:
        """(B, T) weights that average over each utterance's valid frames."""
        weights = mask.float()
        return weights / weights.sum(1, keepdim=True).clamp_min(1.0)
