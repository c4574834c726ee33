"""How a model's exits and heads read real speech: the real-speech dev set against its synthetic training speech.

Under the model's own policy, the mean exit layer of the real dev set (benchmarks/real_speech/clips) clean and
with white, pink and babble noise (babble from other speakers' dev utterances) at each SNR, overall and by band
(wide: recorded at 16 kHz or more; narrow: 8 kHz originals). For real speech, the espeak-ng corpus and Kokoro
speech (when the `tts` extra is installed): the distribution of each layer's head entropy (the utterance's mean
frame entropy, what the policy reads) and the share of frames where heads l and l+1 agree on their argmax class.
Writes results.json, table.md and real_speech.png to --out and prints the table.

    python benchmarks/real_speech.py [--model DIR] [--real DIR] [--synthetic SOURCE] [--synthetic-n 60]
        [--kokoro 12] [--snrs 20,10,0] [--noises white,pink,babble] [--seed 0] [--out runs/real_speech]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def espeak_speech(source: str, count: int, min_samples: int) -> list[np.ndarray]:
    from daisy.data.sources import load_all, utterances

    return load_all(utterances(source, "test" if source == "synthetic" else None)[:count], min_samples)


def kokoro_speech(count: int, seed: int) -> list[np.ndarray] | None:
    """`count` corpus-grammar sentences spoken by Kokoro voices and mixes; None without the `tts` extra."""
    from daisy.data import kokoro
    from daisy.data.corpus import sentence

    if count <= 0 or not kokoro.available():
        return None
    rng = random.Random(seed)
    voices = kokoro.random_voices(min(count, 8), seed)
    return [kokoro.synthesize(sentence(rng), voices[i % len(voices)]) for i in range(count)]


def measure(args) -> dict:
    from daisy.analysis import real_speech
    from daisy.apps.demo import shipped_model
    from daisy.model import EarlyExitHubert

    model = EarlyExitHubert.from_pretrained(args.model or shipped_model())
    min_samples = model.backbone.min_samples
    synthetic = {"espeak": espeak_speech(args.synthetic, args.synthetic_n, min_samples)}
    wall, cpu = time.perf_counter(), time.process_time()
    spoken = kokoro_speech(args.kokoro, args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if spoken is not None:
        synthetic["kokoro"] = spoken
    snrs = [float(s) for s in args.snrs.split(",")]
    noises = [n for n in args.noises.split(",") if n]
    result = real_speech.measure(model, args.real, synthetic, noises, snrs, args.seed)
    if spoken is not None:
        # audio seconds per second of synthesis (session start included); CPU seconds count every thread, so
        # on a shared machine the wall-clock figure understates what the cores alone would give
        kokoro = result["sources"]["kokoro"]
        kokoro["synthesis"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        kokoro["synthesis"] |= {"x_real_time_wall": round(kokoro["seconds"] / wall, 2)}
        kokoro["synthesis"] |= {"audio_s_per_cpu_s": round(kokoro["seconds"] / cpu, 2)}
    return {"model": str(args.model or "shipped"), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="daisy model directory (default: the shipped model)")
    parser.add_argument("--real", default=str(HERE / "real_speech" / "clips"), help="real-speech dev folder")
    parser.add_argument("--synthetic", default="synthetic", help="'synthetic' (its test split) or a folder")
    parser.add_argument("--synthetic-n", type=int, default=60, help="synthetic utterances to compare with")
    parser.add_argument("--kokoro", type=int, default=12, help="Kokoro utterances to synthesise (0: none)")
    parser.add_argument("--snrs", default="20,10,0", help="SNRs in dB, comma-separated")
    parser.add_argument("--noises", default="white,pink,babble")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/real_speech"))
    args = parser.parse_args()

    from daisy.analysis import real_speech
    from daisy.data.noise import NOISE_TYPES

    for kind in args.noises.split(","):
        if kind not in NOISE_TYPES:
            parser.error(f"unknown noise {kind!r}; choose from {', '.join(NOISE_TYPES)}")
    try:
        [float(s) for s in args.snrs.split(",")]
    except ValueError:
        parser.error(f"--snrs must be numbers in dB, comma-separated; got {args.snrs!r}")
    result = measure(args)
    print("\n".join(real_speech.write(result, args.out)))
    print(f"results, table and plot in {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
