"""DAISY's exit heads: one linear classifier over the C target classes after each transformer layer.

Head l maps a frame's layer-l feature (D,) to logits (C,). Its exit scores, per utterance, average
over the valid frames: `entropy` of the softmax posterior (nats; DAISY's label-free proxy of the
self-supervised loss), `confidence` (max posterior) and, with targets, `loss` (cross-entropy).
"""

from __future__ import annotations

import torch
from torch import nn


class ExitHeads(nn.Module):
    def __init__(self, num_layers: int, hidden_size: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.heads = nn.ModuleList(nn.Linear(hidden_size, num_classes) for _ in range(num_layers))

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
    ) -> dict[str, torch.Tensor]:
        """features (B, T, D), mask (B, T) valid frames, targets (B, T) class ids -> scores, each (B,).

        `which` limits the work to the scores a policy reads; `loss` is added whenever targets are given.
        """
        logp = torch.log_softmax(self.logits(layer, features).float(), dim=-1)
        weights = mask.to(logp.dtype)
        frames = weights.sum(1).clamp_min(1.0)

        def mean(per_frame: torch.Tensor) -> torch.Tensor:
            return (per_frame * weights).sum(1) / frames

        out = {}
        if "entropy" in which:
            out["entropy"] = mean(-(logp.exp() * logp).sum(-1))
        if "confidence" in which:
            out["confidence"] = mean(logp.max(-1).values.exp())
        if targets is not None:
            picked = logp.gather(-1, targets.clamp_min(0)[..., None].long())[..., 0]
            out["loss"] = mean(-picked)
        return out
