"""DAISY's label-free exits beside supervised early-exit ASR (`daisy asr-exits`): CER against compute.

Systems, all on the same backbone shape and the same multi-condition training audio (a third clean, the rest
mixed with white or babble noise at an SNR drawn from the test SNRs' range, as `asr_per_snr` mixes it):
- `daisy`: the shipped model's own exit heads (trained without labels, not retrained here), exits by their
  entropy; a character CTC probe (MiniSUPERB's ASR probe on DAISY's dynamic weighted sum) per threshold,
  trained on the features cut at the exits that threshold gives.
- `hubert-ee`, `wright-scratch`, `wright-finetune`: `daisy.training.ctc_exits` recipes; each exits by its CTC
  branches' posterior entropy (`entropy`) or mean max posterior (`posterior`), and transcribes with the
  branch it exits at (greedy CTC).
Thresholds: for each system and selection, quantiles (evenly spaced from 0.1 to 0.9) of its scores on clean
held-out (dev) audio at the layers it can exit at, the same thresholds for every test condition, so noisy
audio shows where each rule sends it. Every policy reads from layer 1 (DAISY included). Sweeps apply the
policies to traces of every layer's scores (`Policy.exit_layers`), which give the live path's exits.
Compute share counts the backbone (conv front-end + layers run, `daisy.compute.compute_share`), not the
exit heads or branches of any system.
Resuming: each system's points and cost land in `out/parts/<method>.json` as soon as they are computed, with a
fingerprint of the settings and inputs that made them; a rerun reuses a part whose fingerprint matches, so a
killed run loses at most the system it was on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from daisy import policies
from daisy.analysis.asr_per_snr import QualityConfig, training_audio
from daisy.analysis.noise_sweep import CLEAN, SweepConfig, check_audible, conditions, mixed
from daisy.compute import compute_share, exit_branch_share
from daisy.data.batching import batches
from daisy.downstream import metrics
from daisy.downstream import tasks as registry
from daisy.downstream.minisuperb import SIZES, MiniSuperbConfig, evaluate, extract, train_probe
from daisy.downstream.probes import CharVocab, ctc_greedy_decode
from daisy.downstream.tasks import TaskData
from daisy.io import atomic_path, run_lock, save_figure, write_json
from daisy.model import EarlyExitHubert
from daisy.progress import progress
from daisy.run_state import audio_identity, fingerprint, plain
from daisy.supervised_exits import SupervisedExitHubert
from daisy.training.ctc_exits import RECIPES, CTCTrainConfig, encode_texts, train_recipe
from daisy.upstream import HubertBackbone

METHODS = ("daisy", *RECIPES)
# selection -> (the score it reads, the policy over it)
SELECTIONS = {"entropy": ("entropy", policies.Entropy), "posterior": ("confidence", policies.Confidence)}
SUPERVISED_SELECTIONS = tuple(SELECTIONS)
DAISY_SELECTIONS = ("entropy",)
console = Console()


@dataclass
class AsrExitsConfig:
    train: CTCTrainConfig = field(default_factory=CTCTrainConfig)
    probe_size: str = "cpu"  # DAISY's probe (downstream.minisuperb.SIZES; steps: the ASR task's)
    thresholds: int = 8  # operating points per system and selection
    noises: tuple[str, ...] = ("white", "babble")
    snrs: tuple[float, ...] = (10.0, 0.0)
    methods: tuple[str, ...] = METHODS
    seed: int = 0

    def __post_init__(self):
        self.noises, self.snrs, self.methods = tuple(self.noises), tuple(self.snrs), tuple(self.methods)
        if self.probe_size not in SIZES:
            raise ValueError(f"probe_size must be one of {', '.join(SIZES)}, got {self.probe_size!r}")
        if not isinstance(self.thresholds, int) or self.thresholds < 3:
            raise ValueError(f"thresholds must be a whole number >= 3 (a curve), got {self.thresholds!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be among {', '.join(METHODS)}, got {', '.join(unknown) or 'none'}")
        bad = [k for k in self.noises if k not in ("white", "pink", "babble")]
        if bad:
            raise ValueError(f"noises must be among white, pink, babble, got {', '.join(bad)}")
        if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in self.snrs):
            raise ValueError(f"snrs must be finite numbers of dB, got {self.snrs}")

    @classmethod
    def quick(cls) -> AsrExitsConfig:
        """Sizes for tests: a few training steps per system (untrained models: finite, not meaningful, CERs)."""
        return cls(train=CTCTrainConfig(steps=8, branch_steps=4, batch_size=4), probe_size="quick", thresholds=3)

    @property
    def sweep(self) -> SweepConfig:
        return SweepConfig(noises=self.noises, snrs=self.snrs, seed=self.seed)


def threshold_grid(scores: torch.Tensor, readable: list[int], count: int) -> list[float]:
    """`count` quantiles (0.1..0.9) of the finite `scores` (N, L) at 1-based layers `readable`, without repeats."""
    values = scores[:, [layer - 1 for layer in readable]].flatten()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        raise ValueError("no finite exit scores on the held-out audio to set thresholds from")
    grid = torch.quantile(values.double(), torch.linspace(0.1, 0.9, count, dtype=torch.float64))
    return sorted({round(float(t), 6) for t in grid})


def _policy(selection: str, threshold: float) -> policies.Policy:
    score, cls = SELECTIONS[selection]
    if score == "confidence":
        threshold = min(1.0, max(0.0, threshold))
    return cls(threshold=threshold)


def _point(method, selection, noise, snr, threshold, exits, cer, config) -> dict:
    depth = exits.float().mean().item()
    return {
        "method": method,
        "selection": selection,
        "noise": noise,
        "snr": "clean" if snr is None else snr,
        "threshold": threshold,
        "mean_exit": depth,
        "compute_share": compute_share(config, depth),
        "cer": cer,
    }


# -- supervised systems -----------------------------------------------------------------------------------------------
def trace_hypotheses(
    model: SupervisedExitHubert, wavs: list[np.ndarray], vocab: CharVocab, batch_size: int = 8
) -> tuple[dict[str, torch.Tensor], dict[int, list[str]]]:
    """Every layer's scores (name -> (N, L)) and every branch's greedy transcript of each utterance."""
    n = len(wavs)
    scores: dict[str, torch.Tensor] = {}
    hyps = {layer: [""] * n for layer in model.branch_layers}
    for idx, padded, lengths in batches(wavs, batch_size, model.backbone.min_samples):
        batch_scores, logits, frames = model.trace_logits(padded, lengths)
        for name, value in batch_scores.items():
            scores.setdefault(name, torch.full((n, model.num_layers), float("nan")))[idx] = value.float()
        for layer, layer_logits in logits.items():
            for i, ids in zip(idx, ctc_greedy_decode(layer_logits, frames)):
                hyps[layer][i] = vocab.decode(ids)
    return scores, hyps


def supervised_points(
    method: str,
    model: SupervisedExitHubert,
    dev_wavs: list[np.ndarray],
    tests: dict[tuple[str, float | None], list[np.ndarray]],
    refs: list[str],
    vocab: CharVocab,
    config: AsrExitsConfig,
) -> list[dict]:
    """CER, mean exit and compute share per selection, threshold and test condition."""
    dev_scores, _ = trace_hypotheses(model, dev_wavs, vocab)
    grids = {}
    for selection, (score, _) in SELECTIONS.items():
        model.policy = _policy(selection, 0.5)  # any threshold: which layers it reads
        readable = [layer for layer in range(1, model.num_layers) if model.policy.reads(layer)]
        grids[selection] = threshold_grid(dev_scores[score], readable, config.thresholds) if readable else [0.5]
    points = []
    for (noise, snr), wavs in tests.items():
        scores, hyps = trace_hypotheses(model, wavs, vocab)
        for selection, grid in grids.items():
            for threshold in grid:
                model.policy = _policy(selection, threshold)
                exits = model.policy.exit_layers(scores)
                said = [hyps[int(layer)][i] for i, layer in enumerate(exits)]
                cer = metrics.cer(refs, said)
                points.append(_point(method, selection, noise, snr, threshold, exits, cer, model.backbone.config))
    return points


# -- DAISY ------------------------------------------------------------------------------------------------------------
def daisy_points(
    early: EarlyExitHubert,
    train: tuple[list[np.ndarray], list[str]],
    dev_wavs: list[np.ndarray],
    tests: dict[tuple[str, float | None], list[np.ndarray]],
    test_texts: list[str],
    config: AsrExitsConfig,
) -> tuple[list[dict], dict]:
    """DAISY's entropy exits with one ASR probe per threshold; the points and the probes' cost."""
    train_wavs, train_texts = train
    probe_config = MiniSuperbConfig(tasks=("asr",), size=config.probe_size, seed=config.seed)
    dev = extract(early, dev_wavs)
    grid = threshold_grid(dev.scores["entropy"], list(range(1, early.num_layers)), config.thresholds)
    train_feats = extract(early, train_wavs)
    start, probes = time.perf_counter(), {}
    with progress() as bar:
        task = bar.add_task("DAISY: ASR probes", total=len(grid))
        for threshold in grid:
            exits = policies.Entropy(threshold=threshold).exit_layers(train_feats.scores)
            probes[threshold] = train_probe("asr", train_feats, TaskData([], texts=train_texts), exits, probe_config)
            bar.advance(task)
    seconds = time.perf_counter() - start
    points, data = [], TaskData([], texts=test_texts)
    for (noise, snr), wavs in tests.items():
        feats = extract(early, wavs)
        for threshold, probe in probes.items():
            exits = policies.Entropy(threshold=threshold).exit_layers(feats.scores)
            cer = evaluate(probe, "asr", feats, data, exits, 0)["cer"]
            points.append(_point("daisy", "entropy", noise, snr, threshold, exits, cer, early.backbone.config))
    steps = registry.get("asr").steps[config.probe_size] * len(grid)
    heads = early.config.provenance.get("head_training", {})
    cost = {
        "steps": steps,
        "seconds": seconds,
        "stages": {
            "probes": {"steps": steps, "seconds": seconds, "count": len(grid)},
            # the label-free heads ship with the model: their training is not rerun (nor timed) here
            "exit_heads": {"steps": heads.get("steps"), "seconds": None, "shipped": True},
        },
    }
    return points, cost


# -- parts: one system's points and cost, kept per method so a killed run resumes -----------------------------------
PARTS_FORMAT = 1  # raise when what a part holds, or how it is made, changes: older parts are then recomputed


def part_path(out: str | Path, method: str) -> Path:
    return Path(out) / "parts" / f"{method}.json"


def input_identity(
    model_dir: str | Path,
    train: tuple[list[np.ndarray], list[str]],
    dev_wavs: list[np.ndarray],
    test: tuple[list[np.ndarray], list[str]],
    babble_pool: list[np.ndarray] | None = None,
) -> dict:
    """What identifies a run's inputs: the model folder's files (not where it lies), each audio set and its texts."""
    (train_wavs, train_texts), (test_wavs, test_texts) = train, test
    return {
        "model": fingerprint(Path(model_dir)),
        "train": {**audio_identity(list(train_wavs)), "texts": fingerprint(list(train_texts))},
        "dev": audio_identity(list(dev_wavs)),
        "test": {**audio_identity(list(test_wavs)), "texts": fingerprint(list(test_texts))},
        "babble_pool": None if babble_pool is None else audio_identity(list(babble_pool)),  # None: the training audio
    }


def part_settings(method: str, config: AsrExitsConfig) -> dict:
    """The settings a method's part depends on (not `methods`: adding or dropping a system reuses the others)."""
    shared = {"thresholds": config.thresholds, "noises": config.noises, "snrs": config.snrs, "seed": config.seed}
    return {**shared, "probe_size": config.probe_size} if method == "daisy" else {**shared, "train": config.train}


def part_key(method: str, config: AsrExitsConfig, inputs: dict) -> str:
    return fingerprint(PARTS_FORMAT, method, part_settings(method, config), inputs)


def read_part(path: Path, method: str, key: str) -> dict | None:
    """The part at `path` where it was made for `method` under `key`; None where it is missing, unreadable or
    made under other settings or inputs (it is then recomputed and overwritten)."""
    try:
        part = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(part, dict) and part.get("format") == PARTS_FORMAT and part.get("method") == method
    ok = ok and part.get("key") == key and isinstance(part.get("points"), list) and isinstance(part.get("cost"), dict)
    return part if ok else None


def _say(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)  # soft wrap: one line per message in a log


# -- the whole comparison ---------------------------------------------------------------------------------------------
def run(
    model_dir: str | Path,
    train: tuple[list[np.ndarray], list[str]],
    dev_wavs: list[np.ndarray],
    test: tuple[list[np.ndarray], list[str]],
    out: str | Path,
    config: AsrExitsConfig | None = None,
    babble_pool: list[np.ndarray] | None = None,
) -> dict:
    """Train every supervised system, sweep every system's thresholds on the test conditions, write
    results.json, results.md and the plots under `out`; returns the summary written.

    Each system's points and cost are kept in `out/parts/<method>.json` with a fingerprint of the settings
    and inputs they were made under; a rerun reuses a part with the same fingerprint instead of retraining.
    `out` is locked for the run (`daisy.io.run_lock`): a second run into it is a ValueError."""
    config = config or AsrExitsConfig()
    (train_wavs, train_texts), (test_wavs, test_texts) = train, test
    if not train_wavs or not test_wavs or not dev_wavs:
        raise ValueError("asr-exits needs training, held-out (dev) and test utterances; one of them is empty")
    if not all(t.strip() for t in train_texts + test_texts):
        raise ValueError("every training and test utterance needs a transcript (empty text found)")
    check_audible(train_wavs, [f"training utterance {i}" for i in range(len(train_wavs))])
    check_audible(test_wavs, [f"test utterance {i}" for i in range(len(test_wavs))])
    pool = list(train_wavs if babble_pool is None else babble_pool)
    if "babble" in config.noises and len(pool) < 4:
        raise ValueError(f"babble mixes 4 other utterances; {len(pool)} training utterances given")
    vocab = CharVocab()
    labels = encode_texts(train_texts, vocab.encode)
    # DAISY first, then the supervised systems in the order asked
    order = [m for m in dict.fromkeys(("daisy", *config.methods)) if m in config.methods]
    with run_lock(out):
        early = EarlyExitHubert.from_pretrained(model_dir)
        inputs = input_identity(model_dir, train, dev_wavs, test, babble_pool)
        keys = {m: part_key(m, config, inputs) for m in order}
        parts = {m: read_part(part_path(out, m), m, keys[m]) for m in order}
        for method in (m for m in order if parts[m] is not None):
            _say(f"{method}: reused from {part_path(out, method)}")
        todo = [m for m in order if parts[m] is None]
        sweep = config.sweep
        if todo:  # the mixed audio only where something is computed
            train_audio = training_audio(train_wavs, sweep, QualityConfig(seed=config.seed), pool)
            tests = {(k, s): mixed(test_wavs, k, s, sweep, pool) for k, s in conditions(sweep)}
            refs = [CharVocab.normalise(t) for t in test_texts]
        pretrained = HubertBackbone.from_pretrained(model_dir) if set(todo) & set(RECIPES) else None
        for i, method in enumerate(todo, 1):
            _say(f"{method}: started ({i} of {len(todo)} to compute)")
            if method == "daisy":
                points, cost = daisy_points(early, (train_audio, train_texts), dev_wavs, tests, test_texts, config)
            else:
                model, cost = _supervised(method, pretrained, train_audio, labels, len(vocab), config.train)
                points = supervised_points(method, model, dev_wavs, tests, refs, vocab, config)
            part = {"format": PARTS_FORMAT, "method": method, "key": keys[method]}
            part |= {"settings": part_settings(method, config), "inputs": inputs, "points": points, "cost": cost}
            parts[method] = plain(part)  # as a reused part reads: results.json is the same either way
            write_json(part_path(out, method), parts[method])
            _say(f"{method}: done, kept in {part_path(out, method)}")
        summary = {
            "config": json_safe(asdict(config)),
            "model": str(model_dir),
            "num_layers": early.num_layers,
            "utterances": {"train": len(train_wavs), "dev": len(dev_wavs), "test": len(test_wavs)},
            "conditions": [{"noise": k, "snr": "clean" if s is None else s} for k, s in conditions(sweep)],
            "training": {m: parts[m]["cost"] for m in order},
            "exit_cost": {m: branch_cost(m, early, len(vocab)) for m in order},
            "points": [p for m in order for p in parts[m]["points"]],
        }
        write(summary, out)
    return summary


def branch_cost(method: str, model: EarlyExitHubert, vocab_size: int) -> float:
    """What reading one exit costs, as a share of one transformer layer's multiply-adds (compute shares count
    the backbone only): DAISY's linear head over its classes, a linear CTC branch (Wright et al.), or
    self-attention + a linear CTC branch (HuBERT-EE's intermediate branches)."""
    config = model.backbone.config
    if method == "daisy":
        classes, rank = model.config.num_classes, model.config.head_rank
        if rank is None:
            return exit_branch_share(config, classes)
        return exit_branch_share(config, rank) * (1 + classes / config.hidden_size)  # d x r, then r x C
    return exit_branch_share(config, vocab_size, attention=method == "hubert-ee")


def _supervised(recipe, pretrained, wavs, labels, vocab_size, train: CTCTrainConfig):
    """The model `recipe` trains (with a progress bar) and its cost, branch layers included."""
    total = train.steps + (train.branch_steps or train.steps) * (recipe == "hubert-ee")
    with progress() as bar:
        task = bar.add_task(f"training {recipe}", total=total)
        model, cost = train_recipe(recipe, pretrained, wavs, labels, vocab_size, train, lambda _: bar.advance(task))
    return model, {**cost.to_dict(), "branch_layers": list(model.branch_layers)}


def json_safe(obj):
    """Tuples as lists, floats as they are: what JSON keeps."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# -- report -----------------------------------------------------------------------------------------------------------
def _condition(point: dict) -> str:
    return CLEAN if point["snr"] == "clean" else f"{point['noise']} {point['snr']:g} dB"


def markdown(summary: dict) -> str:
    lines = [
        "| method | training steps | training wall-clock (s) | one exit read (share of a layer) |",
        "|---|---:|---:|---:|",
    ]
    exit_cost = summary.get("exit_cost", {})
    for method, cost in summary["training"].items():
        share = f"{exit_cost[method]:.3f}" if method in exit_cost else "n/a"
        lines.append(f"| {method} | {cost['steps']} | {cost['seconds']:.1f} | {share} |")
    lines += [
        "",
        "DAISY's steps are its ASR probes' (one per threshold); its exit heads ship with the model, trained "
        "without labels, and are not retrained here. Compute shares count the backbone only; each exit a "
        "policy reads costs the last column's share of a layer more.",
        "",
        "| method | selection | condition | threshold | mean exit | compute share | CER |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for p in summary["points"]:
        lines.append(
            f"| {p['method']} | {p['selection']} | {_condition(p)} | {p['threshold']:.4g} | {p['mean_exit']:.2f} "
            f"| {p['compute_share']:.2f} | {p['cer']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(points: list[dict], out: Path) -> Path:
    """CER against compute share, one panel per condition, one line per method and selection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(_condition(p) for p in points))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    lines = list(dict.fromkeys((p["method"], p["selection"]) for p in points))
    for ax, panel in zip(axes.flat, panels):
        for method, selection in lines:
            pts = sorted(
                (p["compute_share"], p["cer"])
                for p in points
                if (p["method"], p["selection"]) == (method, selection) and _condition(p) == panel
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=f"{method} ({selection})")
        ax.set_title(panel)
        ax.set_xlabel("compute share of the full model")
        ax.set_ylabel("CER")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, out / "cer_vs_compute.png")


def write(summary: dict, out: str | Path) -> None:
    """results.json, results.md and cer_vs_compute.png under `out`."""
    out = Path(out)
    write_json(out / "results.json", summary)
    with atomic_path(out / "results.md", suffix=".md") as tmp:
        tmp.write_text(markdown(summary))
    plot(summary["points"], out)
