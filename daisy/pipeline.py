"""Glue between data and models that several commands share: preparing, tracing, calibrating, exiting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from daisy import policies
from daisy.audio import AudioError, load
from daisy.model import EarlyExitHubert, check_task_name, load_teacher
from daisy.targets import KMeansTargets, TeacherHead, layer_states, source_backbone
from daisy.upstream import HubertBackbone


def batches(
    wavs: list[np.ndarray], batch_size: int = 8, min_samples: int = 0
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(indices, padded (B, T), lengths) over `wavs`, grouped by length so padding stays small.

    With `min_samples` (the model's `backbone.min_samples`), arrays too short for one frame are named by
    their index in `wavs` before any batch is made."""
    short = [i for i, w in enumerate(wavs) if len(w) < min_samples]
    if short:
        named = ", ".join(f"wavs[{i}] ({len(wavs[i])} samples)" for i in short[:10])
        raise ValueError(f"too short for one frame ({min_samples} samples at 16 kHz): {named}")
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lengths = torch.tensor([len(wavs[i]) for i in idx])
        padded = torch.zeros(len(idx), int(lengths.max()))
        for row, i in enumerate(idx):
            padded[row, : len(wavs[i])] = torch.from_numpy(np.asarray(wavs[i], dtype=np.float32))
        yield idx, padded, lengths


@torch.no_grad()
def trace_scores(model: EarlyExitHubert, wavs: list[np.ndarray], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Every head's scores for every utterance: name -> (N, L), in the order of `wavs`."""
    out: dict[str, torch.Tensor] = {}
    for idx, padded, lengths in batches(wavs, batch_size):
        trace = model.trace(padded, lengths, keep_states=False)  # scores only: no per-layer copies of states
        for name, value in trace.scores.items():
            out.setdefault(name, torch.zeros(len(wavs), model.num_layers))[idx] = value
    return out


# Tasks that get an operating point of their own when a model is made (`daisy ship`, `daisy demo`), as
# shares of the layers, as DAISY's paper gives each task its threshold: clean ASR on the shipped model
# comes within 2 % of the full model only at about 0.95 L (docs/results.md, "Clean ASR's operating point")
TASK_DEPTH_FRACTIONS = {"asr": 0.95}
# Calibrations run no head below the layer under which at most this share of the held-out audio would exit:
# every utterance pays for every head read. 0.1 keeps the heads within 3 % of the shipped model at batch 1
# (its policy reads heads 3-5; 0.05 read 2-5, 3.5 %) with exits still rising with noise and SID and SE
# unmoved beyond probe noise (docs/results.md, "Heads the policy never needs")
RARE_EXITS = 0.1


def calibrate_model(
    model: EarlyExitHubert,
    wavs: list[np.ndarray],
    depth: float,
    per_layer: bool = False,
    min_layer: int = 1,
    task: str | None = None,
    entropy: torch.Tensor | None = None,
    rare_exits: float = RARE_EXITS,
):
    """Entropy thresholds that reach mean exit `depth` on `wavs`, exiting no earlier than `min_layer` (the
    live model then runs no head below it), raised past layers where at most `rare_exits` of `wavs` would
    exit: `model.policy`, or with `task` that task's saved policy (the model's own policy left as it is).
    `entropy`: the model's trace of `wavs` when already made. Returns the policy."""
    if task is not None:
        check_task_name(task)  # before the trace, which takes a while
    if entropy is None:
        entropy = trace_scores(model, wavs)["entropy"]
    policy = policies.calibrate_budget(entropy, depth, per_layer=per_layer, min_layer=min_layer, rare_exits=rare_exits)
    record = {
        "utterances": len(wavs),
        "target_depth": round(depth, 6),
        "reached_depth": round(policy.exit_layers({"entropy": entropy}).float().mean().item(), 4),
        "per_layer": per_layer,
        "min_layer": policy.min_layer,
        "requested_min_layer": min_layer,  # what a recalibration asks again (min_layer is after the rare rule)
        "rare_exits": rare_exits,
    }
    if task is None:
        model.policy = policy
        model.config.provenance["calibration"] = record
    else:
        model.set_task_policy(task, policy)
        model.config.provenance.setdefault("task_calibration", {})[task] = record
    return policy


def calibrate_operating_points(
    model: EarlyExitHubert, wavs: list[np.ndarray], fraction: float, task_fractions: dict | None = None
) -> None:
    """The model's default policy at `fraction` of its layers on average, and each task's own policy at its
    share (`task_fractions`, default TASK_DEPTH_FRACTIONS), all calibrated on the held-out `wavs`."""
    entropy = trace_scores(model, wavs)["entropy"]
    calibrate_model(model, wavs, fraction * model.num_layers, entropy=entropy)
    own = TASK_DEPTH_FRACTIONS if task_fractions is None else task_fractions
    for task, share in own.items():
        calibrate_model(model, wavs, share * model.num_layers, task=task, entropy=entropy)


def recalibrate_tasks(model: EarlyExitHubert, wavs: list[np.ndarray], entropy: torch.Tensor | None = None) -> list[str]:
    """After the heads have changed, each task's calibrated budget again, as it was asked for (its target
    depth, shared or per-layer thresholds, and the min_layer and rare-exits rule its calibration recorded)
    on the held-out `wavs` (`entropy`: their trace by the new heads, when already made). Returns the tasks
    whose policies are not calibrated budgets: they stay as saved, with thresholds set for the heads before."""
    saved = {task: model.task_policy(task) for task in model.tasks}
    budgets = {task: policy for task, policy in saved.items() if isinstance(policy, policies.Budget)}
    if budgets and entropy is None:
        entropy = trace_scores(model, wavs)["entropy"]
    recorded = model.config.provenance.get("task_calibration", {})
    for task, old in budgets.items():
        per_layer = not isinstance(old.threshold, (int, float))
        # a policy saved without that record (set by hand, or by an older version) keeps its min_layer as is
        asked = recorded.get(task, {})
        min_layer, rare_exits = asked.get("requested_min_layer", old.min_layer), asked.get("rare_exits", 0.0)
        calibrate_model(model, wavs, old.target_depth, per_layer, min_layer, task, entropy, rare_exits=rare_exits)
    return [t for t in model.tasks if t not in budgets]


def prepare_model(
    path: str | Path,
    head_input: str = "ffn",
    classes: int = 100,
    wavs: list[np.ndarray] | None = None,
    head_rank: int | None = None,
) -> EarlyExitHubert:
    """An EarlyExitHubert with fresh heads on the backbone at `path`, with the best targets it allows:
    its own pretraining head (teacher) where it has one, else MFCC k-means fitted on `wavs`. A pretraining
    codebook goes along as is (MFCC, or a layer of its iteration-2 source model: `KMeansTargets.targets`)."""
    path = Path(path)
    if (path / "daisy.json").is_file():
        return EarlyExitHubert.from_pretrained(path)
    backbone = HubertBackbone.from_pretrained(path)
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


@torch.no_grad()
def exit_files(model: EarlyExitHubert, files: list[Path]) -> tuple[list[dict], list[str]]:
    """Each readable file's exit layer (run alone: batch 1), and one message per unreadable file."""
    results, errors = [], []
    for path in files:
        try:
            wav = load(path, min_samples=model.backbone.min_samples)
        except AudioError as e:
            errors.append(str(e))
            continue
        out = model(torch.from_numpy(wav)[None], output_hidden_states=False)
        results.append(
            {
                "path": str(path),
                "exit_layer": int(out.exit_layers[0]),
                "num_layers": model.num_layers,
                "seconds": len(wav) / 16000,
                "frames": int(out.lengths[0]),
            }
        )
    return results, errors
