"""Which pretraining recipe makes a teacher whose DAISY exits rise with noise, at an equal budget.

Recipes of the shipped model's pretraining (the same tiny preset, corpus, MFCC labels, seed and
number of steps), crossing the options the shipped recipe adds to plain HuBERT:
  plain             HuBERT iteration 1: clean input, loss on masked frames only
  nomask            plus fairseq's pred_nomask_weight 0.5: also predict the unmasked frames (DAISY
                    reads the model's answer on unmasked input)
  denoising         noise or babble mixed into half the inputs (-5..20 dB), clean targets (as WavLM)
  denoising+nomask  both: the shipped recipe
  denoising+nomask+normalize  plus fairseq's normalize: each input at zero mean, unit variance
Each then gets DAISY heads (the same head training), calibrated to the same mean depth on dev, and a
noise sweep on test. Printed per recipe, measured in one run: masked accuracy, classes its own
argmax uses, mean exit depth clean / 10 / 0 dB with the ratio 0 dB over clean (> 1: exits later
on noisy speech, as DAISY claims), and the mean exit of the clean speech 12 dB quieter and louder
(equal to clean: the exits do not depend on the recording level). Each recipe's folder is reused when
its result exists, so an interrupted run resumes.

    python benchmarks/pretraining_recipes.py [--steps 1200] [--recipes a,b] [--out runs/recipes] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from daisy.analysis import noise_sweep as ns
from daisy.analysis.input_levels import exits_at_gains
from daisy.analysis.teacher_report import masked_prediction
from daisy.calibration import calibrate_model
from daisy.data.sources import load_all, utterances
from daisy.io import write_json
from daisy.training.pretrain import PretrainConfig, pretrain
from daisy.training.train_heads import HeadTrainConfig, prepare_model, train_heads

RECIPES = {
    "plain": {"noise_prob": 0.0, "pred_nomask_weight": 0.0},
    "nomask": {"noise_prob": 0.0, "pred_nomask_weight": 0.5},
    "denoising": {"noise_prob": 0.5, "pred_nomask_weight": 0.0},
    "denoising+nomask": {"noise_prob": 0.5, "pred_nomask_weight": 0.5},
    "denoising+nomask+normalize": {"noise_prob": 0.5, "pred_nomask_weight": 0.5, "normalize": True},
}
LEVELS_DB = (-12.0, 12.0)
SHIPPED_RUN = Path("pretraining/hubert-tiny-synth")


def _condition(summary_row: dict) -> str:
    snr = summary_row["snr"]
    return f"{summary_row['noise']}@{'clean' if snr is None else format(snr, 'g')}"


def run_recipe(name: str, options: dict, args, splits: dict, wavs: dict) -> dict:
    folder = args.out / name
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    config = PretrainConfig(steps=args.steps, warmup=min(800, args.steps // 8), num_classes=100, **options)
    if not (folder / "labels.npz").is_file() and (SHIPPED_RUN / "labels.npz").is_file():
        folder.mkdir(parents=True, exist_ok=True)  # the same MFCC labels as the shipped run: skip the k-means
        for f in ("labels.npz", "kmeans.safetensors"):
            shutil.copy(SHIPPED_RUN / f, folder / f)
    model_dir = pretrain(splits["train"], folder, config)
    teacher = masked_prediction(model_dir, wavs["dev"])
    model = prepare_model(model_dir)
    train_heads(model, wavs["train"], folder / "heads", HeadTrainConfig(steps=args.head_steps))
    calibrate_model(model, wavs["dev"], args.depth_fraction * model.num_layers)
    sweep = ns.SweepConfig(noises=("white", "babble"), snrs=(10.0, 0.0))
    rows = ns.sweep(model, wavs["test"][: args.utterances], sweep, True, wavs["train"][:64])
    summary = ns.summarize(rows, model)
    result = {
        "recipe": name,
        "options": options,
        "steps": args.steps,
        "masked_accuracy": teacher["masked_accuracy"],
        "classes_used": teacher["own_argmax_classes_used"],
        "classes": teacher["classes"],
        "mean_exit": {_condition(s): s["mean_exit"] for s in summary},
        "monotone": ns.monotone(summary),
        "clean_exit_at_gain_db": {
            format(r["gain_db"], "+g"): r["mean_exit"]
            for r in exits_at_gains(model, wavs["test"][: args.utterances], LEVELS_DB)
        },
    }
    write_json(result_file, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--head-steps", type=int, default=600)
    parser.add_argument("--utterances", type=int, default=80)
    parser.add_argument("--depth-fraction", type=float, default=0.6)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, of: " + ", ".join(RECIPES))
    parser.add_argument("--out", type=Path, default=Path("runs/recipes"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    chosen = args.recipes.split(",")
    if unknown := sorted(set(chosen) - set(RECIPES)):
        parser.error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")

    splits = {s: utterances("synthetic", s) for s in ("train", "dev", "test")}
    wavs = {"train": load_all(splits["train"]), "dev": load_all(splits["dev"][:150]), "test": load_all(splits["test"])}
    results = [run_recipe(name, RECIPES[name], args, splits, wavs) for name in chosen]

    table = Table(title=f"pretraining recipes at {args.steps} steps each (mean exit layer of 6)")
    for col in ("recipe", "masked acc", "classes used", "clean", "white 10", "white 0", "babble 10", "babble 0"):
        table.add_column(col)
    table.add_column("0 dB / clean (white, babble)")
    table.add_column("clean -12 dB, +12 dB")
    for r in results:
        e = r["mean_exit"]
        table.add_row(
            r["recipe"],
            f"{r['masked_accuracy']:.3f}",
            f"{r['classes_used']}/{r['classes']}",
            *(f"{e[k]:.2f}" for k in ("clean@clean", "white@10", "white@0", "babble@10", "babble@0")),
            f"{e['white@0'] / e['clean@clean']:.2f}, {e['babble@0'] / e['clean@clean']:.2f}",
            ", ".join(f"{v:.2f}" for v in r.get("clean_exit_at_gain_db", {}).values()) or "-",
        )
    Console(width=140).print(table)
    if args.json:
        write_json(args.json, {"steps": args.steps, "head_steps": args.head_steps, "results": results})


if __name__ == "__main__":
    main()
