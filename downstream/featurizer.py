"""Softmax-weighted sum over a model's hidden states, for full-depth and early-exited features.

State numbering as everywhere in daisy: state 0 is the embedding, state l the output of transformer
layer l (1-based), so an L-layer model gives L + 1 states and an utterance that exits at layer e ran
states 0..e.

Modes:
- "static": one weight per state, softmax over all L + 1 (s3prl's Featurizer). On exited features
  (where states past the exit repeat the exit state, see `daisy.model.ExitOutput`) the exit state thus
  takes the weight of every layer past it.
- "dynamic" (DAISY): the same L + 1 weights, but each utterance's softmax runs over only the states it
  computed, 0..exit; states past the exit are never read.
- "per_depth" (DAISY's "dynamic-s"): one weight row per exit depth, a (L, L + 1) parameter; the row of
  exit e is softmaxed over entries 0..e.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("static", "dynamic", "per_depth")


class WeightedSum(nn.Module):
    def __init__(self, num_layers: int, mode: str = "dynamic", layer_norm: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers, self.mode, self.layer_norm = num_layers, mode, layer_norm
        # zeros: a uniform softmax at the start, as s3prl initialises its Featurizer
        shape = (num_layers, num_layers + 1) if mode == "per_depth" else (num_layers + 1,)
        self.weights = nn.Parameter(torch.zeros(shape))

    def layer_weights(self, exit_layers: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
        """Normalised weights per utterance (B, L + 1), zero past each exit (except in "static").
        exit_layers (B,) in 1..L; None means every utterance (`batch` of them) ran all layers."""
        n = self.num_layers
        if exit_layers is None:
            exit_layers = torch.full((batch,), n, dtype=torch.long, device=self.weights.device)
        exit_layers = exit_layers.to(self.weights.device).long()
        if exit_layers.dim() != 1:
            raise ValueError(f"exit_layers must be (B,), got shape {tuple(exit_layers.shape)}")
        if len(exit_layers) and (exit_layers.min() < 1 or exit_layers.max() > n):
            raise ValueError(f"exit_layers must lie in 1..{n}, got {exit_layers.tolist()}")
        if self.mode == "static":
            return F.softmax(self.weights, dim=-1).expand(len(exit_layers), -1)
        if self.mode == "per_depth":
            logits = self.weights[exit_layers - 1]
        else:
            logits = self.weights.expand(len(exit_layers), -1)
        ran = torch.arange(n + 1, device=logits.device)[None, :] <= exit_layers[:, None]
        # -inf past the exit: those states get exactly zero weight
        return F.softmax(logits.masked_fill(~ran, float("-inf")), dim=-1)

    def weight_table(self) -> torch.Tensor:
        """Weights used for each exit depth, for reports: (L, L + 1), row e - 1 for exit layer e."""
        with torch.no_grad():
            return self.layer_weights(torch.arange(1, self.num_layers + 1, device=self.weights.device))

    @property
    def normalized_weights(self) -> torch.Tensor:
        """Weights of a full-depth utterance (L + 1,)."""
        return self.weight_table()[-1]

    def forward(
        self, hidden_states: list[torch.Tensor] | torch.Tensor, exit_layers: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden_states: L + 1 tensors (B, T, D) or one (L + 1, B, T, D); exit_layers (B,) or None
        (full depth). Returns (B, T, D)."""
        if len(hidden_states) != self.num_layers + 1:
            expected = self.num_layers + 1
            raise ValueError(f"expected {expected} hidden states (embedding + layers), got {len(hidden_states)}")
        batch = hidden_states[0].shape[0]
        if exit_layers is not None and len(exit_layers) != batch:
            raise ValueError(f"{len(exit_layers)} exit layers for a batch of {batch}")
        weights = self.layer_weights(exit_layers, batch)  # (B, L + 1)
        # states no utterance ran are left out; the rest past an utterance's exit get weight exactly 0
        used = self.num_layers + 1 if self.mode == "static" or exit_layers is None else int(exit_layers.max()) + 1
        if isinstance(hidden_states, torch.Tensor):
            stacked = hidden_states[:used]
        else:
            stacked = torch.stack(list(hidden_states[:used]))  # (used, B, T, D)
        if self.layer_norm:
            stacked = F.layer_norm(stacked, (stacked.shape[-1],))  # no affine, as s3prl's Featurizer
        return (weights.T[:used, :, None, None].to(stacked.dtype) * stacked).sum(0)
