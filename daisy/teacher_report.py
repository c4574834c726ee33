"""How good a teacher a pretrained HuBERT is, on held-out speech (figures for its model card).

- masked-frame accuracy of its own masked prediction against its k-means targets, next to chance
  (1 / K) and the majority class;
- how many classes its own argmax (no masking) uses, and the entropy of that usage;
- a linear speaker-id probe on every layer's mean-pooled features, next to the same probe on MFCC.
DAISY adaptivity (exit depth per SNR) comes from the noise sweep on the trained heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import HubertModel
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

from daisy.features import mfcc
from daisy.model import load_teacher
from daisy.pipeline import batches
from daisy.targets import KMeansTargets


@torch.no_grad()
def masked_prediction(model_dir: str | Path, wavs: list[np.ndarray], seed: int = 0) -> dict:
    """Masked accuracy (HuBERT's masking: prob 0.8, span 10) and own-argmax usage on clean `wavs`."""
    model_dir = Path(model_dir)
    hubert = HubertModel.from_pretrained(model_dir).eval()
    teacher = load_teacher(model_dir / "teacher_head.safetensors")
    km = KMeansTargets.load(model_dir / "kmeans.safetensors")
    if teacher is None:
        raise ValueError(f"{model_dir}: no teacher_head.safetensors (not a daisy pretrain export)")
    rng = np.random.default_rng(seed)
    correct = total = 0
    own, labels_all = [], []
    for idx, padded, lengths in batches(wavs, 8):
        frames = hubert._get_feat_extract_output_lengths(lengths)
        width = int(frames.max())
        labels = torch.full((len(idx), width), -1, dtype=torch.long)
        for row, i in enumerate(idx):
            lab = km.assign(mfcc(torch.from_numpy(wavs[i])))
            labels[row, : len(lab)] = lab
        valid = labels >= 0
        attention = (torch.arange(padded.shape[1])[None] < lengths[:, None]).long()
        np.random.seed(int(rng.integers(2**31)))  # noqa: NPY002 - transformers' masking uses numpy's global RNG
        mask = torch.from_numpy(_compute_mask_indices((len(idx), width), 0.8, 10, valid.long(), 2)) & valid
        hidden = hubert(padded, attention_mask=attention, mask_time_indices=mask).last_hidden_state
        pred = teacher(hidden)
        correct += int((pred[mask] == labels[mask]).sum())
        total += int(mask.sum())
        plain = teacher(hubert(padded, attention_mask=attention).last_hidden_state)
        own.append(plain[valid])
        labels_all.append(labels[valid])
    own_ids, target_ids = torch.cat(own), torch.cat(labels_all)
    k = km.num_classes
    usage = torch.bincount(own_ids, minlength=teacher.num_classes).double()
    p = usage[usage > 0] / usage.sum()
    majority = torch.bincount(target_ids, minlength=k).max().item() / len(target_ids)
    return {
        "masked_accuracy": correct / max(total, 1),
        "chance": 1 / k,
        "majority_class": majority,
        "classes": teacher.num_classes,
        "own_argmax_classes_used": int((usage > 0).sum()),
        "own_argmax_usage_entropy_bits": float(-(p * p.log2()).sum()),
        "max_usage_entropy_bits": float(np.log2(teacher.num_classes)),
        "own_argmax_top_class_share": float(usage.max() / usage.sum()),
    }


@torch.no_grad()
def pooled_layers(model_dir: str | Path, wavs: list[np.ndarray]) -> np.ndarray:
    """Mean-pooled features (N, L + 2, D): index 0 is MFCC (39 dims, zero-padded), then states 0..L."""
    from daisy.upstream import HubertBackbone

    backbone = HubertBackbone.from_pretrained(model_dir)
    width = max(39, backbone.hidden_size)
    out = np.zeros((len(wavs), backbone.num_layers + 2, width), dtype=np.float32)
    for idx, padded, lengths in batches(wavs, 8):
        states = backbone.hidden_states(padded, lengths)
        frames = backbone.frame_lengths(lengths)
        for row, i in enumerate(idx):
            n = int(frames[row])
            out[i, 0, :39] = mfcc(torch.from_numpy(wavs[i])).mean(0).numpy()
            for layer, s in enumerate(states):
                out[i, layer + 1, : s.shape[-1]] = s[row, :n].mean(0).numpy()
    return out


def speaker_probe(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> list[float]:
    """Test accuracy of a logistic-regression speaker probe per feature index (axis 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accs = []
    for j in range(train_x.shape[1]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        probe.fit(train_x[:, j], train_y)
        accs.append(float(probe.score(test_x[:, j], test_y)))
    return accs
