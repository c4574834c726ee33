"""A shipped-model candidate for real speech: its exit heads trained on further with neural (Kokoro) speech beside
espeak-ng's, its policy calibrated on held-out Kokoro speech. No real recording is trained or calibrated on.

    python benchmarks/real_speech_heads.py --out runs/real_speech_heads       # then, on the result:
    python benchmarks/real_speech.py --model runs/real_speech_heads/model --kokoro 0

Steps (each reused when its output is there: the corpora are cached, head training resumes from its folder):
1. a Kokoro corpus (`CorpusConfig(engine="kokoro")`, seed 1): `--kokoro-train` utterances for the heads,
   `--kokoro-cal` held out for calibration;
2. the shipped model's heads trained on `--steps` more steps on the default espeak-ng corpus' first
   `--espeak-train` training utterances plus the Kokoro ones `--kokoro-repeat` times (the backbone is frozen);
3. the default policy calibrated to `--depth` layers on the held-out Kokoro speech (the shipped rare-exits rule),
   and each task's own budget again there; `--calibration mixed` adds 150 espeak-ng dev utterances.
Needs the `tts` extra (Kokoro).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real_speech_heads"))
    parser.add_argument("--model", default=None, help="daisy model to start from (default: the shipped model)")
    parser.add_argument("--kokoro-train", type=int, default=150)
    parser.add_argument("--kokoro-cal", type=int, default=100)
    parser.add_argument("--kokoro-repeat", type=int, default=2, help="times each Kokoro utterance is in the mix")
    parser.add_argument("--espeak-train", type=int, default=900)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--depth", type=float, default=3.6)
    parser.add_argument(
        "--calibration",
        choices=("kokoro", "mixed"),
        default="kokoro",
        help="calibrate on the held-out Kokoro speech, or on it plus 150 espeak-ng dev utterances",
    )
    args = parser.parse_args()
    for name in ("kokoro_train", "kokoro_cal", "kokoro_repeat", "espeak_train", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    from daisy.apps.demo import shipped_model
    from daisy.calibration import calibrate_model, recalibrate_tasks
    from daisy.data.corpus import CorpusConfig, build_corpus, load_manifest
    from daisy.data.sources import default_cache, load_all
    from daisy.model import EarlyExitHubert
    from daisy.training.train_heads import HeadTrainConfig, train_heads

    cache = default_cache() / "corpus"
    kokoro = CorpusConfig(engine="kokoro", train=0, dev=args.kokoro_train, test=args.kokoro_cal, speakers=12, seed=1)
    kokoro_dir, espeak_dir = build_corpus(cache, kokoro), build_corpus(cache, CorpusConfig())
    espeak = load_all(load_manifest(espeak_dir, "train")[: args.espeak_train])
    heard = load_all(load_manifest(kokoro_dir, "dev"))
    held_out = load_all(load_manifest(kokoro_dir, "test"))

    model = EarlyExitHubert.from_pretrained(args.model or shipped_model())
    train_heads(model, espeak + heard * args.kokoro_repeat, args.out / "heads", HeadTrainConfig(steps=args.steps))
    if args.calibration == "mixed":
        held_out += load_all(load_manifest(espeak_dir, "dev")[:150])
    policy = calibrate_model(model, held_out, args.depth)
    recalibrate_tasks(model, held_out)  # each task's budget again, for the new heads
    model.config.provenance["real_speech_heads"] = {
        "kokoro_corpus": kokoro_dir.name,
        "espeak_corpus": espeak_dir.name,
        **{k: v for k, v in vars(args).items() if k not in ("out", "model")},
    }
    model.save_pretrained(args.out / "model")
    print(f"{args.out / 'model'}: {policy.to_dict()}")


if __name__ == "__main__":
    main()
