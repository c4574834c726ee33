"""What glibc's malloc settings do to inference time and memory, measured in one run.

By default glibc hands out large blocks (a batch's activations, the conv front-end's outputs: megabytes
to tens of megabytes) as fresh mmap()s and unmaps them when freed, so every forward pass faults them in
again and the kernel zeroes each page. The `heap` setting starts the process with

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647

(every block from the heap, freed memory kept there). Numerics are untouched; what it costs is memory:
with torch's 64-byte-aligned allocations glibc may not fit a new block into a freed one of the same size,
so the heap can grow. Hence the peak resident memory beside the times.

The setting holds for a whole process, so the two cannot take turns inside one: this script starts worker
processes, alternating `system` and `heap` (and which goes first), each timing the model at full depth
and under its own policy at batch 1 and 16 (best of --rounds passes after a warm-up pass). It prints per
row the median over pairs of heap time / system time with its quartiles, and the page faults and kernel
time of that pass.

    python benchmarks/allocator.py [--model DIR] [--audio synthetic|DIR] [--utterances 32] [--pairs 3]
        [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import typer

SETTINGS = {"system": {}, "heap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}}


def measure(model_dir: str, audio: str, utterances: int, rounds: int) -> dict:
    """Per row: seconds of the best pass, its minor page faults and kernel seconds; and peak memory."""
    import torch

    from daisy import policies
    from daisy.analysis.speed import load_model, speech
    from daisy.data.batching import batches

    model = load_model(model_dir)
    policy = model.policy
    wavs = speech(utterances, audio)
    rows = {}
    for batch_size in (1, 16):
        groups = [(padded, lengths) for _, padded, lengths in batches(wavs, batch_size)]
        for name, chosen in (("full", policies.Fixed(model.num_layers)), ("early exit", policy)):
            model.policy = chosen
            best = {"seconds": float("inf")}
            with torch.inference_mode():
                for round_ in range(rounds + 1):  # round 0 warms up
                    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                    for padded, lengths in groups:
                        model(padded, lengths, output_hidden_states=False)
                    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
                    if round_ and seconds < best["seconds"]:
                        best = {
                            "seconds": seconds,
                            "page_faults": after.ru_minflt - before.ru_minflt,
                            "kernel_s": after.ru_stime - before.ru_stime,
                        }
            rows[f"{name}, batch {batch_size}"] = best
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    malloc_env = {key: os.environ.get(key) for key in SETTINGS["heap"]}
    return {"rows": rows, "peak_mb": peak_mb, "malloc_env": malloc_env}


def run_worker(setting: str, model_dir: str, audio: str, utterances: int, rounds: int) -> dict:
    args = [sys.executable, __file__, "--worker", "--model", model_dir, "--audio", audio]
    args += ["--utterances", str(utterances), "--rounds", str(rounds)]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **SETTINGS[setting]})
    if done.returncode:
        raise RuntimeError(f"{setting} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(runs: dict[str, list[dict]]) -> list[dict]:
    """Per row: heap / system time (median and quartiles over pairs), best times, faults and kernel time."""
    from daisy.analysis.speed import ratio_quartiles

    rows = []
    for name in runs["system"][0]["rows"]:
        per = {s: [run["rows"][name] for run in runs[s]] for s in SETTINGS}
        q1, median, q3 = ratio_quartiles(*([r["seconds"] for r in per[s]] for s in ("heap", "system")))
        row = {"row": name, "ratio": median, "ratio_quartiles": [q1, q3]}
        for s in SETTINGS:
            row[s] = {key: min(r[key] for r in per[s]) for key in ("seconds", "page_faults", "kernel_s")}
        rows.append(row)
    return rows


def main(
    model: Path = typer.Option(None, help="daisy model directory (default: the shipped one)"),
    audio: str = typer.Option("synthetic", help="'synthetic' (its test split) or a folder of audio"),
    utterances: int = typer.Option(32),
    pairs: int = typer.Option(3, help="system/heap worker pairs; ratios are medians over pairs"),
    rounds: int = typer.Option(3, help="timed passes per row in each worker; the fastest counts"),
    json_path: Path = typer.Option(None, "--json", help="also write the figures to this JSON file"),
    worker: bool = typer.Option(False, hidden=True),
) -> None:
    if not sys.platform.startswith("linux"):
        raise SystemExit("these are settings of glibc's malloc: Linux only")
    if model is None:
        from daisy.apps.demo import SHIPPED, shipped_model

        model = shipped_model()
        if model is None:
            raise SystemExit(f"this install has no shipped model ({SHIPPED}); pass --model")
    if worker:
        print(json.dumps(measure(str(model), audio, utterances, rounds)))
        return

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    runs = {setting: [] for setting in SETTINGS}
    for pair in track(range(pairs), description="worker pairs"):
        for setting in list(SETTINGS)[:: 1 if pair % 2 == 0 else -1]:
            runs[setting].append(run_worker(setting, str(model), audio, utterances, rounds))
    rows = compare(runs)
    peak = {s: max(run["peak_mb"] for run in runs[s]) for s in SETTINGS}
    table = Table(
        title=f"glibc malloc, heap-only vs system default ({pairs} pairs, {utterances} utterances); "
        f"peak memory {peak['system']:.0f} MB -> {peak['heap']:.0f} MB"
    )
    for column in ("row", "system", "heap", "heap / system (quartiles)", "page faults per pass", "kernel time"):
        table.add_column(column, justify="right")
    for r in rows:
        system, heap = r["system"], r["heap"]
        q1, q3 = r["ratio_quartiles"]
        table.add_row(
            r["row"],
            f"{system['seconds']:.2f} s",
            f"{heap['seconds']:.2f} s",
            f"{r['ratio']:.2f} ({q1:.2f} to {q3:.2f})",
            f"{system['page_faults']} -> {heap['page_faults']}",
            f"{system['kernel_s']:.2f} s -> {heap['kernel_s']:.2f} s",
        )
    Console(width=160).print(table)
    if json_path:
        from daisy.io import write_json

        write_json(
            json_path,
            {"model": model.name, "audio": audio, "pairs": pairs, "peak_mb": peak, "rows": rows, "runs": runs},
        )


if __name__ == "__main__":
    typer.run(main)
