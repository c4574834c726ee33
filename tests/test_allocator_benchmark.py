"""benchmarks/allocator.py: workers get their malloc settings, and the ratios are the workers' times."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import random_early_exit
from daisy import audio

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "allocator.py"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_workers_alternate_settings_and_ratios_pair_their_times(tmp_path):
    random_early_exit().save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([1.0, 2.5]):
        audio.save(tmp_path / "audio" / f"utt{i}.wav", 0.1 * rng.standard_normal(int(seconds * 16000)))
    out = tmp_path / "allocator.json"
    args = ["--model", str(tmp_path / "model"), "--audio", str(tmp_path / "audio"), "--utterances", "2"]
    args += ["--pairs", "1", "--rounds", "1", "--json", str(out)]
    subprocess.run([sys.executable, str(SCRIPT), *args], check=True)
    result = json.loads(out.read_text())
    (system,), (heap,) = result["runs"]["system"], result["runs"]["heap"]
    assert system["malloc_env"] == {"MALLOC_MMAP_MAX_": None, "MALLOC_TRIM_THRESHOLD_": None}
    assert heap["malloc_env"] == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
    names = [r["row"] for r in result["rows"]]
    assert names == ["full, batch 1", "early exit, batch 1", "full, batch 16", "early exit, batch 16"]
    for row in result["rows"]:
        seconds = {s: run["rows"][row["row"]]["seconds"] for s, run in (("system", system), ("heap", heap))}
        assert row["ratio"] == pytest.approx(seconds["heap"] / seconds["system"])
        assert row["ratio_quartiles"] == pytest.approx([row["ratio"]] * 2)
    assert result["peak_mb"]["heap"] > 0 and result["peak_mb"]["system"] > 0
