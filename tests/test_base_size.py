"""benchmarks/base_size.py: each stage a child process whose own peak memory is read; the whole rehearsal on a
test-sized model (--tiny) is slow and marked so."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import random_early_exit

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "base_size.py"
CLIP = SCRIPT.parent / "real_speech" / "clips" / "audio" / "alsa-front_center.flac"


@pytest.fixture(scope="module")
def base_size():
    spec = importlib.util.spec_from_file_location("base_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_size"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_stage_gets_its_own_peak_memory_not_the_largest_so_far(base_size, tmp_path, monkeypatch):
    """RUSAGE_CHILDREN's ru_maxrss is the largest child yet; wait4 gives the one child's. A log path relative to
    the working directory works whatever folder the stage runs in."""
    allocate = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])"
    big = base_size.run_stage(base_size.Stage("big", [sys.executable, "-c", allocate, "300"]), tmp_path / "a", tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    small_stage = base_size.Stage("small", [sys.executable, "-c", allocate, "1"])
    small = base_size.run_stage(small_stage, Path("b"), Path("elsewhere"))
    assert big["returncode"] == small["returncode"] == 0
    assert big["peak_rss_mib"] > 300 and small["peak_rss_mib"] < 100
    failed = base_size.run_stage(
        base_size.Stage("fails", [sys.executable, "-c", "print('no'); raise SystemExit(3)"]), tmp_path / "c", tmp_path
    )
    assert failed["returncode"] == 3 and (tmp_path / "c").read_text() == "no\n"


def test_a_daisy_command_runs_as_a_measured_stage_on_the_tiny_model(base_size, tmp_path):
    random_early_exit().save_pretrained(tmp_path / "model")
    stage = base_size.Stage("exit", base_size.daisy("exit", "--model", str(tmp_path / "model"), "--json", str(CLIP)))
    measured = base_size.run_stage(stage, tmp_path / "exit.log", tmp_path)
    assert measured["returncode"] == 0, (tmp_path / "exit.log").read_text()
    log = (tmp_path / "exit.log").read_text()
    rows = json.loads(log[log.index("[") : log.rindex("]") + 1])
    assert [r["path"].endswith("alsa-front_center.flac") for r in rows] == [True] and rows[0]["num_layers"] == 3
    assert measured["peak_rss_mib"] > 100 and measured["seconds"] > 0  # torch alone takes more than that


def test_the_table_has_a_row_per_stage_and_marks_failures(base_size):
    results = {
        "families": {
            "hubert": {
                "exit": {
                    "seconds": 2.0,
                    "peak_rss_mib": 612.4,
                    "returncode": 0,
                    "utterances": 4,
                    "audio_s": 8.0,
                    "utterances_per_s": 2.0,
                    "rtf": 0.25,
                },
                "minisuperb": {"seconds": 1.0, "peak_rss_mib": 500.0, "returncode": 1, "utterances": 0, "audio_s": 0},
            }
        }
    }
    lines = base_size.markdown(results).splitlines()
    assert lines[2] == "| hubert | exit | 2.0 | 612 | 4 | 8.0 | 2.00 | 0.25 |"
    assert lines[3] == "| hubert | minisuperb (failed, exit 1) | 1.0 | 500 |  |  |  |  |"


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--stages", "exit,train"], "--stages: choose from"),
        (["--families", "bert"], "--families: choose from"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
    ],
)
def test_bad_options_are_refused_in_one_line(base_size, capsys, args, problem):
    with pytest.raises(SystemExit) as caught:
        base_size.main(args)
    assert caught.value.code == 2 and problem in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_rehearsal_runs_on_a_tiny_model(base_size, tmp_path):
    """Every stage of both families, and the batch-16 bench (minutes: each stage starts python and torch)."""
    assert base_size.main(["--tiny", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for family in ("hubert", "wavlm"):
        assert list(results["families"][family]) == [
            s for s in base_size.Settings.stages if family == "hubert" or s != "bench"
        ]
        for name, row in results["families"][family].items():
            assert row["returncode"] == 0 and row["peak_rss_mib"] > 100, (family, name)
            if name not in ("startup", "bench"):
                assert row["utterances"] > 0 and row["rtf"] == pytest.approx(row["seconds"] / row["audio_s"])
    assert results["bench"]["batch_size"] == 16 and set(results["bench"]["rules"]) == {"full", "utterance", "batch"}
    assert "batch rule time / per-utterance time" in (tmp_path / "table.md").read_text()
