"""Training DAISY's exit heads with the backbone frozen (`daisy train-heads`).

Each step runs the frozen model on a batch, takes its targets (the teacher's own answer per frame,
or k-means ids), and trains all heads at once by the sum over layers of the frame-averaged
cross-entropy over all valid frames (no masking), as DAISY does. Optional noise augmentation mixes
noise into the input; targets then come from the noisy input itself (DAISY: the model's answer on
what it hears) or from the clean audio (`targets_from="clean"`).

Batches are drawn from RNGs seeded by (seed, step, rank), so resuming from a checkpoint continues
exactly, and DataLoader workers (`workers`) can cut them ahead of the model without changing them. The audio
is a `daisy.data.streaming.Corpus`: a list of arrays, or `AudioFiles`, which decodes only the files a batch
crops from (and the babble pool's, when babble is drawn); a run on files holds their list and a batch, and
reads every file once more to check the audio's identity.

The checkpoint is `heads_checkpoint.json` + its safetensors (`daisy.run_state`: atomic, no pickles); it
resumes only with the settings, model and audio it was trained with. DDP through `torchrun` (nccl where the
model is on CUDA, each rank on its own GPU; gloo on CPU).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from daisy import distributed
from daisy.data import streaming
from daisy.data.crops import training_crops
from daisy.data.streaming import Corpus
from daisy.io import run_lock, write_json
from daisy.model import EarlyExitHubert, load_teacher
from daisy.precision import exact
from daisy.progress import progress
from daisy.run_state import (
    ResumeRefused,
    fingerprint,
    load_state,
    note_legacy,
    plain,
    read_state_meta,
    restore_training,
    save_training,
    state_file,
)
from daisy.targets import KMeansTargets, TeacherHead
from daisy.training.kmeans import fit_mfcc_kmeans
from daisy.upstream import load_backbone


@dataclass
class HeadTrainConfig:
    steps: int = 1500
    batch_size: int = 8
    crop_seconds: float = 3.0
    lr: float = 2e-3
    weight_decay: float = 0.0
    noise_prob: float = 0.0
    snr_range: tuple[float, float] = (-5.0, 20.0)
    targets_from: str = "input"  # "input" (DAISY) or "clean"
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.targets_from not in ("input", "clean"):
            raise ValueError(f"targets_from must be 'input' or 'clean', got {self.targets_from!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob is a share of the inputs, in 0..1; got {self.noise_prob}")

    @classmethod
    def quick(cls) -> HeadTrainConfig:
        return cls(steps=60, checkpoint_every=30)


def _batch(step: int, rank: int, wavs: Corpus, config: HeadTrainConfig):
    """(input batch, clean batch, lengths) of random 320-aligned crops, some with noise mixed in."""
    rng = np.random.default_rng([config.seed, step, rank])
    crops = training_crops(rng, wavs, config, wavs[:64])
    return crops.inputs, crops.clean, crops.lengths


class _Batches(torch.utils.data.Dataset):
    """Step -> that step's batch (`_batch`): what DataLoader workers read and cut ahead of the model."""

    def __init__(self, wavs: Corpus, config: HeadTrainConfig, rank: int):
        self.wavs, self.config, self.rank = wavs, config, rank

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int):
        return _batch(step, self.rank, self.wavs, self.config)


@torch.no_grad()
def frozen_features(model: EarlyExitHubert, wavs, lengths) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Head inputs of every layer (L tensors (B, T, D)), the frame mask and the last state, backbone
    frozen."""
    x, mask = model.embed(wavs, lengths)
    bias = model.backbone.attention_bias(mask, x.dtype)
    feats = []
    for layer in range(1, model.num_layers + 1):
        x, ffn = model.backbone.layer(layer, x, mask, bias, return_ffn=True)
        feats.append(ffn if model.config.head_input == "ffn" else x)
    return feats, mask, x


class HeadObjective(nn.Module):
    """Sum over layers of the frame-averaged cross-entropy of each head (what DDP wraps)."""

    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, feats: list[torch.Tensor], valid: torch.Tensor, targets: torch.Tensor):
        with exact(valid.device):  # the heads train in float32, whatever precision the frozen features came in
            return self._losses([f.float() for f in feats], valid, targets)

    def _losses(self, feats: list[torch.Tensor], valid: torch.Tensor, targets: torch.Tensor):
        total, stats = 0.0, []
        target = targets[valid]
        for layer, f in enumerate(feats, 1):
            logits = self.heads.logits(layer, f[valid])
            loss = nn.functional.cross_entropy(logits, target)
            total = total + loss
            with torch.no_grad():
                logp = logits.log_softmax(-1)
                stats.append(
                    {
                        "layer": layer,
                        "loss": round(loss.item(), 4),
                        "acc": round((logits.argmax(-1) == target).float().mean().item(), 4),
                        "entropy": round((-(logp.exp() * logp).sum(-1)).mean().item(), 4),
                    }
                )
        return total, stats


CHECKPOINT, LEGACY = "heads_checkpoint", "heads_checkpoint.pt"  # the state's name; the old pickled file


def _settings(model: EarlyExitHubert, config: HeadTrainConfig) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint (its model and audio aside)."""
    heads = {k: getattr(model.config, k) for k in ("num_classes", "head_input", "head_rank", "targets")}
    return {"heads": heads, "training": {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}}


def model_identity(model: EarlyExitHubert) -> str:
    """A digest of what the heads learn from: the frozen backbone, the teacher head and the codebook."""
    km = model.kmeans
    return fingerprint(model.backbone, model.teacher, None if km is None else (km.centers, km.features, km.source))


def check_resume(out: str | Path, model: EarlyExitHubert, config: HeadTrainConfig, wavs: Corpus | None = None) -> None:
    """A checkpoint under `out` resumes only with the settings, model and audio (`wavs`, where given) it was
    trained with: raise ResumeRefused for others."""
    meta = read_state_meta(out, CHECKPOINT)
    if meta is not None:
        _refuse_other_settings(state_file(out, CHECKPOINT), meta, model, config, wavs)


def _refuse_other_settings(path: Path, meta: dict, model: EarlyExitHubert, config: HeadTrainConfig, wavs) -> None:
    saved, now = meta["settings"], plain(_settings(model, config))
    differ = [
        f"{k}: {saved[part].get(k)!r} there, {v!r} now"
        for part in ("heads", "training")
        for k, v in now[part].items()
        if saved[part].get(k) != v
    ]
    if meta["model"] != model_identity(model):
        differ.append("the model: other backbone, teacher or codebook weights")
    if wavs is not None and meta["data"]["digest"] != (data := streaming.identity(wavs))["digest"]:
        there = meta["data"]
        differ.append(
            f"audio: {there['utterances']} utterances, {there['samples']} samples there; "
            f"{data['utterances']}, {data['samples']} now"
        )
    if differ:
        raise ResumeRefused(
            f"{path} was trained with other settings ({'; '.join(differ)}); "
            "give another --out, or delete it to start over"
        )


def train_heads(
    model: EarlyExitHubert,
    wavs: Corpus,
    out: str | Path,
    config: HeadTrainConfig,
    stop_after: int | None = None,
    workers: int = 0,
) -> EarlyExitHubert:
    """Train `model.heads` in place on `wavs` (float32 16 kHz arrays: a list, or `AudioFiles` read as used);
    checkpoints and log under `out`. `workers` DataLoader processes cut the batches (0: this process); the
    heads come out the same with any number."""
    model.require_targets()  # before any work: the shortcut below calls the teacher head directly
    streaming.check_workers(workers)
    out = Path(out)
    distributed.init(next(model.parameters()).device)  # under torchrun: nccl on CUDA, else gloo
    rank, world = distributed.rank_and_world()
    with run_lock(out) if rank == 0 else nullcontext():  # ranks of one run share the folder
        if rank == 0:
            note_legacy(out, LEGACY)
        _train(model, wavs, out, config, stop_after, rank, world, workers)
    return model


def _train(
    model: EarlyExitHubert, wavs, out: Path, config: HeadTrainConfig, stop_after, rank: int, world: int, workers: int
):
    """train_heads' work, with `out` locked: resume where a checkpoint is, train, checkpoint on rank 0."""
    model.eval()  # the backbone stays frozen, dropout off; only the heads learn
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    heads = model.heads
    optim = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=config.steps)
    identity = {"settings": _settings(model, config), "model": model_identity(model), "data": streaming.identity(wavs)}
    start, log = 0, []
    state = load_state(out, CHECKPOINT)
    if state is not None:
        _refuse_other_settings(state_file(out, CHECKPOINT), state[1], model, config, wavs)
        meta = restore_training(state, heads, optim, sched)
        start, log = meta["step"], meta["log"]
    objective = HeadObjective(heads)
    trainer = nn.parallel.DistributedDataParallel(objective) if world > 1 else objective
    loader = torch.utils.data.DataLoader(
        _Batches(wavs, config, rank), batch_size=None, sampler=range(start, config.steps), num_workers=workers
    )
    with progress(disable=rank != 0) as bar:
        task = bar.add_task("training heads", total=config.steps, completed=start)
        for step, (noisy, clean, lengths) in zip(range(start, config.steps), loader):
            feats, mask, last = frozen_features(model, noisy, lengths)
            if config.targets_from == "input" and model.config.targets == "teacher":
                with torch.no_grad():  # the model's own answer on this very input: reuse its forward pass
                    targets = model.teacher(last)
            else:
                targets = model.teacher_targets(clean if config.targets_from == "clean" else noisy, lengths)
            loss, stats = trainer(feats, mask & (targets >= 0), targets)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            log.append({"step": step + 1, "loss": round(loss.item(), 4), "layers": stats})
            bar.update(task, advance=1, description=f"training heads loss {loss.item():.2f}")
            done = step + 1
            interrupted = stop_after is not None and done - start >= stop_after
            if rank == 0 and (done % config.checkpoint_every == 0 or done == config.steps or interrupted):
                save_training(out, CHECKPOINT, heads, optim, sched, {"step": done, **identity, "log": log})
                write_json(out / "heads_log.json", {"config": asdict(config), "log": log})
            if interrupted:
                break


def prepare_model(
    path: str | Path,
    head_input: str = "ffn",
    classes: int = 100,
    wavs: Corpus | None = None,
    head_rank: int | None = None,
) -> EarlyExitHubert:
    """An EarlyExitHubert with fresh heads on the backbone at `path`, with the best targets it allows:
    its own pretraining head (teacher) where it has one, else MFCC k-means fitted on `wavs`. A pretraining
    codebook goes along as is (MFCC, or a layer of its iteration-2 source model: `KMeansTargets.targets`)."""
    path = Path(path)
    if (path / "daisy.json").is_file():
        return EarlyExitHubert.from_pretrained(path)
    backbone = load_backbone(path)
    teacher = None
    if path.is_dir():
        teacher = load_teacher(path / "teacher_head.safetensors")
    else:
        from daisy.upstream.checkpoints import read_s3prl_checkpoint

        converted = read_s3prl_checkpoint(path)
        if converted.pretraining_head:
            teacher = TeacherHead.from_fairseq(converted.pretraining_head, converted.num_classes)
    provenance = {"base_model": str(path)}
    if teacher is not None:
        model = EarlyExitHubert.from_backbone(
            backbone,
            teacher.num_classes,
            teacher=teacher,
            head_input=head_input,
            head_rank=head_rank,
            targets="teacher",
            provenance=provenance,
        )
        if path.is_dir() and (path / "kmeans.safetensors").is_file():  # keep the pretraining codebook along
            model.kmeans = KMeansTargets.load(path / "kmeans.safetensors")
        return model
    if not wavs:
        raise ValueError(f"{path} has no pretraining head: k-means targets need audio to fit on")
    model = EarlyExitHubert.from_backbone(
        backbone, classes, head_input=head_input, head_rank=head_rank, targets="kmeans", provenance=provenance
    )
    model.kmeans = fit_mfcc_kmeans(wavs, classes)
    return model
