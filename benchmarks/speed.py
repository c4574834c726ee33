"""Wall-clock cost of early exit against the full model, measured in one run (see `daisy.bench`).

    python benchmarks/speed.py [--model DIR | --preset base --classes 500] [--audio synthetic|DIR] [--depth 3.0]
        [--utterances 32] [--repeats 5] [--json FILE]

The same as `daisy bench`.
"""

from __future__ import annotations

import argparse

from daisy import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="daisy model directory (default: a random model of --preset)")
    parser.add_argument("--preset", default="tiny", help="without --model: tiny, base or large (random weights)")
    parser.add_argument("--classes", type=int, default=100, help="without --model: head classes C")
    parser.add_argument("--audio", default="synthetic", help="'synthetic' (its test split) or a folder of audio")
    parser.add_argument("--depth", type=float, default=None, help="target mean exit depth (default L / 2)")
    parser.add_argument("--utterances", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    bench.benchmark(
        args.model, args.preset, args.classes, args.audio, args.depth, args.utterances, args.repeats, args.json
    )


if __name__ == "__main__":
    main()
