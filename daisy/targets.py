"""Frame targets the exit heads learn to predict: the model's own answer, or k-means clusters.

- `TeacherHead` (DAISY): HuBERT's masked-prediction head (fairseq `final_proj` + label embeddings,
  cosine similarity / temperature 0.1). Its argmax over the full model's last state, with no
  masking, is the model's own answer per frame.
- `KMeansTargets` (HuBERT's recipe, for checkpoints without that head): cluster ids of 39-dim MFCC
  (`features="mfcc"`) or of a layer's hidden states (`features="layer:6"`), scikit-learn
  MiniBatchKMeans with k-means++.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from daisy.io import atomic_path


class TeacherHead(nn.Module):
    """logits(h) = cos(final_proj(h), label_emb_c) / temperature, for each class c."""

    def __init__(self, hidden_size: int, proj_size: int, num_classes: int, temperature: float = 0.1):
        super().__init__()
        self.final_proj = nn.Linear(hidden_size, proj_size)
        self.label_embs = nn.Parameter(torch.randn(num_classes, proj_size))
        self.temperature = temperature

    @property
    def num_classes(self) -> int:
        return self.label_embs.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> logits (..., C)."""
        proj = nn.functional.normalize(self.final_proj(hidden), dim=-1)
        return proj @ nn.functional.normalize(self.label_embs, dim=-1).T / self.temperature

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own answer: argmax class per frame, (...)."""
        return self.logits(hidden).argmax(-1)

    @classmethod
    def from_fairseq(cls, head: dict[str, torch.Tensor], num_classes: list[int]) -> TeacherHead:
        """From an s3prl-converted checkpoint's `final_proj` and `label_embs_concat` (first label set)."""
        weight, embs = head["final_proj.weight"], head["label_embs_concat"]
        n = num_classes[0] if num_classes else embs.shape[0]
        teacher = cls(weight.shape[1], weight.shape[0], n)
        with torch.no_grad():
            teacher.final_proj.weight.copy_(weight)
            teacher.final_proj.bias.copy_(head["final_proj.bias"])
            teacher.label_embs.copy_(embs[:n])
        return teacher


@dataclass
class KMeansTargets:
    centers: torch.Tensor  # (K, F)
    features: str = "mfcc"  # or "layer:<l>"

    @property
    def num_classes(self) -> int:
        return self.centers.shape[0]

    @property
    def layer(self) -> int | None:
        return int(self.features.split(":")[1]) if self.features.startswith("layer:") else None

    @classmethod
    def fit(
        cls, feats: np.ndarray, k: int, features: str = "mfcc", seed: int = 0, batch_size: int = 10000, n_init: int = 20
    ) -> KMeansTargets:
        """MiniBatchKMeans (k-means++) on frame features (N, F), as in HuBERT's recipe."""
        from sklearn.cluster import MiniBatchKMeans

        if len(feats) < k:
            raise ValueError(f"k-means with K={k} needs at least {k} frames, got {len(feats)}")
        km = MiniBatchKMeans(
            n_clusters=k,
            init="k-means++",
            batch_size=batch_size,
            n_init=n_init,
            random_state=seed,
            max_no_improvement=100,
            compute_labels=False,
        )
        km.fit(np.asarray(feats, dtype=np.float32))
        return cls(torch.from_numpy(km.cluster_centers_).float(), features)

    def assign(self, feats: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Nearest centre per frame: feats (..., F) -> ids (...)."""
        flat = feats.reshape(-1, feats.shape[-1]).float()
        ids = torch.cat([torch.cdist(part, self.centers).argmin(-1) for part in flat.split(chunk)])
        return ids.reshape(feats.shape[:-1])

    def save(self, path: str | Path) -> None:
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"centers": self.centers.contiguous()}, str(tmp), metadata={"features": self.features})

    @classmethod
    def load(cls, path: str | Path) -> KMeansTargets:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            features = f.metadata()["features"]
        return cls(load_file(str(path))["centers"].float(), features)
