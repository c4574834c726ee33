"""How the input level moves exits: the same clean utterances scaled by a range of gains.

DAISY reads how sure the model is of its own answer, so anything the model did not see in pretraining
can look like noise to it, loudness included. This scales held-out clean utterances by each gain (no
clipping: the model takes any float) and prints, per gain, the input's mean RMS level (dBFS), the mean
exit layer and the shares exiting at the first and the last layer, under the model's own policy.
`--speaker-levels N` also prints how far the synthetic speakers' mean levels spread (over N training
utterances), against the spread within a speaker: the level cue a model that sees the level can use.

    python benchmarks/input_level.py [--model DIR] [--audio synthetic|DIR] [--utterances 100]
        [--gains 12,6,0,-6,-12,-20,-30] [--speaker-levels 800] [--json FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="daisy model directory (default: the shipped model)")
    parser.add_argument("--audio", default="synthetic", help="'synthetic' (its test split) or a folder of audio")
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--gains", default="12,6,0,-6,-12,-20,-30", help="gains in dB, comma-separated")
    parser.add_argument(
        "--speaker-levels",
        type=int,
        default=0,
        help="also, over this many synthetic training utterances: how far the speakers' mean levels spread",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()

    from daisy.analysis.input_levels import exits_at_gains, markdown_table, speaker_levels
    from daisy.apps.demo import shipped_model
    from daisy.data.sources import load_all, utterances
    from daisy.io import write_json
    from daisy.model import EarlyExitHubert

    model = EarlyExitHubert.from_pretrained(args.model or shipped_model())
    utts = utterances(args.audio, "test" if args.audio == "synthetic" else None)[: args.utterances]
    wavs = load_all(utts, model.backbone.min_samples)
    rows = exits_at_gains(model, wavs, args.gains.split(","))
    print(f"{len(wavs)} utterances, policy {model.policy.to_dict()}")
    print("\n".join(markdown_table(rows)))
    result = {"model": str(args.model or "shipped"), "utterances": len(wavs), "rows": rows}
    if args.speaker_levels:
        train = utterances("synthetic", "train")[: args.speaker_levels]
        result["speaker_levels"] = speaker_levels(load_all(train), [u.speaker for u in train])
        print(f"speaker levels over {len(train)} training utterances: {result['speaker_levels']}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
