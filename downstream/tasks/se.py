"""Speech enhancement: a BLSTM mask on the log1p STFT, L1 (MiniSUPERB: VoiceBank-DEMAND, 10k steps);
primary score PESQ (wideband), STOI beside it.

Synthetic: each utterance mixed with white, pink or babble noise at an SNR drawn from 0..15 dB, the clean
utterance as target (as VoiceBank-DEMAND), drawn from an RNG seeded by (seed, split, index). Real:
VoiceBank-DEMAND, noisy input and clean target, trimmed to the shorter where they differ by up to 10 ms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daisy.data import readers
from daisy.data.noise import NOISE_TYPES, make_noise, mix_at_snr
from daisy.downstream import metrics
from daisy.downstream.probes import EnhancementProbe
from daisy.downstream.tasks.base import SPLIT_IDS, Task, TaskData, aligned, nonempty, pad_signals, register


def noisy_speech(wavs, seed: int, split: str, babble_pool) -> TaskData:
    data = TaskData([])
    for i, wav in enumerate(wavs):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        kind = NOISE_TYPES[int(rng.integers(len(NOISE_TYPES)))]
        noisy = mix_at_snr(wav, make_noise(kind, len(wav), rng, babble_pool), float(rng.uniform(0.0, 15.0)))
        data.inputs.append(noisy)
        data.targets.append(np.asarray(wav, dtype=np.float32))
    return data


@register
class SE(Task):
    name = "se"
    primary = ("pesq", True)
    steps = {"quick": 30, "cpu": 200, "paper": 10000}
    synthetic_source = "noisy"
    corpus = "voicebank"
    capped = True

    def synthetic(self, corpus):
        babble = corpus.train_wavs[:64]
        return {
            "train": noisy_speech(corpus.train_wavs, corpus.seed, "train", babble),
            "test": noisy_speech(corpus.test_wavs, corpus.seed, "test", babble),
        }

    def read_corpus(self, root: Path, pick, load):
        pairs = readers.voicebank_demand_pairs(root)
        out = {}
        for split in ("train", "test"):
            found = nonempty([p for p in pairs if p[0].split == split], root, f"VoiceBank-DEMAND {split} pairs")
            data = TaskData([])
            for utt, clean in pick(found, split):
                noisy, target = aligned([load(utt.path), load(clean)], [utt.path, clean])
                data.inputs.append(noisy)
                data.targets.append(target)
            out[split] = data
        return out

    def head(self, dim, size, train):
        return EnhancementProbe(dim, size.hidden, size.layers)

    def loss(self, head, features, frames, idx, data):
        return head.loss(features, pad_signals(data.inputs, idx), pad_signals(data.targets, idx), frames)

    def evaluate(self, head, batches, data):
        pesq, stoi = [], []
        for features, frames, idx in batches:
            enhanced = head.enhance(features, pad_signals(data.inputs, idx), frames)
            for row, i in enumerate(idx):
                n = data.targets[i].shape[-1]
                pesq.append(metrics.pesq_wb(data.targets[i], enhanced[row, :n].numpy()))
                stoi.append(metrics.stoi(data.targets[i], enhanced[row, :n].numpy()))
        return {k: float(np.mean(v)) for k, v in (("pesq", pesq), ("stoi", stoi)) if v}
