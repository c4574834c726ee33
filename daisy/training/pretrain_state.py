"""The run folder of `daisy pretrain`: its resumable state, warm starts, and the model directories it exports.

A run folder holds `config` fields in `log.json` (with the per-step log), the k-means codebook
(`kmeans.safetensors`) and frame labels (`labels.npz`), and its latest state as `checkpoint.json` (step,
config, scheduler, optimiser hyper-parameters, log, identity of the audio) + `checkpoint-<token>.safetensors`
(model and optimiser tensors), written by `daisy.run_state` (atomic, no pickles). A resume must keep the
labels, the model (`MODEL_FIELDS`) and the audio; anything else (more steps) may change.

A warm start (`init_from`) loads an exported model directory (a `daisy pretrain` export, or the shipped
model: HF HubertModel `model.safetensors` + `teacher_head.safetensors` + `kmeans.safetensors`) with a
fresh optimiser; the step count continues from the run folder's `log.json` (0 without one), so the
schedule and the per-step batches go on where that run stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from daisy.io import atomic_dir, write_json
from daisy.run_state import (
    ResumeRefused,
    load_state,
    plain,
    read_state_meta,
    restore_training,
    save_training,
    state_file,
    unprefixed,
)
from daisy.targets import KMeansTargets
from daisy.upstream.checkpoints import save_hubert

if TYPE_CHECKING:
    from daisy.training.pretrain import MaskedPredictionModel, PretrainConfig

CHECKPOINT = "checkpoint"  # the state's name: checkpoint.json + checkpoint-<token>.safetensors
LEGACY = "checkpoint.pt"  # the pickled format of earlier versions: never loaded
# Fields that shape the model or its input: a resumed run that changed them would train another model.
MODEL_FIELDS = ("preset", "overrides", "normalize")


def check_resume(
    out: str | Path, config: PretrainConfig, data: dict | None = None, init_from: str | Path | None = None
) -> None:
    """Where `out` already holds labels or a state, refuse a (resolved) config that asks for other labels,
    or for another model or input (`MODEL_FIELDS`), other audio (`data`, `audio_identity`), or a warm start
    over a state. Raises ResumeRefused."""
    out = Path(out)
    if (out / "labels.npz").is_file():
        check_stored_labels(KMeansTargets.load(out / "kmeans.safetensors"), config, out)
    meta = read_state_meta(out, CHECKPOINT)
    if meta is None:
        return
    path = state_file(out, CHECKPOINT)
    if init_from is not None:
        raise ResumeRefused(f"{path} already holds step {meta['step']} of this run: resume it without --init-from")
    _refuse_other_model(path, meta["config"], config)
    if data is not None and meta["data"]["digest"] != data["digest"]:
        there, now = meta["data"], data
        raise ResumeRefused(
            f"{path} was trained on other audio ({there['utterances']} utterances, {there['samples']} samples "
            f"there; {now['utterances']}, {now['samples']} now): use another --out"
        )


def _refuse_other_model(path: Path, stored: dict, config: PretrainConfig) -> None:
    asked, defaults = asdict(config), asdict(type(config)())
    stored = {f: stored.get(f, defaults[f]) for f in MODEL_FIELDS}  # a log.json of an older version may lack one
    differ = [f for f in MODEL_FIELDS if plain(stored[f]) != plain(asked[f])]
    if differ:
        raise ResumeRefused(
            f"{path} was trained with other {', '.join(differ)} ("
            + "; ".join(f"{f}: stored {stored[f]!r}, asked {asked[f]!r}" for f in differ)
            + "): use another --out"
        )


def check_stored_labels(km: KMeansTargets, config: PretrainConfig, where: Path) -> None:
    """A resumed run (or a warm start) must keep its labels: refuse a config that asks for other ones."""
    source = None if config.label_model is None else str(Path(config.label_model).resolve())
    if km.features != config.label_features or km.source != source or km.num_classes != config.num_classes:
        raise ResumeRefused(
            f"{where} holds labels of {km.describe()} (K={km.num_classes}), but the config asks for "
            f"{config.label_features}{'' if source is None else ' of ' + source} (K={config.num_classes}): "
            "use another --out"
        )


def check_labels_fit(labels: list[np.ndarray], frames: list[int], out: Path) -> None:
    """Stored labels belong to this audio: one per utterance, one per frame."""
    if len(labels) != len(frames) or any(len(lab) != n for lab, n in zip(labels, frames)):
        raise ResumeRefused(
            f"{out / 'labels.npz'} holds the labels of other audio ({len(labels)} utterances there, "
            f"{len(frames)} now, or other lengths): use another --out"
        )


def save_checkpoint(out: Path, model, optim, sched, step: int, log: list, config, data: dict, seconds: float):
    """The run's state after `step` (atomic), and `log.json` for people."""
    save_training(
        out, CHECKPOINT, model, optim, sched, {"step": step, "config": asdict(config), "data": data, "log": log}
    )
    write_json(out / "log.json", {"config": asdict(config), "seconds_this_run": seconds, "log": log})


def restore_checkpoint(state: tuple[dict, dict], model, optim, sched) -> tuple[int, list]:
    """Load a state from `load_state` into model, optimiser and scheduler; returns (step, log)."""
    meta = restore_training(state, model, optim, sched)
    return meta["step"], meta["log"]


def init_codebook(source: str | Path) -> KMeansTargets:
    """The codebook an exported model was trained on (a warm start keeps its labels)."""
    path = Path(source) / "kmeans.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no kmeans.safetensors (--init-from takes a `daisy pretrain` export)")
    return KMeansTargets.load(path)


def same_codebook(a: KMeansTargets, b: KMeansTargets) -> bool:
    return (a.features, a.source) == (b.features, b.source) and torch.equal(a.centers, b.centers)


def load_exported(model: MaskedPredictionModel, source: str | Path, temperature: float) -> None:
    """Load an exported model directory's HuBERT and teacher head into `model` (in float32)."""
    from daisy.model import load_teacher

    source = Path(source)
    for name in ("model.safetensors", "teacher_head.safetensors"):
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source}: no {name} (--init-from takes a `daisy pretrain` export)")
    teacher = load_teacher(source / "teacher_head.safetensors")
    if teacher.temperature != temperature:
        raise ValueError(f"{source}: its teacher head has temperature {teacher.temperature}, the config {temperature}")
    try:
        model.hubert.load_state_dict({k: v.float() for k, v in load_file(str(source / "model.safetensors")).items()})
        model.head.load_state_dict(teacher.state_dict())
    except RuntimeError as err:  # torch lists every mismatch; the first says enough
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[min(1, len(lines) - 1)]
        raise ValueError(
            f"{source} does not fit the config's model (preset, overrides, num_classes): {detail}"
        ) from None


def _steps_trained(source: Path) -> int | None:
    """How many steps the exported model at `source` was trained for, where it says so."""
    for name, keys in (("pretrain.json", ("summary", "steps")), ("card.json", ("pretraining", "steps"))):
        if (source / name).is_file():
            value = json.loads((source / name).read_text())
            for key in keys:
                value = value.get(key, {}) if isinstance(value, dict) else {}
            if isinstance(value, int):
                return value
    return None


def warm_start(model: MaskedPredictionModel, source: str | Path, out: Path, config: PretrainConfig) -> tuple[int, list]:
    """Start `model` from the export at `source`; returns (step, log): those of `out/log.json` where the run
    folder has one (it must be the run `source` came from: same model fields and step count), else (0, [])."""
    source = Path(source)
    load_exported(model, source, config.temperature)
    log_file = out / "log.json"
    if not log_file.is_file():
        return 0, []
    stored = json.loads(log_file.read_text())
    _refuse_other_model(log_file, stored["config"], config)
    log = stored["log"]
    start = log[-1]["step"] if log else 0
    trained = _steps_trained(source)
    if trained is not None and trained != start:
        raise ResumeRefused(f"{source} was trained for {trained} steps, {log_file} records {start}: use another --out")
    if start >= config.steps:
        raise ValueError(f"{log_file} is at step {start}: give --steps above it to train further")
    return start, log


def export(
    model: MaskedPredictionModel,
    km: KMeansTargets,
    config: PretrainConfig,
    path: Path,
    log: list,
    dtype: torch.dtype = torch.float32,
) -> None:
    """A model directory: transformers HubertModel + teacher head + k-means codebook + provenance."""
    with atomic_dir(path) as tmp:
        save_hubert(model.hubert, tmp, {k: v.to(dtype) for k, v in model.hubert.state_dict().items()})
        head = {k: v.to(dtype).contiguous() for k, v in model.head.state_dict().items()}
        save_file(head, str(tmp / "teacher_head.safetensors"), metadata={"temperature": str(config.temperature)})
        km.save(tmp / "kmeans.safetensors")
        tail = log[-200:]
        summary = {
            "steps": len(log),
            "final_loss": float(np.mean([r["loss"] for r in tail])) if tail else math.nan,
            "final_masked_acc": float(np.mean([r["masked_acc"] for r in tail])) if tail else math.nan,
        }
        # what kmeans.safetensors clusters: code that labels audio with it must compute the same features
        labels = {"features": km.features, "source": km.source, "num_classes": km.num_classes}
        (tmp / "pretrain.json").write_text(
            json.dumps({"config": asdict(config), "labels": labels, "summary": summary}, indent=2)
        )


def export_checkpoint(run: str | Path, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Export the latest state of a pretraining run folder as a model directory (e.g. to evaluate a run in
    progress, or to ship it in fp16)."""
    from daisy.training.pretrain import MaskedPredictionModel, PretrainConfig

    run, path = Path(run), Path(path)
    state = load_state(run, CHECKPOINT)
    if state is None:
        raise FileNotFoundError(
            f"{run}: no {CHECKPOINT}.json, the state `daisy pretrain --out {run}` writes: train it first "
            f"(to train a shipped model further: --init-from its folder)"
        )
    tensors, meta = state
    config = PretrainConfig(**meta["config"])
    km = KMeansTargets.load(run / "kmeans.safetensors")
    model = MaskedPredictionModel(config, km.num_classes)
    model.load_state_dict(unprefixed("model.", tensors))
    export(model.eval(), km, config, path, meta["log"], dtype=dtype)
    return path
