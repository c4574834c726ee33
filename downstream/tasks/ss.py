"""Speech separation of two speakers: BLSTM masks, MSE under the best permutation (MiniSUPERB:
Libri2Mix, 15k steps); primary score SI-SDR improvement.

Synthetic: two utterances of different speakers, each scaled to unit power, the second at -2.5..+2.5 dB,
summed over the shorter length (as Libri2Mix), drawn from an RNG seeded by (seed, split, 1000 + index).
Real: Libri2Mix wav16k/min, mix_clean input and the stacked (s1, s2) target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from daisy.data import readers
from daisy.downstream import metrics
from daisy.downstream.probes import SeparationProbe
from daisy.downstream.tasks.base import SPLIT_IDS, Task, TaskData, aligned, nonempty, pad_signals, register


def two_speaker_mixtures(wavs, speakers, seed: int, split: str, count: int) -> TaskData:
    data = TaskData([])
    for i in range(count):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], 1000 + i])
        a = int(rng.integers(len(wavs)))
        others = [j for j in range(len(wavs)) if speakers[j] != speakers[a]]
        b = others[int(rng.integers(len(others)))]
        n = min(len(wavs[a]), len(wavs[b]))
        s1 = wavs[a][:n] / np.sqrt(np.mean(wavs[a][:n] ** 2) + 1e-12)
        s2 = wavs[b][:n] / np.sqrt(np.mean(wavs[b][:n] ** 2) + 1e-12) * 10 ** (rng.uniform(-2.5, 2.5) / 20)
        sources = 0.05 * np.stack([s1, s2]).astype(np.float32)
        data.inputs.append(sources.sum(0))
        data.targets.append(sources)
    return data


@register
class SS(Task):
    name = "ss"
    primary = ("si_sdri", True)
    steps = {"quick": 30, "cpu": 200, "paper": 15000}
    synthetic_source = "mix"
    corpus = "libri2mix"
    capped = True

    def synthetic(self, corpus):
        splits = (("train", corpus.train, corpus.train_wavs), ("test", corpus.test, corpus.test_wavs))
        return {
            split: two_speaker_mixtures(wavs, [u.speaker for u in utts], corpus.seed, split, len(wavs))
            for split, utts, wavs in splits
        }

    def read_corpus(self, root: Path, pick, load):
        triples = readers.libri2mix_triples(root)  # wav16k/min, mix_clean
        out = {}
        for split in ("train", "test"):
            found = nonempty([t for t in triples if t[0].split == split], root, f"Libri2Mix {split} mixtures")
            data = TaskData([])
            for utt, s1, s2 in pick(found, split):
                mix, *sources = aligned([load(p) for p in (utt.path, s1, s2)], [utt.path, s1, s2])
                data.inputs.append(mix)
                data.targets.append(np.stack(sources).astype(np.float32))
            out[split] = data
        return out

    def head(self, dim, size, train):
        return SeparationProbe(dim, size.hidden, size.layers)

    def loss(self, head, features, frames, idx, data):
        return head.loss(features, pad_signals(data.inputs, idx), pad_signals(data.targets, idx), frames)

    def evaluate(self, head, batches, data):
        scores = []
        for features, frames, idx in batches:
            mix = pad_signals(data.inputs, idx)
            est = head.separate(features, mix, frames)
            for row, i in enumerate(idx):
                n = data.targets[i].shape[-1]
                ref = torch.from_numpy(data.targets[i])[None]
                aligned_est = metrics.align_sources(est[row : row + 1, :, :n], ref)
                scores.append(metrics.si_sdr_improvement(aligned_est, mix[row : row + 1, :n], ref).mean().item())
        return {"si_sdri": float(np.mean(scores))} if scores else {}
