"""Frame targets the exit heads learn to predict: the model's own answer, or k-means clusters.

- `TeacherHead` (DAISY): HuBERT's masked-prediction head (fairseq `final_proj` + label embeddings,
  cosine similarity / temperature 0.1). Its argmax over the full model's last state, with no
  masking, is the model's own answer per frame.
- `KMeansTargets` (HuBERT's recipe, for checkpoints without that head): cluster ids of 39-dim MFCC
  (`features="mfcc"`) or of a layer's hidden states (`features="layer:6"`), scikit-learn
  MiniBatchKMeans with k-means++. Layer states are those of `source` (HuBERT iteration 2: a layer of
  the previous iteration's model) or, where the codebook names no source, of the model it is used with.
"""

from __future__ import annotations

import functools
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
    source: str | None = None  # model directory whose layer states were clustered; None: the model's own

    @property
    def num_classes(self) -> int:
        return self.centers.shape[0]

    @property
    def layer(self) -> int | None:
        return int(self.features.split(":")[1]) if self.features.startswith("layer:") else None

    @classmethod
    def fit(
        cls,
        feats: np.ndarray,
        k: int,
        features: str = "mfcc",
        seed: int = 0,
        batch_size: int = 10000,
        n_init: int = 20,
        source: str | None = None,
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
        return cls(torch.from_numpy(km.cluster_centers_).float(), features, source)

    def assign(self, feats: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Nearest centre per frame: feats (..., F) -> ids (...)."""
        flat = feats.reshape(-1, feats.shape[-1]).float()
        centers = self.centers.to(flat.device)  # layer states come from the model's device, MFCC from the CPU
        ids = torch.cat([torch.cdist(part, centers).argmin(-1) for part in flat.split(chunk)])
        return ids.reshape(feats.shape[:-1])

    def describe(self) -> str:
        """What the codebook clusters, for messages and provenance."""
        if self.layer is None:
            return self.features
        return f"layer {self.layer} states of {self.source or 'the model it is used with'}"

    @torch.no_grad()
    def frame_features(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None, backbone=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The features this codebook clusters, for a padded batch wavs (B, T): (B, T', F) and valid frames (B,).
        MFCC, or the layer's states of `source` (or of `backbone`, the model the codebook goes with, where it
        names no source)."""
        lengths = torch.full((wavs.shape[0],), wavs.shape[1]) if lengths is None else lengths
        if self.layer is None:
            from daisy.features import mfcc

            feats = [mfcc(w[:n]) for w, n in zip(wavs, lengths.tolist())]
            return nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([len(f) for f in feats])
        if self.source is not None:
            backbone = source_backbone(self.source)
        elif backbone is None:
            raise ValueError(f"k-means on {self.describe()}: pass the backbone whose states it clusters")
        return layer_states(backbone, wavs, lengths, self.layer), backbone.frame_lengths(lengths)

    def targets(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None, backbone=None, frames: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cluster id per frame of a padded batch, (B, T'); ids of padded frames are meaningless. `frames` (B,):
        the frame counts the labels must have (those of the model they train), where they may differ."""
        feats, have = self.frame_features(wavs, lengths, backbone)
        ids = self.assign(feats)
        return ids if frames is None else align_frames(ids, have, frames)

    def save(self, path: str | Path) -> None:
        metadata = {"features": self.features}
        if self.source is not None:
            metadata["source"] = self.source
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"centers": self.centers.contiguous()}, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> KMeansTargets:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata()
            return cls(load_file(str(path))["centers"].float(), metadata["features"], metadata.get("source"))
        except FileNotFoundError:
            raise
        except Exception as e:  # safetensors' own error type for a corrupt file; a file without the codebook's keys
            raise ValueError(f"{path}: not a readable k-means codebook ({e})") from e


def source_backbone(path: str):
    """The label source model of an iteration-2 codebook, loaded once per process (and again if replaced)."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"k-means targets cluster layer states of {path}, which is missing: labels need that model (HuBERT "
            "iteration 2 labels come from the previous iteration's model); restore it at that path"
        ) from None
    return _load_backbone(path, stat.st_ino, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_backbone(path: str, inode: int, mtime: int):
    from daisy.upstream import load_backbone

    return load_backbone(path)


def align_frames(ids: torch.Tensor, have: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """ids (B, T) with `have` (B,) valid frames -> (B, max(want)) with `want` valid frames.

    Every HubertBackbone has a 320-sample hop, so frame t means the same time everywhere; but a label model
    with another conv receptive field than 400 samples gives an utterance a frame more or less at its end:
    the extra frame is dropped, a missing one repeats the last label.
    """
    width = int(want.max())
    if ids.shape[1] < width:
        ids = torch.cat([ids, ids[:, -1:].expand(-1, width - ids.shape[1])], dim=1)
    ids = ids[:, :width].clone()
    for row, (h, w) in enumerate(zip(have.tolist(), want.tolist())):
        if 0 < h < w:
            ids[row, h:w] = ids[row, h - 1]
    return ids


@torch.no_grad()
def layer_states(backbone, wavs: torch.Tensor, lengths: torch.Tensor, layer: int) -> torch.Tensor:
    """State `layer` (1..L) of `backbone` for a padded batch, (B, T', D)."""
    if not 1 <= layer <= backbone.num_layers:
        raise ValueError(f"label layer {layer} out of range 1..{backbone.num_layers}")
    if backbone.config.feat_extract_norm != "group":
        return backbone.hidden_states(wavs, lengths, layer)[layer]
    # a group-normed conv front-end (HuBERT Base) normalises over time, padding included: run utterances alone
    parts = [backbone.hidden_states(w[None, :n], None, layer)[layer][0] for w, n in zip(wavs, lengths.tolist())]
    return nn.utils.rnn.pad_sequence(parts, batch_first=True)
