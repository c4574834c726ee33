"""Downstream quality at the exited depth per noise condition (`daisy noise-sweep --asr`).

Exiting later on noisy audio is only worth its compute if the extra layers buy back quality. An ASR
probe (CTC over characters, MiniSUPERB's ASR probe) answers that per noise type and SNR for three
upstream settings of the same model:
- `daisy`: the model's own policy (the exits of the noise sweep);
- `fixed-k`: truncation at layer k = DAISY's mean exit on the clean test audio (the same compute on
  clean speech, but blind to noise);
- `full`: every layer.
Each setting gets its own probe, trained on the same multi-condition audio (a third clean, the rest
mixed with one of the sweep's noise types at an SNR drawn from the sweep's range), so that a probe has
seen every exit depth it will meet. Test conditions are mixed exactly as the noise sweep mixes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daisy import policies
from daisy.analysis.noise_sweep import CLEAN, SweepConfig, check_audible, conditions, mixed, noise_for
from daisy.data.noise import mix_at_snr
from daisy.downstream.minisuperb import MiniSuperbConfig, evaluate, extract, train_probe
from daisy.downstream.tasks import TaskData
from daisy.io import atomic_path, save_figure, write_json
from daisy.model import EarlyExitHubert
from daisy.progress import progress

SETTINGS = ("daisy", "fixed", "full")


@dataclass
class QualityConfig:
    size: str = "cpu"  # probe size and steps (downstream.minisuperb.SIZES)
    clean_share: float = 1 / 3  # of the training audio left clean
    seed: int = 0


def training_audio(
    wavs: list[np.ndarray], sweep: SweepConfig, config: QualityConfig, babble_pool=(), noise_files=None
) -> list[np.ndarray]:
    """Multi-condition training audio: each utterance clean or mixed with a random sweep noise type at
    an SNR drawn uniformly from the sweep's range."""
    low, high = (min(sweep.snrs), max(sweep.snrs)) if sweep.snrs else (0.0, 0.0)
    out = []
    for i, wav in enumerate(wavs):
        rng = np.random.default_rng([config.seed, 7, i])
        if not sweep.noises or rng.random() < config.clean_share:
            out.append(wav)
            continue
        kind = sweep.noises[int(rng.integers(len(sweep.noises)))]
        noise = noise_for(kind, len(wav), rng, babble_pool, noise_files or {})
        try:
            out.append(mix_at_snr(wav, noise, float(rng.uniform(low, high))))
        except ValueError as e:  # a silent utterance, or a silent stretch of a recorded noise
            raise ValueError(f"training utterance {i} with {kind} noise: {e}") from e
    return out


def asr_quality(
    model: EarlyExitHubert,
    train: tuple[list[np.ndarray], list[str]],
    test: tuple[list[np.ndarray], list[str]],
    sweep: SweepConfig,
    include_clean: bool = True,
    config: QualityConfig | None = None,
    babble_pool=(),
    noise_files=None,
    test_scores: dict | None = None,
) -> list[dict]:
    """One row per condition and setting: noise, snr, setting, layer (fixed-k's k), mean exit, CER, WER.
    Any policy of the model runs: its exits come from the features' traces of every head score. A dict
    passed as `test_scores` is filled with (noise, snr) -> the test audio's head scores (name -> (N, L)),
    which the noise sweep of the same audio and conditions can use (`sweep(..., traced=)`). A silent
    utterance is an error naming its index (`check_audible`)."""
    config = config or QualityConfig()
    (train_wavs, train_texts), (test_wavs, test_texts) = train, test
    if not all(t.strip() for t in train_texts + test_texts):
        raise ValueError("the ASR probe needs a transcript for every utterance (empty text found)")
    if sweep.noises:  # mixing needs sound: the training audio is mixed, the test audio where there are SNRs
        check_audible(train_wavs, [f"training utterance {i}" for i in range(len(train_wavs))])
        if sweep.snrs:
            check_audible(test_wavs, [f"test utterance {i}" for i in range(len(test_wavs))])
    num_layers = model.num_layers
    probe_config = MiniSuperbConfig(tasks=("asr",), size=config.size, seed=config.seed)
    clean_test = extract(model, test_wavs)
    clean_depth = model.policy.exit_layers(clean_test.scores).float().mean().item()
    fixed = max(1, round(clean_depth))
    chosen = {"daisy": model.policy, "fixed": policies.Fixed(layer=fixed), "full": policies.Fixed(layer=num_layers)}

    train_feats = extract(model, training_audio(train_wavs, sweep, config, babble_pool, noise_files))
    probes = {}
    with progress() as bar:
        task = bar.add_task("ASR probes", total=len(chosen))
        for name, policy in chosen.items():
            exits = policy.exit_layers(train_feats.scores)
            probes[name] = train_probe("asr", train_feats, TaskData([], texts=train_texts), exits, probe_config)
            bar.advance(task)

    rows = []
    todo = conditions(sweep, include_clean)
    with progress() as bar:
        task = bar.add_task("ASR per condition", total=len(todo))
        for kind, snr in todo:
            feats = (
                clean_test
                if kind == CLEAN
                else extract(model, mixed(test_wavs, kind, snr, sweep, babble_pool, noise_files))
            )
            if test_scores is not None:
                test_scores[kind, snr] = feats.scores
            for name, policy in chosen.items():
                exits = policy.exit_layers(feats.scores)
                result = evaluate(probes[name], "asr", feats, TaskData([], texts=test_texts), exits, 0)
                rows.append(
                    {
                        "noise": kind,
                        "snr": snr,
                        "setting": name,
                        "layer": fixed if name == "fixed" else None,
                        "mean_exit": exits.float().mean().item(),
                        "cer": result["cer"],
                        "wer": result["wer"],
                    }
                )
            bar.advance(task)
    return rows


def _label(row: dict) -> str:
    return f"fixed-{row['layer']}" if row["setting"] == "fixed" else row["setting"]


def markdown_table(rows: list[dict]) -> str:
    """Per condition: DAISY's mean exit and the CER of each setting."""
    names = list(dict.fromkeys(_label(r) for r in rows))
    lines = [
        "| noise | SNR (dB) | DAISY mean exit | " + " | ".join(f"CER {n}" for n in names) + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    by_condition: dict[tuple, dict] = {}
    for r in rows:
        by_condition.setdefault((r["noise"], r["snr"]), {})[_label(r)] = r
    for (noise, snr), cells in by_condition.items():
        snr_text = "clean" if snr is None else f"{snr:g}"
        cer = " | ".join(f"{cells[n]['cer']:.3f}" if n in cells else "-" for n in names)
        lines.append(f"| {noise} | {snr_text} | {cells['daisy']['mean_exit']:.2f} | {cer} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> Path:
    """CER vs SNR, one panel per noise type (clean at the left), one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = list(dict.fromkeys(r["noise"] for r in rows if r["snr"] is not None))
    snrs = sorted({r["snr"] for r in rows if r["snr"] is not None})
    x_clean = (max(snrs) + 10) if snrs else 0
    fig, axes = plt.subplots(1, max(1, len(noises)), figsize=(4 * max(1, len(noises)), 3.4), squeeze=False)
    for ax, noise in zip(axes[0], noises or [CLEAN]):
        for name in dict.fromkeys(_label(r) for r in rows):
            pts = sorted(
                (x_clean if r["snr"] is None else r["snr"], r["cer"])
                for r in rows
                if _label(r) == name and r["noise"] in (noise, CLEAN)
            )
            ax.plot(*zip(*pts), marker="o", label=name)
        has_clean = any(r["snr"] is None for r in rows)
        ticks = list(snrs) + ([x_clean] if has_clean else [])
        ax.set_xticks(ticks, [f"{s:g}" for s in snrs] + (["clean"] if has_clean else []))
        ax.invert_xaxis()
        ax.set_title(f"ASR probe, {noise} noise")
        ax.set_xlabel("SNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("CER (lower is better)")
    axes[0][0].legend(fontsize=8)
    path = out / "asr_cer_vs_snr.png"
    return save_figure(fig, path)


def write_quality(rows: list[dict], out: str | Path) -> None:
    """asr_quality.json (rows), asr_quality.md (table) and asr_cer_vs_snr.png under `out`."""
    out = Path(out)
    write_json(out / "asr_quality.json", {"settings": list(SETTINGS), "rows": rows})
    with atomic_path(out / "asr_quality.md", suffix=".md") as tmp:
        tmp.write_text(markdown_table(rows))
    plot(rows, out)
