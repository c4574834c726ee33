"""Wall-clock cost of early exit against the full model, measured in one run (see `daisy.analysis.speed`).

    python benchmarks/speed.py [--model DIR | --preset base --classes 500] [--audio synthetic|DIR] [--depth 3.0]
        [--utterances 32] [--repeats 5] [--json FILE]

The same as `daisy bench` (its options and help: `python benchmarks/speed.py --help`).
"""

from __future__ import annotations

import sys

from daisy.apps.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
