"""Training the supervised early-exit baselines (`daisy.supervised_exits`) on transcribed audio.

Recipes:
- `wright-scratch`: a randomly initialised encoder of the given backbone's shape, a Linear CTC head on every
  layer, all trained with the sum of the exits' CTC losses (Wright et al.'s best setting).
- `wright-finetune`: the pretrained backbone fine-tuned with the same heads and loss.
- `hubert-ee`: the pretrained backbone fine-tuned with a final CTC head only (`steps`), then frozen while
  exit branches (self-attention + CTC) at intermediate layers learn (`branch_steps`).

Our choices (the papers' full recipes run 100k+ steps on 100-960 h): AdamW with a linear warm-up over the
first tenth of the steps, then constant; pretrained encoders fine-tune at `lr * finetune_lr_scale` with the conv
front-end frozen (standard HuBERT/wav2vec 2.0 fine-tuning), new heads and the scratch encoder at `lr`; no
SpecAugment or layerdrop. Batches are drawn at random (seeded) from the training utterances. Each run reports
what it cost: optimiser steps and wall-clock seconds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from daisy.supervised_exits import SupervisedExitHubert, hubert_ee_layers
from daisy.upstream import HubertBackbone

RECIPES = ("hubert-ee", "wright-scratch", "wright-finetune")


@dataclass
class CTCTrainConfig:
    steps: int = 2000
    branch_steps: int | None = None  # hubert-ee's second stage (None: `steps`)
    batch_size: int = 8
    lr: float = 5e-4
    finetune_lr_scale: float = 0.1
    warmup: float = 0.1  # share of the steps
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if self.branch_steps is not None and (not isinstance(self.branch_steps, int) or self.branch_steps < 1):
            raise ValueError(f"branch_steps must be a whole number >= 1, got {self.branch_steps!r}")
        if not (self.lr > 0 and self.finetune_lr_scale > 0 and 0 <= self.warmup < 1):
            raise ValueError(f"lr and finetune_lr_scale must be > 0 and warmup in 0..1, got {self}")


@dataclass
class TrainCost:
    steps: int
    seconds: float
    stages: dict

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "stages": self.stages}


def encode_texts(texts: list[str], encode: Callable[[str], list[int]]) -> list[torch.Tensor]:
    """Label ids (>= 1) per utterance; an utterance with no label after encoding is a ValueError naming it."""
    encoded = [torch.tensor(encode(t), dtype=torch.long) for t in texts]
    empty = [i for i, e in enumerate(encoded) if len(e) == 0]
    if empty:
        raise ValueError(f"training utterance(s) {empty[:5]} have no characters the CTC vocabulary knows")
    return encoded


def _batch(wavs, labels, idx):
    lengths = torch.tensor([len(wavs[i]) for i in idx])
    padded = torch.zeros(len(idx), int(lengths.max()))
    for row, i in enumerate(idx):
        padded[row, : len(wavs[i])] = torch.from_numpy(np.asarray(wavs[i], dtype=np.float32))
    targets = torch.nn.utils.rnn.pad_sequence([labels[i] for i in idx], batch_first=True)
    return padded, lengths, targets, torch.tensor([len(labels[i]) for i in idx])


def _stage(
    model: SupervisedExitHubert,
    groups: list[dict],
    wavs,
    labels,
    steps: int,
    config: CTCTrainConfig,
    layers,
    frozen_backbone: bool,
    stream: int,
    on_step: Callable[[dict], None] | None,
) -> dict:
    """One optimisation stage; returns its steps, seconds and first / last summed loss."""
    optim = torch.optim.AdamW(groups)
    warm = max(1, int(config.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / warm))
    rng = np.random.default_rng([config.seed, stream])
    model.train()
    if frozen_backbone:
        model.backbone.eval()  # no dropout in a frozen encoder
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        idx = rng.choice(len(wavs), size=min(config.batch_size, len(wavs)), replace=False).tolist()
        loss, parts = model.ctc_loss(*_batch(wavs, labels, idx), layers=layers, frozen_backbone=frozen_backbone)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(parts)
    model.eval()
    return {"steps": steps, "seconds": time.perf_counter() - start, "first_loss": losses[0], "last_loss": losses[-1]}


def _param_groups(model: SupervisedExitHubert, config: CTCTrainConfig, pretrained: bool) -> list[dict]:
    backbone = model.backbone.model
    if pretrained:
        backbone.feature_extractor.requires_grad_(False)
    encoder = [p for p in backbone.parameters() if p.requires_grad]
    scale = config.finetune_lr_scale if pretrained else 1.0
    return [
        {"params": encoder, "lr": config.lr * scale},
        {"params": list(model.heads.parameters()), "lr": config.lr},
    ]


def train_recipe(
    recipe: str,
    pretrained: HubertBackbone,
    wavs: list[np.ndarray],
    labels: list[torch.Tensor],
    vocab_size: int,
    config: CTCTrainConfig,
    on_step: Callable[[dict], None] | None = None,
) -> tuple[SupervisedExitHubert, TrainCost]:
    """The trained model of `recipe` and its cost. `pretrained` is left untouched (recipes work on a copy);
    `labels` are each utterance's label ids (>= 1; 0 is the blank)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if not wavs or len(wavs) != len(labels):
        raise ValueError(f"{len(wavs)} training utterances for {len(labels)} transcripts (need as many, at least 1)")
    with torch.random.fork_rng(devices=[]):  # seeded dropout and initialisation, the caller's RNG untouched
        torch.manual_seed(config.seed)
        return _train(recipe, pretrained, wavs, labels, vocab_size, config, on_step)


def _train(recipe, pretrained, wavs, labels, vocab_size, config, on_step):
    if recipe == "wright-scratch":
        backbone = HubertBackbone.from_config(copy.deepcopy(pretrained.config))  # random, same shape
    else:
        backbone = copy.deepcopy(pretrained)
    num_layers = backbone.num_layers
    if recipe == "hubert-ee":
        model = SupervisedExitHubert.build(
            backbone, vocab_size, hubert_ee_layers(num_layers), "attention", recipe, config.seed
        )
        groups = _param_groups(model, config, pretrained=True)
        final = _stage(model, groups, wavs, labels, config.steps, config, (num_layers,), False, 0, on_step)
        model.backbone.requires_grad_(False)
        model.heads.heads[num_layers - 1].requires_grad_(False)  # the fine-tuned model's CTC head stays as it is
        branches = [p for p in model.heads.parameters() if p.requires_grad]
        exits = [layer for layer in model.branch_layers if layer < num_layers]
        stages = {"finetune": final}
        if exits:
            stages["branches"] = _stage(
                model,
                [{"params": branches, "lr": config.lr}],
                wavs,
                labels,
                config.branch_steps or config.steps,
                config,
                tuple(exits),
                True,
                1,
                on_step,
            )
    else:
        model = SupervisedExitHubert.build(backbone, vocab_size, None, "linear", recipe, config.seed)
        groups = _param_groups(model, config, recipe == "wright-finetune")
        stages = {"train": _stage(model, groups, wavs, labels, config.steps, config, None, False, 0, on_step)}
    model.requires_grad_(False)
    cost = TrainCost(sum(s["steps"] for s in stages.values()), sum(s["seconds"] for s in stages.values()), stages)
    return model.eval(), cost
