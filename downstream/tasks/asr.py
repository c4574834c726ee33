"""ASR: character CTC over a BLSTM (MiniSUPERB: LibriSpeech/Libri-light, 20k steps); primary score CER.

Synthetic: the clean utterances and their sentences. Real: LibriSpeech, train-* subsets for training,
test-* for testing, transcripts as written; its dev-* subsets, where present, calibrate the budgets.
"""

from __future__ import annotations

from pathlib import Path

import torch

from daisy.data import readers
from daisy.downstream import metrics
from daisy.downstream.probes import CharVocab, CTCProbe
from daisy.downstream.tasks.base import Task, TaskData, clean_speech, nonempty, register


@register
class ASR(Task):
    name = "asr"
    primary = ("cer", False)
    steps = {"quick": 40, "cpu": 400, "paper": 20000}
    synthetic_source = "clean"
    corpus = "librispeech"
    vocab = CharVocab()

    def synthetic(self, corpus):
        return clean_speech(corpus)

    def read_corpus(self, root: Path, pick, load):
        utts = readers.librispeech(root)
        out = {}
        for split in ("train", "test", "dev"):  # dev only for budget calibration, and optional
            found = [u for u in utts if u.split == split]
            if split != "dev":
                nonempty(found, root, f"LibriSpeech {split}-* utterances (asr needs train-* and test-* subsets)")
            chosen = pick(found, split)
            out[split] = TaskData([load(u.path) for u in chosen], texts=[u.text for u in chosen])
        return out

    def head(self, dim, size, train):
        return CTCProbe(dim, len(self.vocab), size.hidden, size.layers)

    def loss(self, head, features, frames, idx, data):
        encoded = [torch.tensor(self.vocab.encode(data.texts[i])) for i in idx]
        targets = torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True)
        return head.loss(features, frames, targets, torch.tensor([len(e) for e in encoded]))

    def evaluate(self, head, batches, data):
        hyps, refs = [], []
        for features, frames, idx in batches:
            hyps += [self.vocab.decode(ids) for ids in head.predict(features, frames)]
            refs += [CharVocab.normalise(data.texts[i]) for i in idx]
        return {"cer": metrics.cer(refs, hyps), "wer": metrics.wer(refs, hyps), "example": hyps[0]}
