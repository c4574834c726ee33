"""K-means frame labels: on MFCCs (HuBERT iteration 1) or on a layer of an earlier model (iteration 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from daisy.data.batching import batches
from daisy.targets import KMeansTargets, layer_states, source_backbone


def fit_mfcc_kmeans(
    wavs: list[np.ndarray], k: int, max_frames: int = 200_000, seed: int = 0, feats: list[torch.Tensor] | None = None
) -> KMeansTargets:
    """K-means on a sample of up to `max_frames` MFCC frames of `wavs` (or of precomputed `feats`)."""
    from daisy.features import mfcc

    if feats is None:
        feats = [mfcc(torch.from_numpy(w)) for w in wavs]
    feats = torch.cat(feats).numpy()
    rng = np.random.default_rng(seed)
    sample = feats[rng.choice(len(feats), size=min(max_frames, len(feats)), replace=False)]
    return KMeansTargets.fit(sample, k, features="mfcc", seed=seed)


@torch.no_grad()
def fit_layer_kmeans(
    wavs: list[np.ndarray],
    source: str | Path,
    layer: int,
    k: int,
    max_frames: int = 200_000,
    seed: int = 0,
    batch_size: int = 8,
) -> KMeansTargets:
    """K-means on up to `max_frames` states of `layer` of the model at `source` (HuBERT iteration 2).

    Utterances are drawn at random until the sample is full, so the source model runs only on those
    (and the sample of states, not all of them, is held in memory)."""
    source = str(Path(source).resolve())  # recorded in the codebook: labelling later needs that model
    backbone = source_backbone(source)
    rng = np.random.default_rng(seed)
    chosen, total = [], 0
    for i in rng.permutation(len(wavs)).tolist():
        if total >= max_frames:
            break
        chosen.append(wavs[i])
        total += int(backbone.frame_lengths(torch.tensor(len(wavs[i]))))
    feats = []
    for _, padded, lengths in batches(chosen, batch_size):
        states = layer_states(backbone, padded, lengths, layer)
        feats += [states[row, :n] for row, n in enumerate(backbone.frame_lengths(lengths).tolist())]
    feats = torch.cat(feats).numpy()
    sample = feats[rng.choice(len(feats), size=min(max_frames, len(feats)), replace=False)]
    return KMeansTargets.fit(sample, k, features=f"layer:{layer}", seed=seed, source=source)
