"""Exit depth against noise level (`daisy noise-sweep`): DAISY should exit early on clean speech and
late on noisy speech.

Every utterance is mixed with each noise type at each SNR (exactly, `mix_at_snr`), with noise drawn
from an RNG seeded by (seed, utterance, noise type) so each SNR sees the same noise. Head scores are
traced once per condition (every score: any policy applies) and the model's policy applied to them (the
same exits as the live model, see tests). A silent utterance or noise file cannot be mixed at an SNR: it
is an error naming it. Where the model gives its own full-depth answer (`calibration.can_answer`), each
utterance's agreement at its exit (share of frames where the exit gives that answer, the quality
`daisy calibrate --agreement` guarantees on data like its calibration audio) is measured too. Results:
per-utterance CSV/JSON, a summary per noise type and SNR (mean, spread, histogram, compute share, mean
agreement), and PNG plots.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from daisy.audio import load
from daisy.calibration import can_answer, exit_agreement, trace_scores
from daisy.compute import compute_share
from daisy.data.noise import NOISE_TYPES, make_noise, mix_at_snr
from daisy.io import atomic_path, save_figure, write_json
from daisy.model import EarlyExitHubert
from daisy.progress import progress

CLEAN = "clean"


@dataclass
class SweepConfig:
    noises: tuple[str, ...] = ("white", "pink", "babble")
    snrs: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0, -5.0)
    seed: int = 0

    def __post_init__(self):
        bad = [s for s in self.snrs if not math.isfinite(s)]
        if bad:
            raise ValueError(f"SNRs are finite numbers of dB, got {bad[0]!r}")


def parse_snrs(text: str) -> tuple[bool, tuple[float, ...]]:
    """'clean,20,10,0' -> (include clean, (20.0, 10.0, 0.0)); repeats count once. Nothing, or an SNR
    that is not a finite number, is an error naming the option."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    usage = "--snr takes 'clean' and finite numbers in dB separated by commas"
    if not items:
        raise ValueError(f"{usage}; got nothing ({text!r})")
    try:
        snrs = tuple(dict.fromkeys(float(s) for s in items if s != CLEAN))
    except ValueError as err:
        raise ValueError(f"{usage}, got {text!r}") from err
    if not all(math.isfinite(s) for s in snrs):
        raise ValueError(f"{usage}, got {text!r}")
    return CLEAN in items, snrs


def parse_noises(text: str) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """'white,babble,cafe.wav' -> (noise names, {file name: its audio}); repeats count once. A name that is
    neither a noise type nor an existing file is an error naming it."""
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds:
        raise ValueError("--noise is empty: give noise types and/or noise audio files, comma-separated")
    files = {}
    for kind in kinds:
        if kind in NOISE_TYPES:
            continue
        if not Path(kind).is_file():
            raise ValueError(
                f"--noise {kind!r}: neither a noise type ({', '.join(NOISE_TYPES)}) nor an existing audio file"
            )
        files[kind] = load(kind)
        if not np.any(files[kind]):
            raise ValueError(f"--noise {kind}: the file is silent (all samples zero): no SNR can be mixed with it")
    return kinds, files


def check_audible(wavs: list[np.ndarray], names: list[str] | None = None) -> None:
    """A ValueError naming the silent utterances (all samples zero): no noise can be mixed with them at an SNR."""
    silent = [names[i] if names else f"utterance {i}" for i, wav in enumerate(wavs) if not np.any(wav)]
    if silent:
        more = f" and {len(silent) - 3} more" if len(silent) > 3 else ""
        raise ValueError(f"silent audio (all samples zero) cannot be mixed at an SNR: {', '.join(silent[:3])}{more}")


def noise_for(kind: str, n: int, rng: np.random.Generator, babble_pool, noise_files: dict) -> np.ndarray:
    if kind in noise_files:  # a recorded noise: a random stretch of it
        noise = noise_files[kind]
        start = int(rng.integers(max(1, len(noise) - n)))
        return np.resize(noise[start:], n)
    return make_noise(kind, n, rng, babble_pool)


def conditions(config: SweepConfig, include_clean: bool = True) -> list[tuple[str, float | None]]:
    """(noise, snr) pairs in sweep order, clean (snr None) first."""
    return ([(CLEAN, None)] if include_clean else []) + [(k, s) for k in config.noises for s in config.snrs]


def mixed(
    wavs: list[np.ndarray], kind: str, snr: float | None, config: SweepConfig, babble_pool=(), noise_files=None
) -> list[np.ndarray]:
    """`wavs` under one condition; utterance i always gets the same noise of a kind, whatever the SNR."""
    if kind == CLEAN:
        return list(wavs)
    out = []
    for i, wav in enumerate(wavs):
        rng = np.random.default_rng([config.seed, i, config.noises.index(kind)])
        try:
            out.append(mix_at_snr(wav, noise_for(kind, len(wav), rng, babble_pool, noise_files or {}), snr))
        except ValueError as e:  # a silent utterance, or a silent stretch of a recorded noise
            raise ValueError(f"utterance {i} with {kind} noise: {e}") from e
    return out


def sweep(
    model: EarlyExitHubert,
    wavs: list[np.ndarray],
    config: SweepConfig,
    include_clean: bool = True,
    babble_pool: list[np.ndarray] = (),
    noise_files: dict[str, np.ndarray] | None = None,
    traced: dict[tuple[str, float | None], dict[str, torch.Tensor]] | None = None,
) -> list[dict]:
    """One row per utterance and condition: utterance index, noise, snr (None when clean), exit layer, its
    agreement with the full model's answer (`exit_agreement`; None for a model without an answer) and per
    score (entropy, confidence, agreement, ...) its per-layer values. `traced` maps (noise, snr) to the head
    scores (name -> (N, L)) of these utterances under that condition where they were already computed
    (`asr_quality` does), so that those conditions are not run again where they hold what is needed."""
    todo = conditions(config, include_clean)
    traced = traced or {}
    answers = can_answer(model)  # then every condition's agreement with the full model is measured
    needed = set(model.policy.needs) | ({"agreement"} if answers else set())
    rows = []
    with progress() as bar:
        task = bar.add_task("noise sweep", total=len(todo))
        for kind, snr in todo:
            scores = traced.get((kind, snr))
            if scores is None or not needed <= set(scores):
                audio = mixed(wavs, kind, snr, config, babble_pool, noise_files)
                scores = trace_scores(model, audio, agreement=answers)
            exits = model.policy.exit_layers(scores)
            agree = exit_agreement(scores["agreement"], exits).tolist() if answers else [None] * len(wavs)
            for i in range(len(wavs)):
                rows.append(
                    {
                        "utterance": i,
                        "noise": kind,
                        "snr": snr,
                        "exit_layer": int(exits[i]),
                        "exit_agreement": None if agree[i] is None else round(agree[i], 4),
                        **{name: [round(float(v), 4) for v in value[i]] for name, value in sorted(scores.items())},
                    }
                )
            bar.advance(task)
    return rows


def summarize(rows: list[dict], model: EarlyExitHubert) -> list[dict]:
    """Per noise type and SNR: mean and spread of exit depth, histogram, compute share, and `agreement`: the
    mean over utterances of each one's share of frames where its exit gives the full model's answer (None
    where the model has no answer)."""
    num_layers = model.num_layers
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["noise"], r["snr"]), []).append(r)
    out = []
    for (noise, snr), group in groups.items():
        e = np.array([r["exit_layer"] for r in group], dtype=float)
        agree = [r.get("exit_agreement") for r in group]
        out.append(
            {
                "noise": noise,
                "snr": snr,
                "utterances": len(e),
                "mean_exit": float(e.mean()),
                "std_exit": float(e.std()),
                "q25": float(np.percentile(e, 25)),
                "median": float(np.median(e)),
                "q75": float(np.percentile(e, 75)),
                "histogram": [int((e == layer).sum()) for layer in range(1, num_layers + 1)],
                "compute_share": compute_share(model.backbone.config, float(e.mean())),
                "agreement": None if None in agree else round(float(np.mean(agree)), 4),
            }
        )
    return out


def markdown_table(summary: list[dict]) -> str:
    lines = [
        "| noise | SNR (dB) | utterances | mean exit | std | median | compute share | agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        snr = "clean" if s["snr"] is None else f"{s['snr']:g}"
        agree = "n/a" if s.get("agreement") is None else f"{s['agreement']:.3f}"  # a model without an answer
        lines.append(
            f"| {s['noise']} | {snr} | {s['utterances']} | {s['mean_exit']:.2f} | {s['std_exit']:.2f} | "
            f"{s['median']:.1f} | {s['compute_share']:.2f} | {agree} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], num_layers: int, out: Path) -> list[Path]:
    """mean exit depth vs SNR (one line per noise type, clean at the left, band = +-1 std), beside it the
    agreement with the full model's answer vs SNR (where measured), and a histogram of exit layers per SNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next((s for s in summary if s["snr"] is None), None)
    paths = [out / "exit_depth_vs_snr.png"]
    fig, ax = _versus_snr(summary, "mean_exit", "std_exit", "mean exit layer", "DAISY exit depth vs noise level")
    ax.set_ylim(0.5, num_layers + 0.5)
    save_figure(fig, paths[0])
    if all(s.get("agreement") is not None for s in summary):
        paths.append(out / "agreement_vs_snr.png")
        title = "exits' agreement with the full model vs noise level"
        fig, ax = _versus_snr(summary, "agreement", None, "agreement with the full model's answer", title)
        ax.set_ylim(0.0, 1.02)
        save_figure(fig, paths[-1])

    conditions = ([clean] if clean else []) + [s for s in summary if s["snr"] is not None]
    by_snr: dict = {}
    for s in conditions:
        key = "clean" if s["snr"] is None else f"{s['snr']:g} dB"
        by_snr.setdefault(key, np.zeros(num_layers))
        by_snr[key] += np.array(s["histogram"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / max(1, len(by_snr))
    for j, (key, hist) in enumerate(by_snr.items()):
        ax.bar(np.arange(1, num_layers + 1) + j * width - 0.4 + width / 2, hist / hist.sum(), width, label=key)
    ax.set_xlabel("exit layer")
    ax.set_ylabel("share of utterances")
    ax.set_title("exit layers per SNR (all noise types)")
    ax.legend(fontsize=8)
    paths.append(out / "exit_histogram.png")
    save_figure(fig, paths[-1])
    return paths


def _versus_snr(summary: list[dict], key: str, spread: str | None, ylabel: str, title: str):
    """A figure of `key` vs SNR, one line per noise type, clean at the left, band = +-`spread`: (fig, ax)."""
    import matplotlib.pyplot as plt

    clean = next((s for s in summary if s["snr"] is None), None)
    noises = sorted({s["noise"] for s in summary if s["snr"] is not None})
    snrs = sorted({s["snr"] for s in summary if s["snr"] is not None})
    x_clean = (max(snrs) + 10) if snrs else 0
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for noise in noises:
        pts = sorted(
            (s["snr"], s[key], s[spread] if spread else 0.0)
            for s in summary
            if s["noise"] == noise and s["snr"] is not None
        )
        if clean:
            pts.append((x_clean, clean[key], clean[spread] if spread else 0.0))
        x, m, sd = (np.array(v) for v in zip(*pts))
        ax.plot(x, m, marker="o", label=noise)
        if spread:
            ax.fill_between(x, m - sd, m + sd, alpha=0.15)
    if clean and not noises:
        ax.plot([x_clean], [clean[key]], marker="o", label="clean")
    ax.set_xticks(list(snrs) + ([x_clean] if clean else []), [f"{s:g}" for s in snrs] + (["clean"] if clean else []))
    ax.invert_xaxis()  # clean on the left, noisier to the right: DAISY's depth should rise
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return fig, ax


def write_results(
    rows: list[dict], summary: list[dict], model: EarlyExitHubert, out: str | Path, names: list[str] | None = None
) -> None:
    out = Path(out)
    for r in rows:
        r["name"] = names[r["utterance"]] if names else str(r["utterance"])
    write_json(out / "noise_sweep.json", {"policy": model.policy.to_dict(), "summary": summary, "utterances": rows})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["name", "noise", "snr", "exit_layer", "agreement"])
    for r in rows:
        agree = "" if r.get("exit_agreement") is None else r["exit_agreement"]
        writer.writerow([r["name"], r["noise"], "clean" if r["snr"] is None else r["snr"], r["exit_layer"], agree])
    with atomic_path(out / "exit_layers.csv", suffix=".csv") as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(out / "noise_sweep.md", suffix=".md") as tmp:
        tmp.write_text(markdown_table(summary))
    plot(summary, model.num_layers, out)


def monotone_text(verdict: dict[str, bool]) -> str:
    """`monotone`'s verdict as 'babble: no, white: yes'."""
    return ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in verdict.items())


def monotone(summary: list[dict]) -> dict[str, bool]:
    """Per noise type with two or more conditions (clean counts): does mean exit depth rise (weakly) as SNR
    falls, clean first?"""
    clean = next((s["mean_exit"] for s in summary if s["snr"] is None), None)
    verdict = {}
    for noise in sorted({s["noise"] for s in summary if s["snr"] is not None}):
        depths = [
            m for _, m in sorted(((s["snr"], s["mean_exit"]) for s in summary if s["noise"] == noise), reverse=True)
        ]
        if clean is not None:
            depths.insert(0, clean)
        if len(depths) > 1:  # one condition shows no trend
            verdict[noise] = all(b >= a - 1e-9 for a, b in zip(depths, depths[1:]))
    return verdict
