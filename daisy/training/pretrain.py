"""HuBERT masked-prediction pretraining from scratch (`daisy pretrain`).

Iteration 1 predicts k-means clusters of MFCC frames; iteration 2 (`label_model`) clusters the
states of a layer of an earlier model (HuBERT Base: layer 6 of 12 of iteration 1, K=500). Span
masking (HuBERT's mask_prob 0.8 over span starts, length 10, through transformers'
`_compute_mask_indices`), loss on masked frames only, cosine logits / 0.1 against label embeddings
(`TeacherHead`), AdamW with linear warm-up and decay, conv front-end gradients scaled by 0.1.
Optional denoising: noise mixed into the input at a random SNR while targets stay those of the clean
audio (as WavLM does).

Every step draws its batch, crops, masks and dropout from RNGs seeded by (seed, step, rank), so a run
resumed from a checkpoint continues exactly as an uninterrupted one. The run folder (its checkpoint:
safetensors + JSON, atomic, no pickles; warm starts from an exported model; exports) is `pretrain_state`'s.
DDP through `torchrun` (gloo on CPU, nccl on GPU); rank 0 writes.
"""

from __future__ import annotations

import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from transformers import HubertModel
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

from daisy import distributed
from daisy.data.corpus import Utterance
from daisy.data.crops import training_crops
from daisy.features import mfcc
from daisy.io import atomic_path, run_lock
from daisy.progress import progress
from daisy.run_state import ResumeRefused, audio_identity, load_state, note_legacy
from daisy.targets import KMeansTargets, TeacherHead, source_backbone
from daisy.training.pretrain_state import (
    CHECKPOINT,
    LEGACY,
    check_labels_fit,
    check_resume,
    check_stored_labels,
    export,
    init_codebook,
    restore_checkpoint,
    same_codebook,
    save_checkpoint,
    warm_start,
)
from daisy.upstream import HubertBackbone, preset_config
from daisy.upstream.geometry import num_frames

# Default K. HuBERT Base: 100 on MFCC, then 500 on layer states (960 h of speech). Layer states of our tiny
# models carry more than MFCC but the synthetic corpus is ~3 h (590k frames): 200 keeps ~3k frames per cluster.
MFCC_CLASSES, LAYER_CLASSES = 100, 200


@dataclass
class PretrainConfig:
    preset: str = "tiny"
    overrides: dict = field(default_factory=lambda: {"layerdrop": 0.05})
    num_classes: int | None = None  # K; None: MFCC_CLASSES for MFCC labels, LAYER_CLASSES for layer labels
    # Iteration 2: `label_model` is a model directory (a `daisy pretrain` export, or any HuBERT that
    # HubertBackbone loads) whose layer states are clustered; label_features "layer:<l>" picks the layer
    # (1-based), "layer" or None its middle one (L // 2, HuBERT Base's 6 of 12). Without a label_model: "mfcc".
    label_features: str | None = None
    label_model: str | None = None
    kmeans_frames: int = 200_000
    steps: int = 20_000
    batch_size: int = 8
    crop_seconds: float = 2.0
    lr: float = 5e-4
    warmup: int = 1_000
    weight_decay: float = 0.01
    mask_prob: float = 0.8
    mask_length: int = 10
    feature_grad_mult: float = 0.1
    temperature: float = 0.1
    # fairseq's pred_nomask_weight: also predict the targets of unmasked frames. HuBERT uses 0; DAISY
    # reads the model's answer on unmasked input, so a teacher for DAISY benefits from learning it.
    pred_nomask_weight: float = 0.0
    noise_prob: float = 0.0
    snr_range: tuple[float, float] = (-5.0, 20.0)
    # fairseq's task.normalize (HuBERT Large): each input scaled to zero mean, unit variance, so the model
    # never sees the recording level. Exported into config.json; the backbone then does the same at inference.
    normalize: bool = False
    checkpoint_every: int = 500
    seed: int = 0

    @classmethod
    def quick(cls) -> PretrainConfig:
        """Minutes on 2 CPU cores: a narrower tiny model, few steps. For tests and `--quick`."""
        return cls(
            overrides={
                "hidden_size": 128,
                "intermediate_size": 512,
                "num_attention_heads": 2,
                "conv_dim": (64,) * 7,
                "num_hidden_layers": 4,
                "classifier_proj_size": 64,
                "layerdrop": 0.0,
            },
            num_classes=50,
            kmeans_frames=50_000,
            steps=200,
            warmup=50,
            lr=1e-3,
            checkpoint_every=100,
        )

    def check(self) -> None:
        """A ValueError naming the first field that cannot make a run (before any data is read)."""
        import math

        def number(name, low, high=math.inf, integer=False):
            value = getattr(self, name)
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
                bound = f"at least {low}" if high == math.inf else f"in {low}..{high}"
                raise ValueError(f"{name} must be {'an integer ' if integer else 'a number '}{bound}, got {value!r}")

        for name in ("steps", "batch_size", "mask_length", "checkpoint_every", "kmeans_frames"):
            number(name, 1, integer=True)
        number("warmup", 0, integer=True)
        for name in ("noise_prob", "mask_prob"):
            number(name, 0.0, 1.0)
        for name in ("crop_seconds", "lr", "temperature", "feature_grad_mult"):
            number(name, 1e-12)
        for name in ("weight_decay", "pred_nomask_weight"):
            number(name, 0.0)
        if self.num_classes is not None:
            number("num_classes", 2, integer=True)

    def resolved(self) -> PretrainConfig:
        """A copy with the label defaults filled in (so config.json, checkpoints and exports record them);
        a field that cannot make a run is a ValueError naming it."""
        self.check()
        features = self.label_features or ("mfcc" if self.label_model is None else "layer")
        if features == "mfcc":
            if self.label_model is not None:
                raise ValueError(f"label_model {self.label_model!r} is for layer labels, but label_features is 'mfcc'")
            return replace(self, label_features=features, num_classes=self.num_classes or MFCC_CLASSES)
        if self.label_model is None:
            raise ValueError(f"label_features {features!r} needs label_model: the model whose layer states to cluster")
        if not re.fullmatch(r"layer(:\d+)?", features):
            raise ValueError(f"label_features must be 'mfcc', 'layer' or 'layer:<l>', got {features!r}")
        num_layers = source_backbone(str(Path(self.label_model).resolve())).num_layers
        layer = int(features[6:]) if ":" in features else num_layers // 2
        if not 1 <= layer <= num_layers:
            raise ValueError(f"label layer {layer} out of range 1..{num_layers} of {self.label_model}")
        return replace(self, label_features=f"layer:{layer}", num_classes=self.num_classes or LAYER_CLASSES)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class MaskedPredictionModel(nn.Module):
    """A HubertBackbone + its masked-prediction head; forward returns (loss, masked accuracy). The backbone's
    own layer stepping runs it, as at inference (tested equal to transformers' HubertModel forward)."""

    def __init__(self, config: PretrainConfig, num_classes: int):
        super().__init__()
        hf_config = preset_config(config.preset, **config.overrides)
        hf_config.normalize_waveform = config.normalize
        self.backbone = HubertBackbone(HubertModel(hf_config))
        self.head = TeacherHead(hf_config.hidden_size, hf_config.classifier_proj_size, num_classes, config.temperature)
        mult = config.feature_grad_mult
        if mult != 1.0:  # HuBERT's feature_grad_mult: the conv front-end learns slower
            self.hubert.feature_extractor.register_forward_hook(lambda m, a, out: _ScaleGrad.apply(out, mult))

    @property
    def hubert(self) -> HubertModel:
        return self.backbone.model

    def forward(self, wavs, lengths, labels, mask, nomask_weight: float = 0.0):
        """Loss on masked frames (+ `nomask_weight` x loss on unmasked ones) and masked accuracy."""
        hidden, _ = self.backbone.encode(wavs, lengths, mask, layerdrop=self.hubert.config.layerdrop)
        valid = labels >= 0
        logits = self.head.logits(hidden[mask & valid])
        target = labels[mask & valid]
        loss = nn.functional.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        if nomask_weight:
            unmasked = ~mask & valid
            loss = loss + nomask_weight * nn.functional.cross_entropy(
                self.head.logits(hidden[unmasked]), labels[unmasked]
            )
        return loss, acc


def fit_labels(wavs: list[np.ndarray], config: PretrainConfig) -> tuple[KMeansTargets, list]:
    """k-means on a sample of frames (MFCC, or a layer of `config.label_model`), then a label per frame of
    every utterance."""
    from daisy.training.kmeans import fit_layer_kmeans, fit_mfcc_kmeans

    config = config.resolved()
    if config.label_features == "mfcc":
        feats = [mfcc(torch.from_numpy(w)) for w in wavs]  # computed once: for fitting and for labelling
        km = fit_mfcc_kmeans(wavs, config.num_classes, config.kmeans_frames, config.seed, feats=feats)
        return km, label_audio(km, wavs, feats)
    layer = int(config.label_features.split(":")[1])
    km = fit_layer_kmeans(wavs, config.label_model, layer, config.num_classes, config.kmeans_frames, config.seed)
    return km, label_audio(km, wavs)


def label_audio(km: KMeansTargets, wavs: list[np.ndarray], feats: list[torch.Tensor] | None = None) -> list:
    """A label per frame of every utterance: MFCC frames (`feats` where computed already) assigned one
    utterance at a time, layer states batched."""
    if km.layer is None:
        feats = feats or [mfcc(torch.from_numpy(w)) for w in wavs]
        return [km.assign(f).numpy().astype(np.int16) for f in feats]
    return utterance_labels(km, wavs)


def utterance_labels(km: KMeansTargets, wavs: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
    """k-means ids of every utterance, batched: `num_frames(samples)` of them, the frames of the model trained."""
    from daisy.data.batching import batches

    labels: list[np.ndarray] = [np.empty(0, np.int16)] * len(wavs)
    for idx, padded, lengths in batches(wavs, batch_size):
        want = torch.tensor([num_frames(n) for n in lengths.tolist()])
        ids = km.targets(padded, lengths, frames=want)  # a label model with other conv geometry: aligned here
        for row, i in enumerate(idx):
            labels[i] = ids[row, : want[row]].numpy().astype(np.int16)
    return labels


def _batch(step: int, rank: int, wavs, labels, config: PretrainConfig, others):
    """The batch of `step` on `rank`: random 320-aligned crops (some noisy), their clean labels, spans to mask."""
    rng = np.random.default_rng([config.seed, step, rank])
    crops = training_crops(rng, wavs, config, others)
    frames = num_frames(crops.inputs.shape[1])
    label_t = torch.full((len(crops.picks), frames), -1, dtype=torch.long)
    for j, (i, start, n) in enumerate(zip(crops.picks, crops.start_frames, crops.lengths.tolist())):
        lab = labels[i][start : start + num_frames(n)]
        label_t[j, : len(lab)] = torch.from_numpy(lab.astype(np.int64))
    np.random.seed(int(rng.integers(2**31)))  # noqa: NPY002 - transformers' span masking draws from numpy's global RNG
    mask = _compute_mask_indices(
        (len(crops.picks), frames), config.mask_prob, config.mask_length, (label_t >= 0).long(), 2
    )
    return crops.inputs, crops.lengths, label_t, torch.from_numpy(mask) & (label_t >= 0)


def _lr_lambda(config: PretrainConfig):
    def f(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        return max(0.0, (config.steps - step) / max(1, config.steps - config.warmup))

    return f


def pretrain(
    corpus: list[Utterance],
    out: str | Path,
    config: PretrainConfig,
    device: str = "cpu",
    stop_after: int | None = None,
    time_limit: float | None = None,
    init_from: str | Path | None = None,
) -> Path | None:
    """Train (or resume) under `out`; returns the exported model directory `out/model`.

    `stop_after` steps or `time_limit` seconds end this run early with a checkpoint (returns None);
    running again resumes. `init_from`: warm-start a new state from an exported model directory
    (`pretrain_state.warm_start`). Raises ResumeRefused where `out` holds a run of other settings or audio.
    """
    out = Path(out)
    config = config.resolved()
    distributed.init(device)  # under torchrun: nccl on CUDA, else gloo
    rank, world = distributed.rank_and_world()
    with run_lock(out) if rank == 0 else nullcontext():  # ranks of one run share the folder
        if rank == 0:
            note_legacy(out, LEGACY)
        wavs = [u.load() for u in corpus]
        data = audio_identity(wavs)
        check_resume(out, config, data, init_from)
        km, labels = _labels(out, wavs, config, rank, None if init_from is None else init_codebook(init_from))
        torch.manual_seed(config.seed)
        model = MaskedPredictionModel(config, km.num_classes).to(device)
        state = load_state(out, CHECKPOINT, device)
        start, log = (0, []) if state is not None or init_from is None else warm_start(model, init_from, out, config)
        optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
        for group in optim.param_groups:  # lets the schedule begin at `start` (a warm start)
            group["initial_lr"] = group["lr"]
        sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(config), last_epoch=start - 1)
        if state is not None:
            start, log = restore_checkpoint(state, model, optim, sched)

        def checkpoint(step: int, seconds: float) -> None:
            save_checkpoint(out, model, optim, sched, step, log, config, data, seconds)

        done = _train(model, optim, sched, config, wavs, labels, start, log, device, checkpoint, stop_after, time_limit)
        if done and rank == 0:
            export(model, km, config, out / "model", log)
    if world > 1:
        dist.barrier()
    return out / "model" if done else None


def _labels(out: Path, wavs, config: PretrainConfig, rank: int, codebook: KMeansTargets | None):
    """The run's codebook and frame labels: stored in `out`, else those of `codebook` (a warm start's), else
    fitted; rank 0 stores new ones."""
    label_file = out / "labels.npz"
    if label_file.is_file():
        km = KMeansTargets.load(out / "kmeans.safetensors")
        check_stored_labels(km, config, out)
        if codebook is not None and not same_codebook(km, codebook):
            raise ResumeRefused(f"{out} holds another codebook than the model it starts from: use another --out")
        stored = np.load(label_file)
        labels = [stored[f"u{i}"] for i in range(len(stored.files))]
        check_labels_fit(labels, [max(0, num_frames(len(w))) for w in wavs], out)
        return km, labels
    if codebook is not None:
        check_stored_labels(codebook, config, out)
        km, labels = codebook, label_audio(codebook, wavs)
    else:
        km, labels = fit_labels(wavs, config)
    if rank == 0:
        km.save(out / "kmeans.safetensors")
        with atomic_path(label_file, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{f"u{i}": lab for i, lab in enumerate(labels)})
    return km, labels


def _train(
    model, optim, sched, config: PretrainConfig, wavs, labels, start, log, device, checkpoint, stop_after, time_limit
):
    """Steps `start`..`config.steps` (appending to `log`); `checkpoint(step, seconds)` on rank 0 every
    `checkpoint_every` steps, at the end and when stopped early. True when it reached `config.steps`."""
    rank, world = distributed.rank_and_world()
    trainer = model
    if world > 1:
        trainer = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    others = wavs[: min(len(wavs), 64)]
    model.train()
    began = time.time()
    with progress(disable=rank != 0) as bar:
        task = bar.add_task("pretraining", total=config.steps, completed=start)
        for step in range(start, config.steps):
            batch, lengths, labels_t, mask = _batch(step, rank, wavs, labels, config, others)
            torch.manual_seed(hash((config.seed, step, rank)) % 2**31)  # dropout and layerdrop
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                loss, acc = trainer(
                    batch.to(device),
                    lengths.to(device),
                    labels_t.to(device),
                    mask.to(device),
                    config.pred_nomask_weight,
                )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optim.step()
            sched.step()
            log.append({"step": step + 1, "loss": round(loss.item(), 4), "masked_acc": round(acc.item(), 4)})
            bar.update(task, advance=1, description=f"pretraining loss {loss.item():.3f} acc {acc.item():.2f}")
            done = step + 1
            interrupted = (stop_after is not None and done - start >= stop_after) or (
                time_limit is not None and time.time() - began > time_limit
            )
            if world > 1:  # every rank must stop at the same step
                flag = torch.tensor(float(interrupted), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                interrupted = bool(flag.item())
            if rank == 0 and (done % config.checkpoint_every == 0 or done == config.steps or interrupted):
                checkpoint(done, time.time() - began)
            if interrupted:
                return False
    return True
