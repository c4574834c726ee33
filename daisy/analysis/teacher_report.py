"""How good a teacher a pretrained HuBERT is, on held-out speech (figures for its model card).

- masked-frame accuracy of its own masked prediction against its k-means targets, next to chance
  (1 / K) and the majority class;
- how many classes its own argmax (no masking) uses, and the entropy of that usage;
- linear probes per layer, next to the same probe on the MFCC input: speaker id on mean-pooled
  features (logistic regression), characters on frame features (a linear CTC probe, CER).
DAISY adaptivity (exit depth per SNR) comes from the noise sweep on the trained heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

from daisy.data.batching import batches
from daisy.features import mfcc
from daisy.model import load_teacher
from daisy.targets import KMeansTargets
from daisy.upstream import HubertBackbone


@torch.no_grad()
def masked_prediction(model_dir: str | Path, wavs: list[np.ndarray], seed: int = 0) -> dict:
    """Masked accuracy (HuBERT's masking: prob 0.8, span 10) and own-argmax usage on clean `wavs`."""
    model_dir = Path(model_dir)
    backbone = HubertBackbone.from_pretrained(model_dir)  # also labels frames where the codebook is of its own layer
    teacher = load_teacher(model_dir / "teacher_head.safetensors")
    km = KMeansTargets.load(model_dir / "kmeans.safetensors")
    if teacher is None:
        raise ValueError(f"{model_dir}: no teacher_head.safetensors (not a daisy pretrain export)")
    rng = np.random.default_rng(seed)
    correct = total = 0
    own, labels_all = [], []
    for _, padded, lengths in batches(wavs, 8):
        frames = backbone.frame_lengths(lengths)
        # the features the codebook was fitted on: MFCC, or a layer of its source model (HuBERT iteration 2)
        labels = km.targets(padded, lengths, backbone, frames=frames)
        valid = torch.arange(labels.shape[1])[None] < frames[:, None]
        labels = labels.masked_fill(~valid, -1)
        np.random.seed(int(rng.integers(2**31)))  # noqa: NPY002 - transformers' masking uses numpy's global RNG
        mask = torch.from_numpy(_compute_mask_indices(tuple(labels.shape), 0.8, 10, valid.long(), 2)) & valid
        hidden, _ = backbone.encode(padded, lengths, mask)  # input normalised as in pretraining; labels on raw audio
        pred = teacher(hidden)
        correct += int((pred[mask] == labels[mask]).sum())
        total += int(mask.sum())
        plain = teacher(backbone.encode(padded, lengths)[0])
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
def _layer_frames(backbone: HubertBackbone, wavs: list[np.ndarray]):
    """(i, [MFCC (T, 39), state 0 (T, D), ..., state L]) for each utterance, unpadded."""
    for idx, padded, lengths in batches(wavs, 8):
        states = backbone.hidden_states(padded, lengths)
        frames = backbone.frame_lengths(lengths)
        for row, i in enumerate(idx):
            n = int(frames[row])
            yield i, [mfcc(torch.from_numpy(wavs[i])), *(s[row, :n] for s in states)]


def pooled_layers(model_dir: str | Path, wavs: list[np.ndarray]) -> np.ndarray:
    """Mean-pooled features (N, L + 2, D): index 0 is MFCC (39 dims, zero-padded), then states 0..L."""
    backbone = HubertBackbone.from_pretrained(model_dir)
    width = max(39, backbone.hidden_size)
    out = np.zeros((len(wavs), backbone.num_layers + 2, width), dtype=np.float32)
    for i, feats in _layer_frames(backbone, wavs):
        for j, f in enumerate(feats):
            out[i, j, : f.shape[-1]] = f.mean(0).numpy()
    return out


def frame_layers(model_dir: str | Path, wavs: list[np.ndarray]) -> list[list[torch.Tensor]]:
    """Frame features per feature index (MFCC, then states 0..L) and utterance: [j][i] (T_i, F_j), fp16
    (computed once, read by every step of every probe; fp16 halves what ~300 utterances x L + 2 take)."""
    backbone = HubertBackbone.from_pretrained(model_dir)
    out: list[list[torch.Tensor]] = [[None] * len(wavs) for _ in range(backbone.num_layers + 2)]
    for i, feats in _layer_frames(backbone, wavs):
        for j, f in enumerate(feats):
            out[j][i] = f.half()
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


def char_probe(
    train_x: list[list[torch.Tensor]],
    train_texts: list[str],
    test_x: list[list[torch.Tensor]],
    test_texts: list[str],
    steps: int = 600,
    batch_size: int = 4,
    lr: float = 0.03,
    seed: int = 0,
) -> list[float]:
    """Test CER of a linear CTC character probe per feature index (`frame_layers` output: [j][i] (T_i, F_j)).

    One `Linear(F_j, characters + blank)` per frame, no context: what a layer says about characters
    linearly, frame by frame. Same seed, batches and step budget for every feature index. The default
    budget (600 steps of 4 utterances, 8 passes over 300) takes ~2 s per feature index on one CPU thread:
    far from converged, but enough to separate the MFCC input from the layers of a trained model."""
    from daisy.downstream.probes import CharVocab

    vocab = CharVocab()
    train_y = [torch.tensor(vocab.encode(t)) for t in train_texts]
    refs = [CharVocab.normalise(t) for t in test_texts]
    cers = []
    for train_j, test_j in zip(train_x, test_x):
        probe, norm = _fit_ctc_probe(train_j, train_y, len(vocab), steps, batch_size, lr, seed)
        cers.append(_probe_cer(probe, norm, test_j, refs, vocab))
    return cers


def _standardise(feats: list[torch.Tensor], norm: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """float32, zero mean and unit variance per dimension (train statistics): one lr fits every feature index."""
    mean, std = norm
    return [(f.float() - mean) / std for f in feats]


def _padded(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([len(f) for f in feats])


def _fit_ctc_probe(feats, targets, vocab_size, steps, batch_size, lr, seed):
    frames = torch.cat([f.float() for f in feats])
    norm = frames.mean(0), frames.std(0) + 1e-5
    xs = _standardise(feats, norm)
    # batches of similar lengths: CTC's cost on CPU grows with the padded width, and dominates a step
    order = sorted(range(len(xs)), key=lambda i: len(xs[i]))
    buckets = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.nn.Linear(frames.shape[1], vocab_size)
    optim = torch.optim.Adam(probe.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1 - step / max(steps, 1))  # decay: a quieter end
    for step in range(steps):
        if step % len(buckets) == 0:
            epoch = torch.randperm(len(buckets), generator=gen).tolist()
        pick = buckets[epoch[step % len(buckets)]]
        x, lengths = _padded([xs[i] for i in pick])
        y = [targets[i] for i in pick]
        log_probs = torch.log_softmax(probe(x), -1).transpose(0, 1)  # (T, B, V) as ctc_loss wants
        loss = torch.nn.functional.ctc_loss(
            log_probs, torch.cat(y), lengths, torch.tensor([len(t) for t in y]), blank=0, zero_infinity=True
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
    return probe, norm


@torch.no_grad()
def _probe_cer(probe, norm, feats, refs, vocab, batch_size: int = 32) -> float:
    from daisy.downstream.metrics import cer
    from daisy.downstream.probes import ctc_greedy_decode

    hyps = []
    for start in range(0, len(feats), batch_size):
        x, lengths = _padded(_standardise(feats[start : start + batch_size], norm))
        hyps += [vocab.decode(ids) for ids in ctc_greedy_decode(probe(x), lengths)]
    return cer(refs, hyps)
