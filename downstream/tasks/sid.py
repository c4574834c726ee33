"""Speaker identification: mean pooling + linear (MiniSUPERB: VoxCeleb1, 20k steps); primary score accuracy.

Closed set, as VoxCeleb1's identification task: speaker ids are those of the training selection.
Synthetic: the clean utterances and their voices (every test speaker must occur in training). Real:
VoxCeleb1's identification split (1 train, 3 test); test utterances of unseen speakers are dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from daisy.data import readers
from daisy.downstream import metrics
from daisy.downstream.probes import SIDProbe
from daisy.downstream.tasks.base import Task, TaskData, clean_speech, nonempty, register


@register
class SID(Task):
    name = "sid"
    primary = ("accuracy", True)
    steps = {"quick": 40, "cpu": 200, "paper": 20000}
    synthetic_source = "clean"
    corpus = "voxceleb1"

    def check_synthetic(self, corpus):
        unknown = {u.speaker for u in corpus.test} - {u.speaker for u in corpus.train}
        if unknown:
            raise ValueError(
                f"speaker id is closed-set: test speakers {sorted(unknown)[:3]} never occur in the "
                f"{len(corpus.train)} training utterances (raise --train)"
            )

    def synthetic(self, corpus):
        return clean_speech(corpus)

    def read_corpus(self, root: Path, pick, load):
        utts = readers.voxceleb1(root)
        train = pick(nonempty([u for u in utts if u.split == "train"], root, "VoxCeleb1 training utterances"), "train")
        speaker_ids = {s: i for i, s in enumerate(sorted({u.speaker for u in train}))}
        test_all = nonempty(
            [u for u in utts if u.split == "test"], root, "VoxCeleb1 test utterances (iden_split.txt lines '3 <wav>')"
        )
        # closed-set identification: a test speaker must have been seen in training
        test = pick([u for u in test_all if u.speaker in speaker_ids], "test")
        if not test:
            raise ValueError(
                f"{root}: none of the {len(test_all)} test utterances is by one of the {len(speaker_ids)} speakers "
                "in the training selection (speaker id is closed-set: raise --train or check iden_split.txt)"
            )

        def task(chosen):
            return TaskData([load(u.path) for u in chosen], speakers=[speaker_ids[u.speaker] for u in chosen])

        return {"train": task(train), "test": task(test)}

    def head(self, dim, size, train):
        # speaker ids are numbered over the training speakers, so the largest one is in `train`
        return SIDProbe(dim, max(train.speakers, default=0) + 1)

    def loss(self, head, features, frames, idx, data):
        return head.loss(features, frames, torch.tensor([data.speakers[i] for i in idx]))

    def evaluate(self, head, batches, data):
        preds, truth = [], []
        for features, frames, idx in batches:
            preds += head.predict(features, frames).tolist()
            truth += [data.speakers[i] for i in idx]
        return {"accuracy": metrics.accuracy(preds, truth)}
