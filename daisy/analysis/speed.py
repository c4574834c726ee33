"""Wall-clock cost of early exit against the full model, measured in one run.

For batch 1 and batch 16 it times, on the same utterances:
  reference   transformers' HubertModel(output_hidden_states=True)
  full        our backbone stepping all layers (no heads)
  full+heads  the early-exit model forced to full depth, every head scored (the heads' overhead)
  early exit  the early-exit model under an entropy budget calibrated to --depth (compaction on)
and prints speedup vs full next to the ideal speedup: full time over the time the same work would
take if each utterance ran only its own layers, t_front + (d / L) (t_full - t_front), with t_front
the measured conv front-end time and d the frame-weighted mean exit depth; and their ratio (target
>= 0.9). The multiply-add share at that depth (`daisy.compute`) is printed too: on CPU the conv
front-end costs far more time than its multiply-adds suggest. The five take turns on every batch (each
timed on its second consecutive call) and the ratios are medians of per-round ratios, so drift in
the machine's speed cancels out; their quartiles over rounds are printed beside them. The heads'
overhead is also timed inside the full+heads calls (head scoring and exit decisions over the rest of
the same calls): it misses what the heads do to the layers around them, but it is not a difference
of two noisy timings.

`--batch-rule` instead compares, at batch 16, per-utterance compaction against DAISY's own per-batch exit rule
at the same mean depth (`daisy.analysis.batch_rule`).

    daisy bench [--model DIR | --preset base --classes 500 [--head-rank 64]] [--audio synthetic|DIR] [--depth 3.0]
        [--utterances 32] [--repeats 5] [--threads N] [--json FILE] [--batch-rule]
    python benchmarks/speed.py ...   (the same, as a script)
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from daisy import policies
from daisy.calibration import trace_scores
from daisy.compute import compute_share
from daisy.data.batching import batches
from daisy.model import EarlyExitHubert
from daisy.precision import check_precision, inference
from daisy.upstream.geometry import SAMPLE_RATE


def interleaved_seconds(fns: dict, groups: list, repeats: int) -> dict[str, list[float]]:
    """Seconds each fn(padded, lengths) takes over all `groups`, in each of `repeats` rounds.

    The functions take turns on every batch, so a slow spell of the machine hits them all alike (ratios are
    then paired by round). Each turn runs its function twice and times the second call: what one function
    leaves behind (allocator and cache state) otherwise lands on the next (up to +11 % on the heads at batch 16
    after transformers' forward), while a real workload calls one of them over and over.
    """
    times = {name: [] for name in fns}
    device = getattr(groups[0][0], "device", None)  # of the batches' tensors
    for _ in range(repeats):
        total = dict.fromkeys(fns, 0.0)
        for padded, lengths in groups:
            for name, fn in fns.items():
                fn(padded, lengths)
                finish(device)
                start = time.perf_counter()
                fn(padded, lengths)
                finish(device)
                total[name] += time.perf_counter() - start
        for name in fns:
            times[name].append(total[name])
    return times


def finish(device: torch.device | None) -> None:
    """Wait for `device` to finish its queued work: CUDA runs asynchronously, a timing must not end before it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def ratio_quartiles(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Lower quartile, median and upper quartile over rounds of a / b. Pairing by round makes the ratio
    robust to drift between rounds; the quartiles say how far the median can be trusted."""
    ratios = [x / y for x, y in zip(a, b)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, median, q3


def device_batches(model: EarlyExitHubert, wavs: list[np.ndarray], batch_size: int) -> list[tuple]:
    """(padded, lengths) of `batches(wavs, batch_size)`, already on the model's device: the timings do not
    include the copy."""
    device = next(model.parameters()).device
    return [(padded.to(device), lengths.to(device)) for _, padded, lengths in batches(wavs, batch_size)]


def under_policy(model: EarlyExitHubert, policy: policies.Policy):
    """A call to time: `model` under `policy` on one (padded, lengths) batch, keeping no hidden states."""

    def call(padded, lengths):
        model.policy = policy
        return model(padded, lengths, output_hidden_states=False)

    return call


def front_end_call(model: EarlyExitHubert):
    """A call to time: the conv front-end alone, what every exit pays."""
    return lambda padded, lengths: model.embed(padded, lengths)


def exit_depths(outs) -> tuple[float, float]:
    """Mean exit depth of the model's outputs over utterances, and weighted by their frames (what the work
    follows)."""
    exits = torch.cat([o.exit_layers for o in outs]).float()
    frames = torch.cat([o.lengths for o in outs]).float()
    return exits.mean().item(), ((exits * frames).sum() / frames.sum()).item()


def timed_inside(model: EarlyExitHubert, policy: policies.Policy, groups: list, repeats: int) -> list[float]:
    """Per round over all `groups`, the share of `model`'s time under `policy` spent inside head scoring and
    the policy's decisions: a direct measure of what the heads cost, from one set of calls, so it does not
    suffer the noise of a difference of two timings."""
    inside = 0.0
    device = getattr(groups[0][0], "device", None)  # of the batches' tensors

    def timer(fn):
        def timed(*args, **kwargs):
            nonlocal inside
            finish(device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                finish(device)
                inside += time.perf_counter() - start

        return timed

    previous = model.policy
    model.heads.scores = timer(model.heads.scores)  # shadows the method on this instance until deleted
    model.policy = replace(policy)
    model.policy.decide = timer(policy.decide)
    shares = []
    try:
        for _ in range(repeats):
            inside, start = 0.0, time.perf_counter()
            for padded, lengths in groups:
                model(padded, lengths, output_hidden_states=False)
            finish(device)
            shares.append(inside / (time.perf_counter() - start))
    finally:
        del model.heads.scores
        model.policy = previous
    return shares


def load_model(
    path: str | None, preset: str = "tiny", classes: int = 100, head_rank: int | None = None
) -> EarlyExitHubert:
    """A daisy model directory, or (path None) a random model of `preset` with `classes`-way heads (of
    `head_rank`); give the random one realistic heads with `spread_like_trained` before timing it."""
    if path:
        return EarlyExitHubert.from_pretrained(path)
    from daisy.upstream import HubertBackbone

    return EarlyExitHubert.from_backbone(HubertBackbone.from_preset(preset), classes, head_rank=head_rank).eval()


TRAINED_LOGIT_STD = 3.0  # spread of the shipped model's head logits over classes, at every layer


def spread_like_trained(model: EarlyExitHubert, wav: np.ndarray) -> None:
    """Scale each head so that its logits on `wav` spread like a trained head's (std TRAINED_LOGIT_STD).

    Random heads then give entropies that differ between utterances, as trained ones do. Logits spread much
    wider would put most probabilities below float32's normal range, where x86 arithmetic is many times
    slower, and the benchmark would time that (5x the entropy's cost at C = 500).
    """
    from daisy.training.train_heads import frozen_features

    feats, _, _ = frozen_features(model, torch.from_numpy(wav)[None], None)
    with torch.no_grad():
        for layer, (head, layer_feats) in enumerate(zip(model.heads.heads, feats), start=1):
            scale = TRAINED_LOGIT_STD / model.heads.logits(layer, layer_feats).std(-1).mean()
            last = head[-1] if isinstance(head, torch.nn.Sequential) else head  # a low-rank head's output factor
            last.weight.mul_(scale)
            last.bias.mul_(scale)


def speech(n: int, source: str = "synthetic", seed: int = 0) -> list[np.ndarray]:
    """n utterances of `source` ('synthetic': its test split; or a folder of audio). Without espeak-ng,
    'synthetic' falls back to noise bursts of speech-like lengths."""
    from daisy.data.sources import load_all, utterances

    if source != "synthetic":
        return load_all(utterances(source)[:n])
    try:
        return load_all(utterances("synthetic", "test"))[:n]
    except (ImportError, RuntimeError, OSError):
        rng = np.random.default_rng(seed)
        return [
            0.1 * rng.standard_normal(int(rng.uniform(1.5, 4.0) * SAMPLE_RATE)).astype(np.float32) for _ in range(n)
        ]


def run(model: EarlyExitHubert, wavs: list[np.ndarray], depth: float, repeats: int, read_from: int = 1) -> list[dict]:
    """The timings at batch 1 and 16. `read_from` > 1 also times full depth with the heads a policy reads that
    exits no earlier than that layer (a model's own policy's `min_layer`): its heads' cost on the full path."""
    entropy = trace_scores(model, wavs)["entropy"]
    budget = policies.calibrate_budget(entropy, depth)
    never = policies.Entropy(threshold=-1.0)  # scores every head, exits nobody early
    never_from = policies.Entropy(threshold=-1.0, min_layer=read_from)  # the heads from read_from on
    full_depth = policies.Fixed(layer=model.num_layers)
    rows = []
    for batch_size in (1, 16):
        groups = device_batches(model, wavs, batch_size)

        def reference(padded, lengths):
            attention = (torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]).long()
            return model.backbone.model(padded, attention_mask=attention, output_hidden_states=True)

        candidates = {
            "front_end": front_end_call(model),
            "reference": reference,
            "full": under_policy(model, full_depth),
            "full_heads": under_policy(model, never),
            "early_exit": under_policy(model, budget),
        }
        if read_from > 1:
            candidates["policy_heads"] = under_policy(model, never_from)
        with torch.inference_mode():
            t = interleaved_seconds(candidates, groups, repeats)
            inside = timed_inside(model, never, groups, repeats)
            inside_from = timed_inside(model, never_from, groups, repeats) if read_from > 1 else None
            model.policy = budget
            outs = [model(p, n, output_hidden_states=False) for p, n in groups]
        mean_depth, weighted_depth = exit_depths(outs)
        t_front, t_full = (statistics.median(t[k]) for k in ("front_end", "full"))
        ideal = t_full / (t_front + weighted_depth / model.num_layers * (t_full - t_front))
        speedup = ratio_quartiles(t["full"], t["early_exit"])
        from_layer = {}
        if read_from > 1:
            from_layer = {
                "policy_min_layer": read_from,
                **_head_overheads("policy_", t["policy_heads"], t["full"], inside_from),
            }
        rows.append(
            {
                "batch": batch_size,
                "threads": torch.get_num_threads(),
                **{f"{k}_s": statistics.median(v) for k, v in t.items()},
                "mean_depth": mean_depth,
                "frame_weighted_depth": weighted_depth,
                "num_layers": model.num_layers,
                **_head_overheads("", t["full_heads"], t["full"], inside),
                "full_vs_reference": ratio_quartiles(t["full"], t["reference"])[1],
                "speedup": speedup[1],
                "speedup_quartiles": [speedup[0], speedup[2]],
                "ideal_speedup": ideal,
                "speedup_vs_ideal": speedup[1] / ideal,
                "macs_share": compute_share(model.backbone.config, mean_depth),
                **from_layer,
            }
        )
    return rows


def _head_overheads(prefix: str, with_heads: list[float], full: list[float], inside: list[float]) -> dict:
    """The heads' overhead on the full model two ways, each a median with its quartiles: the paired ratio of
    times with and without them, and (`inside`: per round, the share of the time spent in head scoring and
    decisions) the time inside them over the rest of the same calls, a direct measure."""
    paired = [r - 1 for r in ratio_quartiles(with_heads, full)]
    direct = ratio_quartiles(inside, [1 - share for share in inside])
    return {
        f"{prefix}head_overhead": paired[1],
        f"{prefix}head_overhead_quartiles": [paired[0], paired[2]],
        f"{prefix}head_overhead_inside": direct[1],
        f"{prefix}head_overhead_inside_quartiles": [direct[0], direct[2]],
    }


def _milliseconds(key: str):
    return lambda r: f"{r[key] * 1000:.0f} ms"


def _with_quartiles(key: str, fmt):
    """A cell like '+4.6 % (+3.9 % to +5.2 %)': the median, then its quartiles over rounds."""
    return lambda r: f"{fmt(r[key])} ({' to '.join(fmt(q) for q in r[key + '_quartiles'])})"


def _percent(x: float) -> str:
    return f"{x * 100:+.1f} %"


COLUMNS = {
    "batch": lambda r: str(r["batch"]),
    "front-end": _milliseconds("front_end_s"),
    "transformers": _milliseconds("reference_s"),
    "full": _milliseconds("full_s"),
    "full+heads": _milliseconds("full_heads_s"),
    "early exit": _milliseconds("early_exit_s"),
    "mean depth": lambda r: f"{r['mean_depth']:.2f}",
    "heads overhead (quartiles)": _with_quartiles("head_overhead", _percent),
    "heads, timed inside (quartiles)": _with_quartiles("head_overhead_inside", _percent),
    "full/transformers": lambda r: f"{r['full_vs_reference']:.2f}",
    "speedup (quartiles)": _with_quartiles("speedup", lambda x: f"{x:.2f}x"),
    "ideal": lambda r: f"{r['ideal_speedup']:.2f}x",
    "speedup/ideal": lambda r: f"{r['speedup_vs_ideal']:.2f}",
    "MAC share": lambda r: f"{r['macs_share']:.2f}",
}
POLICY_HEAD_COLUMNS = {  # where the model's own policy reads no head below its min_layer
    "policy's heads overhead (quartiles)": _with_quartiles("policy_head_overhead", _percent),
    "policy's heads, timed inside (quartiles)": _with_quartiles("policy_head_overhead_inside", _percent),
}


def first_read(model: EarlyExitHubert) -> int:
    """The first layer whose head the model's own policy reads (1 where it reads none, as a fixed exit: no
    heads of its own to time)."""
    read = [layer for layer in range(1, model.num_layers) if model.policy.reads(layer)]
    return read[0] if read else 1


def _layers_from(first: int, model: EarlyExitHubert) -> str:
    return f"layers {first}..{model.num_layers - 1}" if first < model.num_layers else "none: it runs every layer"


def benchmark(
    model_dir: str | None = None,
    preset: str = "tiny",
    classes: int = 100,
    audio: str = "synthetic",
    depth: float | None = None,
    utterances: int = 32,
    repeats: int = 5,
    json_path: str | None = None,
    threads: int | None = None,
    head_rank: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    batch_rule: bool = False,
) -> list[dict]:
    """Run the benchmark, print its table, optionally write the figures as JSON; returns the rows (with
    `batch_rule`, the one comparison of `daisy.analysis.batch_rule` instead).
    `threads` sets torch's intra-op threads for the run (default: torch's own choice); `device` is where the
    model runs (on CUDA each timing waits for the device to finish), in `precision` (`daisy.precision`).
    Settings are checked before any work, each error named as its `daisy bench` option."""
    for option, value, low in [
        ("--utterances", utterances, 1),
        ("--repeats", repeats, 1),
        ("--threads", threads, 1),
        ("--classes", classes, 2),
        ("--head-rank", head_rank, 1),
    ]:
        if value is not None and value < low:
            raise ValueError(f"{option} must be at least {low}, got {value}")
    if depth is not None and not (math.isfinite(depth) and depth >= 1):
        raise ValueError(f"--depth is a mean exit depth in layers, at least 1, got {depth}")
    check_precision(precision)
    if threads is not None:
        torch.set_num_threads(threads)
    model = load_model(model_dir, preset, classes, head_rank).to(device)
    wavs = speech(utterances, audio)
    if model_dir is None:
        spread_like_trained(model, wavs[0])
    name = model_dir or f"random {preset}, C={classes}" + ("" if head_rank is None else f", head rank {head_rank}")
    about = {"model": name, "audio": audio, "device": device, "precision": precision}
    if batch_rule:
        from daisy.analysis.batch_rule import compare, print_table

        with inference(device, precision):
            result = compare(model, wavs, depth or model.num_layers / 2, repeats)
        print_table(result)
        if json_path:
            from daisy.io import write_json

            write_json(json_path, {**about, **result})
        return [result]
    read_from = first_read(model) if model_dir else 1
    with inference(device, precision):
        rows = run(model, wavs, depth or model.num_layers / 2, repeats, read_from)
    columns = {**COLUMNS, **(POLICY_HEAD_COLUMNS if read_from > 1 else {})}
    table = Table(
        title=f"early exit vs full model ({model.num_layers} layers, {len(wavs)} utterances, "
        f"{torch.get_num_threads()} threads, {device}, {precision})",
        caption=None
        if read_from == 1
        else f"policy's heads: those its own policy reads ({_layers_from(read_from, model)})",
    )
    for name in columns:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(*(cell(r) for cell in columns.values()))
    Console(width=250).print(table)
    if json_path:
        from daisy.io import write_json

        write_json(json_path, {**about, "rows": rows})
    return rows
