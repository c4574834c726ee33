"""MiniSUPERB-style evaluation of exited representations (`daisy minisuperb`).

As MiniSUPERB, features are extracted once per input set (a trace: every layer's states and every
head score for every utterance, states kept in fp16), then probes train on a weighted sum of layers.
The tasks are the registered ones (`daisy.downstream.tasks`); this runner knows none of them by name.
Upstream settings differ only in their exit layers, applied to the stored trace (the same exits as
the live model): the full model, DAISY's calibrated policy (per task: the task's own saved policy
where the model has one, as DAISY's paper gives each task its threshold), entropy budgets at other
depths, fixed truncation at DAISY's mean depth, and MFCC features as the baseline. Each (task, setting) result is
cached as JSON, so an interrupted run resumes. Where the model gives its own full-depth answer
(`calibration.can_answer`), the trace also scores every head against it, and each setting reports its exits'
agreement: the mean over test utterances of the share of frames where the exit layer's head gives that answer.

Score (MiniSUPERB style): per task, the primary metric normalised between the MFCC baseline (0) and
the full model (100); the average over tasks.

Under torchrun (several processes) the ranks share the feature extraction and rank 0 does the rest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from daisy import distributed, policies, run_state
from daisy.calibration import can_answer, exit_agreement
from daisy.compute import compute_share
from daisy.data.batching import length_groups, padded
from daisy.downstream import tasks as registry
from daisy.downstream.featurizer import MODES, WeightedSum
from daisy.downstream.tasks import SIZES, ProbeSize, Task, TaskData  # noqa: F401  (SIZES, ProbeSize: re-exported)
from daisy.features import mfcc
from daisy.io import atomic_path, save_figure, write_json
from daisy.model import EarlyExitHubert
from daisy.precision import autocast_name, exact
from daisy.progress import progress

# What a feature cache holds (every layer's states, every score the trace gives), in its fingerprint: raise it
# when that changes, and caches of the old kind are extracted again. A cache without a score the model now
# gives (`agreement`, where it answers) is extracted again under the same key: its states, and so the probe
# results made on them, stand.
FEATURES_FORMAT = 2


@dataclass
class MiniSuperbConfig:
    tasks: tuple[str, ...] = field(default_factory=registry.names)
    size: str = "cpu"
    featurizer: str = "dynamic"
    budgets: tuple[float, ...] = (0.4, 0.8)
    fixed: tuple[int, ...] = ()  # fixed truncation at these layers; () = DAISY's mean depth, rounded
    max_eval_signals: int = 60  # PESQ/STOI/SI-SDR on at most this many test utterances
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        # messages start with the field's name, which is also the CLI option's
        self.tasks = registry.check_names(self.tasks)
        self.budgets, self.fixed = tuple(self.budgets), tuple(self.fixed)
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.featurizer not in MODES:
            raise ValueError(f"featurizer must be one of {', '.join(MODES)}, got {self.featurizer!r}")
        if not all(0 < f <= 1 for f in self.budgets):
            raise ValueError(f"budgets are shares of the layers, in (0, 1]; got {self.budgets}")
        if not all(isinstance(k, int) and k >= 1 for k in self.fixed):
            raise ValueError(f"fixed layers are 1-based; got {self.fixed}")

    def check(self, num_layers: int) -> None:
        """Raise ValueError if a setting cannot run on a model of `num_layers` layers."""
        too_deep = [k for k in self.fixed if k > num_layers]
        if too_deep:
            raise ValueError(f"fixed layers {too_deep} beyond the model's {num_layers} layers")

    def probe_key(self) -> dict:
        """The fields a single (task, setting) result depends on: which tasks and settings run does not
        change a probe, so adding a task or a budget reuses the results already there."""
        fields = asdict(self)
        for name in ("tasks", "budgets", "fixed"):
            del fields[name]
        return json.loads(json.dumps(fields))


@dataclass
class Features:
    """A trace of one input set: states (L+1, T_i, D) fp16 per utterance, and every head score the trace
    gives, name -> (N, L) (entropy, confidence, ...; agreement and loss against the full model's answer where
    the model gives one), so that any policy's exits, and their agreement, can be read off it."""

    states: list[torch.Tensor]
    scores: dict[str, torch.Tensor]
    key: str = ""  # digest of the model and the audio these features come from

    @property
    def frames(self) -> list[int]:
        return [s.shape[1] for s in self.states]


def fingerprint(wavs: list[np.ndarray], model: torch.nn.Module | None = None) -> str:
    """A digest of the audio (and the model's weights), so cached features are reused only for the same."""
    return run_state.fingerprint(FEATURES_FORMAT, model, list(wavs))


@torch.no_grad()
def extract(model: EarlyExitHubert, wavs: list[np.ndarray], cache: Path | None = None) -> Features | None:
    """Every layer's states and every head score of `wavs`; cached as the run state `cache` (its folder and
    name: safetensors + JSON, daisy.run_state) for this model and audio.

    Under torchrun with several processes every rank traces its share of the length-sorted batches (the same
    batches as one process makes, so the same features) and rank 0 gathers them, reads and writes the cache and
    returns the features; the other ranks return None."""
    distributed.init(next(model.parameters()).device)
    rank, world = distributed.rank_and_world()
    answers = can_answer(model)  # then every head is scored against the full model's answer too
    key, features = "", None
    if rank == 0:
        key = _cache_key(model, wavs) if cache is not None else ""  # hashing only pays where a cache is read
        features = _cached(cache, key, len(wavs), answers)
    if distributed.from_first(features is not None):
        return features
    groups = distributed.shard(length_groups([len(w) for w in wavs], 8), rank, world)
    share = "" if world == 1 else f" (rank 0's share of {world})"
    label = f"extracting {cache.stem if cache else 'features'}{share}"
    parts = distributed.gather_to_first(_trace(model, wavs, groups, answers, label, quiet=rank != 0))
    if rank != 0:
        return None
    features = _merged(parts, len(wavs), model.num_layers, key)
    if cache is not None:
        tensors = {f"state.{i}": state for i, state in enumerate(features.states)}
        tensors |= run_state.prefixed("score.", features.scores)
        run_state.save_state(cache.parent, cache.name, tensors, {"key": key})
    return features


def _cache_key(model: EarlyExitHubert, wavs: list[np.ndarray]) -> str:
    key = fingerprint(wavs, model)
    if (precision := autocast_name(next(model.parameters()).device)) != "fp32":
        key += f"-{precision}"  # features extracted under bf16 autocast differ: a cache of its own
    return key


def _cached(cache: Path | None, key: str, count: int, answers: bool) -> Features | None:
    """The features stored at `cache` under `key`; None where there are none, or none with every score."""
    if cache is None or not (meta := run_state.read_state_meta(cache.parent, cache.name)) or meta["key"] != key:
        return None
    tensors, _ = run_state.load_state(cache.parent, cache.name)
    scores = run_state.unprefixed("score.", tensors)
    if "agreement" not in scores and answers:  # a cache from before agreement was stored is made again
        return None
    return Features([tensors[f"state.{i}"] for i in range(count)], scores, key)


def _trace(model: EarlyExitHubert, wavs, groups: list[list[int]], answers: bool, label: str, quiet: bool):
    """(indices, their states (L+1, T_i, D) fp16 on the CPU, scores name -> (len(indices), L)) of the batches
    `groups` (lists of indices into `wavs`)."""
    order, states, scores = [], [], {}
    with progress(disable=quiet) as bar:
        task = bar.add_task(label, total=sum(len(idx) for idx in groups))
        for idx in groups:
            wav, lengths = padded(wavs, idx)
            trace = model.trace(wav, lengths, model.full_answer(wav, lengths) if answers else None)
            stacked = torch.stack(trace.hidden_states)  # (L+1, B, T, D)
            for row in range(len(idx)):
                states.append(stacked[:, row, : int(trace.lengths[row])].to("cpu", torch.float16, copy=True))
            for name, value in trace.scores.items():
                scores.setdefault(name, []).append(value.float().cpu())
            order += idx
            bar.advance(task, len(idx))
    return order, states, {name: torch.cat(rows) for name, rows in scores.items()}


def _merged(parts: list, count: int, num_layers: int, key: str) -> Features:
    """The features of `count` utterances from the ranks' `_trace` parts, in the order of the audio."""
    states: list = [None] * count
    scores: dict[str, torch.Tensor] = {}
    for order, part_states, part_scores in parts:
        for i, state in zip(order, part_states):
            states[i] = state
        for name, rows in part_scores.items():
            scores.setdefault(name, torch.zeros(count, num_layers))[order] = rows
    return Features(states, scores, key)


def mfcc_features(wavs: list[np.ndarray]) -> Features:
    """The baseline: MFCC + deltas as a single 'layer' (1, T, 39), frame-aligned with HuBERT's."""
    states = [mfcc(torch.from_numpy(w))[None].half() for w in wavs]
    return Features(states, {}, "mfcc-" + fingerprint(wavs))


def mean_agreement(feats: Features, exits: torch.Tensor | None) -> float | None:
    """The mean over utterances of the share of frames where the exit layer's head gives the full model's answer
    (`calibration.exit_agreement`: an exit at the last layer is the full model, 1.0); None without exits (MFCC)
    or without an answer (the model gives none)."""
    if exits is None or "agreement" not in feats.scores:
        return None
    return round(float(exit_agreement(feats.scores["agreement"], exits).mean()), 4)


def settings(model: EarlyExitHubert, dev_scores: dict[str, torch.Tensor], config: MiniSuperbConfig) -> dict:
    """Upstream settings compared: name -> policy over score traces (entropy budgets calibrate on the dev
    entropies; DAISY's policy may read any score)."""
    num_layers = model.num_layers
    daisy_depth = model.policy.exit_layers(dev_scores).float().mean().item()
    out = {"full": policies.Fixed(layer=num_layers), "daisy": model.policy}
    for fraction in config.budgets:
        out[f"budget-{fraction:g}"] = policies.calibrate_budget(dev_scores["entropy"], fraction * num_layers)
    for layer in config.fixed or (max(1, round(daisy_depth)),):
        out[f"fixed-{layer}"] = policies.Fixed(layer=layer)
    return out


def _collate(features: Features, idx: list[int], exits: torch.Tensor | None):
    frames = torch.tensor([features.frames[i] for i in idx])
    depth, _, dim = features.states[idx[0]].shape
    padded = torch.zeros(depth, len(idx), int(frames.max()), dim)
    for row, i in enumerate(idx):
        padded[:, row, : frames[row]] = features.states[i].float()
    return padded, frames, (None if exits is None else exits[idx])


class Probe(torch.nn.Module):
    """A featurizer (weighted sum over the states run; None for a single stream) followed by a task's probe."""

    def __init__(self, featurizer: WeightedSum | None, head: torch.nn.Module):
        super().__init__()
        self.featurizer, self.head = featurizer, head

    def features(self, states, exits):
        return states[0] if self.featurizer is None else self.featurizer(states, exits)


def train_and_evaluate(
    task: str | Task,
    train: tuple[Features, TaskData],
    test: tuple[Features, TaskData],
    train_exits,
    test_exits,
    config: MiniSuperbConfig,
    on_step: Callable[[], None] | None = None,
) -> dict:
    probe = train_probe(task, *train, train_exits, config, on_step)
    return evaluate(probe, task, *test, test_exits, config.max_eval_signals)


def train_probe(
    task: str | Task,
    train_feats: Features,
    train_data: TaskData,
    train_exits,
    config: MiniSuperbConfig,
    on_step: Callable[[], None] | None = None,
) -> Probe:
    """A featurizer + the task's probe trained on `train_feats` cut at `train_exits` (None: every layer);
    `on_step` is called after every training step (progress)."""
    task = registry.get(task)
    size = SIZES[config.size]
    depth, _, dim = train_feats.states[0].shape
    torch.manual_seed(config.seed)
    # a single feature stream (the MFCC baseline) has nothing to weigh
    featurizer = WeightedSum(depth - 1, mode=config.featurizer) if depth > 1 else None
    probe = Probe(featurizer, task.head(dim, size, train_data))
    optim = torch.optim.AdamW(probe.parameters(), lr=size.lr)
    rng = np.random.default_rng(config.seed)
    n = len(train_feats.states)
    with exact("cpu"):  # probes train on the CPU in float32, whatever precision the features were extracted in
        for _ in range(task.steps[config.size]):
            idx = [int(i) for i in rng.choice(n, size=min(size.batch_size, n), replace=False)]
            states, frames, exits = _collate(train_feats, idx, train_exits)
            loss = task.loss(probe.head, probe.features(states, exits), frames, idx, train_data)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if on_step is not None:
                on_step()
    return probe.eval()


@torch.no_grad()
def evaluate(probe: Probe, task: str | Task, feats: Features, data: TaskData, exits, max_signals: int) -> dict:
    """The task's metrics on `feats` cut at `exits`; per-signal tasks (`capped`) on the first `max_signals`."""
    task = registry.get(task)
    count = min(len(feats.states), max_signals) if task.capped else len(feats.states)

    def test_batches():
        for start in range(0, count, 8):
            idx = list(range(start, min(start + 8, count)))
            states, frames, ex = _collate(feats, idx, exits)
            yield probe.features(states, ex), frames, idx

    with exact("cpu"):  # as they were trained
        return task.evaluate(probe.head, test_batches(), data)


# A task enters the score only where the full model beats MFCC by this share of the larger figure: otherwise the
# normalisation divides by probe noise (a probe that cannot use the features) and that one task swamps the average.
MIN_GAIN = 0.02


def scored_tasks(results: dict[str, dict[str, dict]]) -> list[str]:
    """Tasks whose full model beats MFCC on the primary metric by at least MIN_GAIN (relative)."""
    keep = []
    for task, by_setting in results.items():
        name, higher_is_better = registry.get(task).primary
        if not {"mfcc", "full"} <= set(by_setting):
            continue
        base, full = (by_setting[k]["metrics"][name] for k in ("mfcc", "full"))
        gain = full - base if higher_is_better else base - full
        if gain > MIN_GAIN * max(abs(base), abs(full)):
            keep.append(task)
    return keep


def score(results: dict[str, dict[str, dict]]) -> dict[str, float]:
    """Per setting: mean over the scored tasks of 100 * (m - m_mfcc) / (m_full - m_mfcc) on each task's
    primary metric."""
    out = {}
    tasks = scored_tasks(results)
    settings_seen = {s for task in tasks for s in results[task]}
    for setting in settings_seen:
        parts = []
        for task in tasks:
            name, _ = registry.get(task).primary
            by_setting = results[task]
            if setting not in by_setting:
                continue
            base, full, value = (by_setting[k]["metrics"][name] for k in ("mfcc", "full", setting))
            parts.append(100 * (value - base) / (full - base))
        if parts:
            out[setting] = float(np.mean(parts))
    return out


def markdown(results: dict, scores: dict) -> str:
    lines = [
        "| task | setting | metric | value | mean exit depth | compute share | agreement |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for task, by_setting in results.items():
        name, _ = registry.get(task).primary
        for setting, r in by_setting.items():
            depth = "-" if r["mean_depth"] is None else f"{r['mean_depth']:.2f}"
            share = "-" if r["compute_share"] is None else f"{r['compute_share']:.2f}"
            agree = r.get("agreement")
            agree = "-" if r["mean_depth"] is None else "n/a" if agree is None else f"{agree:.3f}"
            label = f"{setting} ({task}'s own policy)" if r.get("task_policy") else setting
            lines.append(f"| {task} | {label} | {name} | {r['metrics'][name]:.3f} | {depth} | {share} | {agree} |")
    lines += [
        "",
        "Agreement: the mean over test utterances of the share of frames where the exit layer's head gives the "
        "full model's own answer; 1.000 for the full model, whose answer it is; n/a where the model gives no "
        "answer of its own (a teacher-target model without its teacher head).",
    ]
    tasks = scored_tasks(results)
    lines += ["", f"| setting | MiniSUPERB-style score over {', '.join(tasks) or 'no task'} (MFCC = 0, full = 100) |"]
    lines += ["|---|---:|", *(f"| {s} | {v:.1f} |" for s, v in sorted(scores.items(), key=lambda kv: -kv[1]))]
    left_out = [t for t in results if t not in tasks]
    if left_out:
        lines += [
            "",
            f"Not in the score: {', '.join(left_out)}. There the full model does not beat MFCC by "
            f"{MIN_GAIN:.0%}, so the probe cannot tell features apart and normalising by the difference would "
            "amplify its noise; read those tasks' figures above.",
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict, num_layers: int, out: Path) -> Path:
    """Primary metric vs mean exit depth per task: entropy policies (DAISY, budgets) as one line, fixed
    truncation as another, the full model as a point, MFCC as a dashed baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.4), squeeze=False)
    for ax, (task, by_setting) in zip(axes[0], results.items()):
        name, higher = registry.get(task).primary
        for label, marker, chosen in (
            ("entropy (DAISY / budgets)", "o", lambda s: s == "daisy" or s.startswith("budget")),
            ("fixed truncation", "^", lambda s: s.startswith("fixed")),
        ):
            points = sorted((r["mean_depth"], r["metrics"][name]) for s, r in by_setting.items() if chosen(s))
            if points:
                ax.plot(*zip(*points), marker=marker, label=label)
        if "full" in by_setting:
            full = by_setting["full"]
            ax.scatter([full["mean_depth"]], [full["metrics"][name]], marker="s", color="black", label="full")
        if "mfcc" in by_setting:
            ax.axhline(by_setting["mfcc"]["metrics"][name], ls="--", color="grey", label="MFCC")
        ax.set_title(f"{task}: {name} ({'higher' if higher else 'lower'} is better)")
        ax.set_xlabel("mean exit layer")
        ax.set_xlim(0.5, num_layers + 0.5)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    path = out / "minisuperb.png"
    return save_figure(fig, path)


def run(
    model: EarlyExitHubert,
    data: dict[str, dict[str, TaskData]],
    dev_wavs: list[np.ndarray],
    out: Path,
    config: MiniSuperbConfig,
    source: dict[str, str] | None = None,
) -> dict | None:
    """data: input set -> split ('train', 'test') -> TaskData; source: task -> input set, by default each
    task's synthetic set ('clean' for asr and sid, 'noisy' for se, 'mix' for ss). Features are extracted
    once per input set. Under torchrun with several processes the ranks share the extraction and rank 0
    alone trains the probes and writes the results (the summary); the others return None."""
    out = Path(out)
    config.check(model.num_layers)  # before any feature is extracted
    source = registry.synthetic_sources(config.tasks) if source is None else source
    missing = [t for t in config.tasks if source.get(t) not in data]
    if missing:
        raise ValueError(f"no data for task(s) {', '.join(missing)}: input sets given are {', '.join(data)}")
    needed = sorted({source[t] for t in config.tasks})
    feats = {
        (s, split): extract(model, data[s][split].inputs, out / "features" / f"{s}-{split}")
        for s in needed
        for split in ("train", "test")
    }
    dev = extract(model, dev_wavs, out / "features" / "dev")
    if distributed.rank_and_world()[0] != 0:
        return None  # under torchrun: this rank's share of the features is with rank 0, which does the rest
    base = {(s, split): mfcc_features(data[s][split].inputs) for s in needed for split in ("train", "test")}
    chosen = settings(model, dev.scores, config)
    results: dict[str, dict] = {}
    probe_key = config.probe_key()
    jobs = [(t, s) for t in config.tasks for s in ["mfcc", *chosen]]
    with progress() as bar:
        overall = bar.add_task("probes", total=len(jobs))
        current = bar.add_task("", total=1, visible=False)  # the probe in training: its steps
        for task, setting in jobs:
            cached = out / "results" / f"{task}-{setting}.json"
            key = source[task]
            pool = base if setting == "mfcc" else feats
            train_f, test_f = pool[(key, "train")], pool[(key, "test")]
            inputs = hashlib.sha1(f"{train_f.key} {test_f.key} {dev.key}".encode()).hexdigest()
            record = json.loads(cached.read_text()) if cached.is_file() else {}
            own = setting == "daisy" and task in model.tasks  # DAISY runs the task's own policy where it has one
            run_policy = model.task_policy(task) if own else None if setting == "mfcc" else chosen[setting]
            policy = None if run_policy is None else json.loads(json.dumps(run_policy.to_dict()))
            exits = (None, None)
            if setting != "mfcc":  # the policy reads any score it needs off the stored trace
                exits = tuple(run_policy.exit_layers(f.scores) for f in (train_f, test_f))
            # a cached result counts only for the same probe, policy, model and audio (dev included: it calibrates)
            if record.get("config") == probe_key and record.get("policy") == policy and record.get("inputs") == inputs:
                record["agreement"] = mean_agreement(test_f, exits[1])  # of the same exits: a record may predate it
                results.setdefault(task, {})[setting] = record
                bar.advance(overall)
                continue
            steps = registry.get(task).steps[config.size]
            bar.reset(current, total=steps, description=f"probe {task} / {setting}: steps", visible=True)
            result = train_and_evaluate(
                task,
                (train_f, data[key]["train"]),
                (test_f, data[key]["test"]),
                *exits,
                config,
                on_step=lambda: bar.advance(current),
            )
            depth = None if exits[1] is None else exits[1].float().mean().item()
            record = {
                "config": probe_key,
                "input": key,
                "inputs": inputs,
                "metrics": result,
                "mean_depth": depth,
                "compute_share": None if depth is None else compute_share(model.backbone.config, depth),
                "agreement": mean_agreement(test_f, exits[1]),
                "policy": policy,
                "task_policy": own,
            }
            write_json(cached, record)
            results.setdefault(task, {})[setting] = record
            bar.advance(overall)
        bar.update(current, visible=False)
    scores = score(results)
    summary = {"config": asdict(config), "results": results, "scores": scores, "scored_tasks": scored_tasks(results)}
    write_json(out / "results.json", summary)
    with atomic_path(out / "results.md", suffix=".md") as tmp:
        tmp.write_text(markdown(results, scores))
    plot(results, model.num_layers, out)
    return summary
