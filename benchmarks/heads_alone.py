"""What the exit heads cost inside the live forward against the same head calls replayed alone.

At batch 1 on a small model each head call is short, and part of what it costs inside the forward is
the state the layer before it leaves (caches, idle threads), not its own work. This runs every
utterance alone at full depth with every head scored (the heads-overhead setting of `daisy bench`),
records each head call's time and inputs, then replays the same calls back to back, warm, and prints
both totals as a share of the rest of the forward. The replayed share is what the heads' own work
costs; the difference is what interleaving them with the layers adds. The calls are replayed once
more with torch's intra-op threads set to 1 around each call: whether the heads would gain by running
their small kernels on one thread while the layers keep theirs.

    python benchmarks/heads_alone.py [--model DIR] [--audio synthetic|DIR] [--utterances 32]
        [--rounds 3] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def measure(model, wavs, rounds: int) -> dict:
    """Per round, the head calls' time inside the forward; then the best round's calls replayed alone."""
    import torch

    from daisy import policies

    calls, score = [], model.heads.scores

    def recorded(*args, **kwargs):
        start = time.perf_counter()
        out = score(*args, **kwargs)
        calls.append((time.perf_counter() - start, args, kwargs))
        return out

    previous = model.policy
    model.policy = policies.Entropy(threshold=-1.0)  # scores every head, exits nobody early
    model.heads.scores = recorded  # shadows the method on this instance until deleted
    try:
        with torch.inference_mode():
            best = None
            for _ in range(rounds):  # the round with the least time outside the heads
                calls.clear()
                start = time.perf_counter()
                for wav in wavs:
                    model(torch.from_numpy(wav)[None], output_hidden_states=False)
                inside = sum(c[0] for c in calls)
                rest = time.perf_counter() - start - inside
                if best is None or rest < best[1]:
                    best = (inside, rest, list(calls))
            inside, rest, kept = best
            alone = replay(score, kept)
            threads = torch.get_num_threads()

            def one_thread(*args, **kwargs):
                torch.set_num_threads(1)
                try:
                    return score(*args, **kwargs)
                finally:
                    torch.set_num_threads(threads)

            alone_one_thread = replay(one_thread, kept)
    finally:
        del model.heads.scores
        model.policy = previous
    return {
        "utterances": len(wavs),
        "head_calls": len(kept),
        "frames_per_call": [args[1].shape[1] for _, args, _ in kept],
        "rest_s": rest,
        "inside_s": inside,
        "alone_s": alone,
        "inside_share": inside / rest,
        "alone_share": alone / rest,
        "alone_one_thread_s": alone_one_thread,
        "alone_one_thread_share": alone_one_thread / rest,
    }


def replay(score, calls: list) -> float:
    """Total time of `calls` run again through `score`, each timed on its second run (warm)."""
    total = 0.0
    for _, args, kwargs in calls:
        score(*args, **kwargs)
        start = time.perf_counter()
        score(*args, **kwargs)
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="daisy model directory (default: the shipped model)")
    parser.add_argument("--audio", default="synthetic", help="'synthetic' (its test split) or a folder of audio")
    parser.add_argument("--utterances", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the utterances; the fastest is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch

    from daisy.analysis.speed import speech
    from daisy.apps.demo import shipped_model
    from daisy.io import write_json
    from daisy.model import EarlyExitHubert

    if args.threads:
        torch.set_num_threads(args.threads)
    model = EarlyExitHubert.from_pretrained(args.model or shipped_model()).eval()
    result = measure(model, speech(args.utterances, args.audio), args.rounds)
    result["threads"] = torch.get_num_threads()
    print(
        f"{result['head_calls']} head calls over {result['utterances']} utterances, batch 1, "
        f"{result['threads']} thread(s): inside the forward {100 * result['inside_share']:+.2f} % of the rest, "
        f"the same calls alone {100 * result['alone_share']:+.2f} %, "
        f"alone on 1 thread each {100 * result['alone_one_thread_share']:+.2f} %"
    )
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
