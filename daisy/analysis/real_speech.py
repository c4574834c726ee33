"""How a model's exits and heads read real speech, against the synthetic speech it was trained on.

Under the model's own policy: the mean exit layer of a folder of real recordings clean and with white, pink
and babble noise (babble from other speakers' utterances of the same folder) at each SNR, overall and by
band (a manifest's `band` field, e.g. wide for 16 kHz recordings, narrow for 8 kHz originals). For the real
speech and each synthetic source given: the distribution of each layer's head entropy (the utterance's mean
frame entropy, what the policy reads) and the share of frames where heads l and l+1 agree on their class.
`benchmarks/real_speech.py` runs it on the real-speech dev set; `daisy ship` puts it in the model card.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from daisy.upstream.geometry import SAMPLE_RATE

PERCENTILES = (10, 25, 50, 75, 90)


def real_set(folder: str | Path, min_samples: int) -> dict:
    """wavs, speakers and bands of a dev folder (a manifest's extra `band` field; "" where it has none)."""
    from daisy.data.sources import load_all, utterances

    folder = Path(folder)
    utts = utterances(folder)
    manifest = folder / "manifest.jsonl"
    lines = manifest.read_text().splitlines() if manifest.is_file() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    band = {row["id"]: row.get("band", "") for row in rows}
    return {
        "wavs": load_all(utts, min_samples),
        "speakers": [u.speaker or u.id for u in utts],
        "bands": [band.get(u.id, "") for u in utts],
    }


def noisy(wavs: list[np.ndarray], speakers: list[str], kind: str, snr: float, seed: int) -> list[np.ndarray]:
    """Each utterance mixed at `snr` dB with `kind` noise; babble from utterances of the other speakers."""
    from daisy.data.noise import make_noise, mix_at_snr

    rng = np.random.default_rng(seed)
    out = []
    for wav, speaker in zip(wavs, speakers):
        others = [w for w, s in zip(wavs, speakers) if s != speaker] if kind == "babble" else ()
        out.append(mix_at_snr(wav, make_noise(kind, len(wav), rng, others), snr))
    return out


def exits_and_entropy(model, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit layer per utterance under `model.policy` (N,), and every head's entropy (N, L)."""
    from daisy.calibration import trace_scores

    trace = trace_scores(model, wavs)
    return model.policy.exit_layers(trace), trace["entropy"]


@torch.no_grad()
def head_agreement(model, wavs: list[np.ndarray], batch_size: int = 8) -> list[float]:
    """Share of valid frames (pooled over `wavs`) where heads l and l+1 pick the same class, l = 1..L-1."""
    from daisy.data.batching import batches
    from daisy.training.train_heads import frozen_features

    same = torch.zeros(model.num_layers - 1)
    frames = 0
    for _, padded, lengths in batches(wavs, batch_size, model.backbone.min_samples):
        feats, mask, _ = frozen_features(model, padded, lengths)
        picks = [model.heads.logits(layer, f).argmax(-1) for layer, f in enumerate(feats, 1)]
        for layer in range(1, model.num_layers):
            same[layer - 1] += ((picks[layer - 1] == picks[layer]) & mask).sum()
        frames += int(mask.sum())
    return (same / max(frames, 1)).tolist()


def summarise(model, wavs: list[np.ndarray]) -> dict:
    exits, entropy = exits_and_entropy(model, wavs)
    return {
        "utterances": len(wavs),
        "seconds": round(sum(len(w) for w in wavs) / SAMPLE_RATE, 1),
        "mean_exit_clean": float(exits.float().mean()),
        "entropy_mean": entropy.mean(0).tolist(),
        "entropy_percentiles": {str(p): np.percentile(entropy.numpy(), p, axis=0).tolist() for p in PERCENTILES},
        "agreement": head_agreement(model, wavs),
    }


def measure(
    model,
    real_folder: str | Path,
    synthetic: dict[str, list[np.ndarray]],
    noises: list[str],
    snrs: list[float],
    seed: int = 0,
) -> dict:
    """Exits per condition on the real folder, and per source (real, then each of `synthetic`) its head
    entropy and consecutive-head agreement. The model is put in eval mode."""
    start = time.perf_counter()
    model.eval()
    torch.manual_seed(seed)
    real = real_set(real_folder, model.backbone.min_samples)
    bands = np.array(real["bands"])

    def by_band(exits: torch.Tensor) -> dict:
        out = {"all": float(exits.float().mean())}
        for band in sorted(set(bands) - {""}):
            out[band] = float(exits[torch.from_numpy(bands == band)].float().mean())
        return out

    exits = {"clean": by_band(exits_and_entropy(model, real["wavs"])[0])}
    for k, kind in enumerate(noises):
        for s, snr in enumerate(snrs):
            wavs = noisy(real["wavs"], real["speakers"], kind, snr, seed=seed * 1000 + 10 * k + s)
            exits[f"{kind} {snr:g} dB"] = by_band(exits_and_entropy(model, wavs)[0])
    sources = {"real": summarise(model, real["wavs"])}
    sources["real"]["speakers"] = len(set(real["speakers"]))
    sources["real"]["bands"] = {b: int((bands == b).sum()) for b in sorted(set(bands) - {""})}
    for name, wavs in synthetic.items():
        sources[name] = summarise(model, wavs)
    return {
        "policy": model.policy.to_dict(),
        "real_folder": str(real_folder),
        "noises": list(noises),
        "snrs": list(snrs),
        "exits": exits,
        "sources": sources,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(result: dict) -> list[str]:
    """The result as markdown tables: exits per condition, entropy per layer, head agreement."""
    policy = result["policy"]
    bands = list(result["exits"]["clean"])
    lines = [f"Policy: {policy['name']}, " + ", ".join(f"{k} {v}" for k, v in policy.items() if k != "name"), ""]
    lines += ["| real speech | " + " | ".join(f"mean exit ({b})" for b in bands) + " |"]
    lines += ["|---" * (len(bands) + 1) + "|"]
    for condition, row in result["exits"].items():
        lines.append(f"| {condition} | " + " | ".join(f"{row[b]:.2f}" for b in bands) + " |")
    sources = result["sources"]
    layers = len(sources["real"]["entropy_mean"])
    lines += ["", "Head entropy (nats), mean [p10, p90] over utterances:", ""]
    lines += ["| source | utts | exit (clean) | " + " | ".join(f"layer {i}" for i in range(1, layers + 1)) + " |"]
    lines += ["|---" * (layers + 3) + "|"]
    for name, src in sources.items():
        p10, p90 = src["entropy_percentiles"]["10"], src["entropy_percentiles"]["90"]
        cells = [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in zip(src["entropy_mean"], p10, p90)]
        lines.append(f"| {name} | {src['utterances']} | {src['mean_exit_clean']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Consecutive-head agreement (share of frames where heads l and l+1 pick the same class):", ""]
    lines += ["| source | " + " | ".join(f"{i}-{i + 1}" for i in range(1, layers)) + " |"]
    lines += ["|---" * layers + "|"]
    for name, src in sources.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.2f}" for a in src["agreement"]) + " |")
    return lines


def plot(result: dict, path: Path) -> None:
    """Mean exit per SNR and noise; head entropy per layer (mean, p10-p90) and consecutive-head agreement
    per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from daisy.io import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    clean = result["exits"]["clean"]["all"]
    for kind in result["noises"]:
        ys = [clean] + [result["exits"][f"{kind} {snr:g} dB"]["all"] for snr in result["snrs"]]
        ax.plot(["clean"] + [f"{snr:g}" for snr in result["snrs"]], ys, marker="o", label=kind)
    layers = len(result["sources"]["real"]["entropy_mean"])
    ax.set(title="Real speech: mean exit layer", xlabel="SNR (dB)", ylabel="mean exit layer", ylim=(0.5, layers + 0.5))
    ax.legend()
    threshold = result["policy"].get("threshold")
    for name, src in result["sources"].items():
        layers = np.arange(1, len(src["entropy_mean"]) + 1)
        (line,) = axes[1].plot(layers, src["entropy_mean"], marker="o", label=name)
        pct = src["entropy_percentiles"]
        axes[1].fill_between(layers, pct["10"], pct["90"], color=line.get_color(), alpha=0.15)
        axes[2].plot(layers[:-1] + 0.5, src["agreement"], marker="o", label=name)
    if isinstance(threshold, (int, float)):
        axes[1].axhline(threshold, color="k", linestyle="--", linewidth=1, label="policy threshold")
    axes[1].set(title="Head entropy (mean, p10-p90)", xlabel="layer", ylabel="nats")
    axes[1].legend()
    axes[2].set(title="Consecutive-head agreement", xlabel="between layers l and l+1", ylabel="share of frames")
    axes[2].legend()
    save_figure(fig, path)


def write(result: dict, out: Path) -> list[str]:
    """results.json, table.md and real_speech.png in `out`; the table's lines."""
    from daisy.io import atomic_path, write_json

    lines = table(result)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    plot(result, out / "real_speech.png")
    return lines
