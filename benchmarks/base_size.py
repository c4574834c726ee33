"""A Base-size rehearsal on CPU: random-initialised HuBERT Base and WavLM Base (transformers' config defaults,
heads of C = 500 k-means classes) through every stage a user runs, with the peak memory and throughput of each.

    python benchmarks/base_size.py [--out runs/base_size] [--families hubert,wavlm] [--steps 20] [--device cuda]
        [--tiny]

Per family: the random backbone is saved with transformers' `save_pretrained`, then each stage runs as its
own `daisy` command in a child process:
  startup      python importing the CLI, torch and transformers (what every other stage pays too)
  train-heads  --steps optimiser steps of 8 crops (<= 3 s) on the training utterances, then calibration on dev
  calibrate    entropy thresholds to half the layers on the dev utterances
  exit         `daisy exit` on the real recordings of benchmarks/real_speech/clips (inference only)
  minisuperb   MiniSUPERB at --size quick on the quick synthetic corpus (--minisuperb-tasks, default asr,sid:
               24 training and 8 test utterances; all four tasks take about twice as long)
  s3prl        s3prl's downstream runner (fluent_commands: 2 steps, dev and test) on the daisy upstream
  bench        (HuBERT) `daisy bench --batch-rule`: per-utterance compaction vs DAISY's per-batch rule at
               batch 16 at the same mean depth, on 32 held-out utterances
Training and calibration read utterances of the quick synthetic corpus, never the real clips (a dev set:
benchmarks/real_speech/README.md), in real file format (16 kHz WAV, listed in a manifest under --out).

Peak memory is the stage's peak resident set size: `ru_maxrss` of the rusage `os.wait4` returns for its process
(which counts the processes it waited for too), started from a small launcher process so that the figure is
the stage's own, not what the process it was forked from held. Throughput is the utterances the
stage runs through the model over the command's wall-clock time, start-up included (the `startup` row says
what that is); RTF is that time over the audio's duration. For train-heads the audio is the expected crop
length (min(length, 3 s) averaged over the training utterances) times the crops, plus the dev audio; for
minisuperb, the frames of the features it extracted (20 ms each). Results: --out/results.json and table.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "benchmarks" / "real_speech" / "clips"
# transformers-test sized geometry for --tiny (the same shape as the test suite's tiny models)
TINY = dict(
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=20,
    conv_dim=(8,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
RUNNER = """runner: {{total_steps: 2, gradient_clipping: 1, gradient_accumulate_steps: 1, log_step: 1,
         eval_step: 2, save_step: 2, max_keep: 1, eval_dataloaders: [dev, test]}}
optimizer: {{name: TorchOptim, torch_optim_name: Adam, lr: 1.0e-3}}
downstream_expert:
  datarc: {{file_path: {root}, num_workers: 0, train_batch_size: 2, eval_batch_size: 2}}
  modelrc: {{projector_dim: 8, select: UtteranceLevel, UtteranceLevel: {{pooling: MeanPooling}}}}
"""


@dataclass
class Settings:
    families: tuple[str, ...] = ("hubert", "wavlm")
    tiny: bool = False
    classes: int = 500
    steps: int = 20
    train_utterances: int = 32
    dev_utterances: int = 8
    minisuperb_tasks: str = "asr,sid"  # one input set (clean speech): frame-level and utterance-level probes
    minisuperb_train: int = 24  # the quick corpus' first 21 hold every speaker of its test split (SID)
    minisuperb_test: int = 8
    bench_utterances: int = 32
    bench_repeats: int = 2
    threads: int | None = None
    device: str = "cpu"  # every stage's --device (s3prl's runner too)
    stages: tuple[str, ...] = ("startup", "train-heads", "calibrate", "exit", "minisuperb", "s3prl", "bench")


@dataclass
class Stage:
    """One `daisy` command and the work it does: `utterances` through the model, `audio_s` seconds of them."""

    name: str
    argv: list[str]
    utterances: int = 0
    audio_s: float = 0.0
    results: dict = field(default_factory=dict)


def daisy(*args: str) -> list[str]:
    return [sys.executable, "-m", "daisy.apps.cli", *args]


def make_backbone(family: str, folder: Path, tiny: bool) -> Path:
    """A random-initialised `family` model of transformers' default (Base) size, or --tiny's, saved there."""
    import torch
    from transformers import HubertConfig, HubertModel, WavLMConfig, WavLMModel

    config_cls, model_cls = {"hubert": (HubertConfig, HubertModel), "wavlm": (WavLMConfig, WavLMModel)}[family]
    torch.manual_seed(0)
    model_cls(config_cls(**(TINY if tiny else {}))).eval().save_pretrained(folder)
    return folder


def rehearsal_corpus(folder: Path, train: int, dev: int) -> tuple[Path, dict]:
    """A manifest (absolute paths) of `train` training and `dev` dev utterances of the quick synthetic corpus,
    and their durations by split."""
    from daisy.data.sources import utterances

    picked = utterances("synthetic", "train", quick=True)[:train] + utterances("synthetic", "dev", quick=True)[:dev]
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": u.id, "path": str(u.path.resolve()), "split": u.split, "speaker": u.speaker, "samples": u.samples}
        for u in picked
    ]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, {s: [u.samples / 16000 for u in picked if u.split == s] for s in ("train", "dev")}


def fluent_layout(root: Path, wavs: list[Path]) -> Path:
    """s3prl's fluent_commands layout over 8 corpus files (linked, not copied): 4 train, 2 valid, 2 test."""
    header = "path,speakerId,transcription,action,object,location\n"
    intents = [("activate", "lights", "kitchen"), ("deactivate", "music", "none")]
    rows = {"train": [], "valid": [], "test": []}
    for i, split in enumerate(["train"] * 4 + ["valid"] * 2 + ["test"] * 2):
        action, obj, location = intents[i % 2]
        path = f"wavs/speakers/spk{i % 3}/utt{i}.wav"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).unlink(missing_ok=True)
        (root / path).symlink_to(wavs[i].resolve())
        rows[split].append(f"{path},spk{i % 3},{action} {obj} {location},{action},{obj},{location}\n")
    (root / "data").mkdir(exist_ok=True)
    for split, lines in rows.items():
        (root / "data" / f"{split}_data.csv").write_text(header + "".join(lines))
    return root


def stages(family: str, backbone: Path, out: Path, settings: Settings, corpus: Path, seconds: dict) -> list[Stage]:
    """The commands of one family's rehearsal, in order; each later one reads the model train-heads wrote."""
    from daisy.data.sources import utterances
    from daisy.training.train_heads import HeadTrainConfig

    model = out / "heads" / "model"
    layers = 3 if settings.tiny else 12
    heads = HeadTrainConfig()
    crops = settings.steps * heads.batch_size
    crop_s = sum(min(s, heads.crop_seconds) for s in seconds["train"]) / len(seconds["train"])
    clips = sorted((CLIPS / "audio").glob("*.flac"))
    clip_s = sum(u.samples for u in utterances(CLIPS)) / 16000
    fluent = fluent_layout(out / "fluent", [u.path for u in utterances(corpus, "train")[:8]])
    (out / "fluent.yaml").write_text(RUNNER.format(root=fluent))
    depth = f"{layers / 2:g}"
    on = ["--device", settings.device]
    dev_s = sum(seconds["dev"])
    plan = [
        Stage("startup", [sys.executable, "-c", "import torch, transformers, daisy.apps.cli"]),
        Stage(
            "train-heads",
            daisy("train-heads", "--model", str(backbone), "--out", str(out / "heads"), "--data", str(corpus))
            + ["--steps", str(settings.steps), "--classes", str(settings.classes), "--depth", depth, *on],
            crops + len(seconds["dev"]),
            crops * crop_s + dev_s,
        ),
        Stage(
            "calibrate",
            daisy("calibrate", "--model", str(model), "--data", str(corpus), "--depth", depth, *on),
            len(seconds["dev"]),
            dev_s,
        ),
        Stage("exit", daisy("exit", "--model", str(model), "--json", *on, *map(str, clips)), len(clips), clip_s),
        Stage(
            "minisuperb",
            daisy("minisuperb", "--model", str(model), "--data", "synthetic", "--quick", "--size", "quick")
            + ["--tasks", settings.minisuperb_tasks]
            + ["--train", str(settings.minisuperb_train), "--test", str(settings.minisuperb_test)]
            + ["--budgets", "", "--out", str(out / "minisuperb"), *on],  # full, DAISY's policy, fixed at its depth
        ),
        Stage(
            "s3prl",
            daisy("s3prl", "--", "-m", "train", "-d", "fluent_commands", "-c", str(out / "fluent.yaml"))
            + ["-u", "daisy_hubert", "-k", str(model), "--device", settings.device, "-p", str(out / "s3prl")],
            8,  # 2 steps of 2, then 2 dev and 2 test utterances
            _seconds(utterances(corpus, "train")[:8]),  # each of the 8 files once
        ),
    ]
    if family == "hubert":
        bench = ["--model", str(model), "--batch-rule", "--utterances", str(settings.bench_utterances)]
        bench += ["--repeats", str(settings.bench_repeats), "--json", str(out / "bench.json"), *on]
        bench += ["--audio", str(_bench_audio(out / "bench_audio", settings.bench_utterances))]
        if settings.threads:
            bench += ["--threads", str(settings.threads)]
        plan.append(Stage("bench", daisy("bench", *bench)))
    return [s for s in plan if s.name in settings.stages]


def _seconds(utts) -> float:
    return sum(u.samples for u in utts) / 16000


def _bench_audio(folder: Path, n: int) -> Path:
    """A manifest of `n` held-out utterances (the quick corpus' test split) for the bench to time."""
    from daisy.data.sources import utterances

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": u.id, "path": str(u.path.resolve()), "split": "test"} for u in utterances("synthetic", "test", True)]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return folder


# Runs the command given after the record path and records its wall-clock time and rusage there. A child's
# ru_maxrss counts what its parent held when it was forked (Linux keeps the high-water mark across exec), so the
# stage is started from this small process, never from the rehearsal's own, which holds torch and models.
LAUNCHER = """import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
record = {"seconds": time.perf_counter() - start, "maxrss": usage.ru_maxrss, "returncode": child.returncode}
with open(sys.argv[1], "w") as f:
    json.dump(record, f)
"""


def run_stage(stage: Stage, log: Path, cwd: Path) -> dict:
    """Run the stage's command, its output to `log`; wall-clock seconds, peak RSS (MiB) and exit code."""
    record = log.with_suffix(".rusage.json").resolve()  # the command runs in `cwd`
    with open(log, "w") as sink:
        subprocess.run([sys.executable, "-c", LAUNCHER, str(record), *stage.argv], stdout=sink, stderr=sink, cwd=cwd)
    measured = json.loads(record.read_text())
    peak = measured["maxrss"] / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, else KiB
    return {"seconds": measured["seconds"], "peak_rss_mib": peak, "returncode": measured["returncode"]}


def extracted(folder: Path) -> tuple[int, float]:
    """Utterances and seconds of audio whose features minisuperb extracted (its feature caches, 20 ms frames)."""
    from safetensors import safe_open

    count, frames = 0, 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key.startswith("state."):
                    count += 1
                    frames += f.get_slice(key).get_shape()[1]
    return count, frames * 0.02


def rehearse(out: Path, settings: Settings) -> dict:
    """Every family's stages, run and measured; results.json and table.md written to `out`."""
    out = out.resolve()  # each stage runs in its family's folder
    out.mkdir(parents=True, exist_ok=True)
    corpus, seconds = rehearsal_corpus(out / "corpus", settings.train_utterances, settings.dev_utterances)
    results = {"settings": asdict(settings), "families": {}}
    failed = False
    for family in settings.families:
        folder = out / family
        if folder.exists():
            shutil.rmtree(folder)  # a rehearsal starts fresh: no resumed training, no cached features
        (folder / "logs").mkdir(parents=True)
        backbone = make_backbone(family, folder / "backbone", settings.tiny)
        rows = results["families"][family] = {}
        for stage in stages(family, backbone, folder, settings, corpus, seconds):
            print(f"{family}: {stage.name} ...", flush=True)
            measured = run_stage(stage, folder / "logs" / f"{stage.name}.log", folder)
            if stage.name == "minisuperb" and measured["returncode"] == 0:
                stage.utterances, stage.audio_s = extracted(folder / "minisuperb" / "features")
            rows[stage.name] = row = {**measured, "utterances": stage.utterances, "audio_s": stage.audio_s}
            if stage.utterances and measured["returncode"] == 0:
                row["utterances_per_s"] = stage.utterances / measured["seconds"]
                row["rtf"] = measured["seconds"] / stage.audio_s
            if stage.name == "bench" and measured["returncode"] == 0:
                results["bench"] = json.loads((folder / "bench.json").read_text())
            if measured["returncode"] != 0:
                tail = (folder / "logs" / f"{stage.name}.log").read_text().splitlines()[-15:]
                print(f"{family}: {stage.name} failed (exit {measured['returncode']}):\n" + "\n".join(tail))
                failed = True
                break
    results["failed"] = failed
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The stage table, and the batch-rule comparison where the bench ran."""
    lines = [
        "| model | stage | wall s | peak RSS MiB | utterances | audio s | utterances/s | RTF |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for family, rows in results["families"].items():
        for name, r in rows.items():
            rate = f"{r['utterances_per_s']:.2f}" if "utterances_per_s" in r else ""
            rtf = f"{r['rtf']:.2f}" if "rtf" in r else ""
            failed = "" if r["returncode"] == 0 else f" (failed, exit {r['returncode']})"
            audio = f"{r['audio_s']:.1f}" if r["audio_s"] else ""
            utts = str(r["utterances"] or "")
            wall, peak = f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:.0f}"
            lines.append(f"| {family} | {name}{failed} | {wall} | {peak} | {utts} | {audio} | {rate} | {rtf} |")
    bench = results.get("bench")
    if bench:
        q1, q3 = bench["batch_over_utterance_quartiles"]
        lines += [
            "",
            f"Batch {bench['batch_size']}, {bench['utterances']} utterances ({bench['audio_seconds']:.1f} s), "
            f"{bench['threads']} thread(s):",
            "",
            "| rule | mean depth | frame-weighted depth | s per round | utterances/s | RTF | speedup vs full |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in bench["rules"].items():
            lines.append(
                f"| {name} | {r['mean_depth']:.2f} | {r['frame_weighted_depth']:.2f} | {r['seconds']:.2f} | "
                f"{r['utterances_per_s']:.2f} | {r['rtf']:.3f} | {r['speedup']:.2f}x |"
            )
        lines += [
            "",
            f"batch rule time / per-utterance time: {bench['batch_over_utterance']:.2f} (quartiles {q1:.2f} to "
            f"{q3:.2f}); predicted from the frame-weighted depths alone: {bench['ideal']:.2f}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/base_size"))
    parser.add_argument("--families", default="hubert,wavlm", help="comma-separated: hubert, wavlm")
    parser.add_argument("--steps", type=int, default=20, help="train-heads optimiser steps")
    parser.add_argument("--bench-repeats", type=int, default=2, help="rounds of the batch-rule bench")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the bench")
    parser.add_argument("--stages", default=",".join(Settings.stages), help="comma-separated subset")
    parser.add_argument("--minisuperb-tasks", default=Settings.minisuperb_tasks, help="e.g. asr,sid,se,ss")
    parser.add_argument("--device", default="cpu", help="every stage's device, e.g. cuda")
    parser.add_argument("--tiny", action="store_true", help="a test-sized model instead of Base (minutes)")
    args = parser.parse_args(argv)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    chosen = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    for what, given, known in [("--families", families, ("hubert", "wavlm")), ("--stages", chosen, Settings.stages)]:
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            parser.error(f"{what}: choose from {', '.join(known)}, got {', '.join(unknown) or 'none'}")
    for option, value in [("--steps", args.steps), ("--bench-repeats", args.bench_repeats)]:
        if value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
    settings = Settings(families, args.tiny, steps=args.steps, bench_repeats=args.bench_repeats, stages=chosen)
    settings.threads, settings.minisuperb_tasks, settings.device = args.threads, args.minisuperb_tasks, args.device
    results = rehearse(args.out, settings)
    print(markdown(results), end="")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
