"""`daisy minisuperb` under torchrun: two processes (gloo, CPU) share the feature extraction and rank 0 writes
the same cache and results as one process does."""

import json
import os
import socket
import subprocess
import sys

import torch

from conftest import random_early_exit
from daisy import run_state
from daisy.targets import TeacherHead


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_extract_the_same_features_and_results_as_one(tmp_path, quick_corpus):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "corpus").symlink_to(quick_corpus.parent)  # `--quick` reads the session's corpus
    model = random_early_exit()
    model.teacher = TeacherHead(model.backbone.hidden_size, 8, 12)  # an answer of its own: agreement is scored
    model.save_pretrained(tmp_path / "model")
    env = dict(os.environ, OMP_NUM_THREADS="1", DAISY_CACHE=str(tmp_path / "cache"))
    args = ["-m", "daisy.apps.cli", "minisuperb", "--model", str(tmp_path / "model"), "--quick", "--tasks", "sid"]
    args += ["--size", "quick", "--train", "24", "--test", "8", "--budgets", "0.5", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]

    def run(command, out):
        result = subprocess.run([*command, *args, "--out", str(out)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    run([sys.executable], tmp_path / "one")
    shared = run(torchrun, tmp_path / "two")
    # each rank traced every other batch of 8: rank 0 the 1st and 3rd of the 24 training utterances' batches
    assert "extracting clean-train (rank 0's share of 2): 16/16" in shared
    assert shared.count("results in") == 1  # rank 0 alone trains the probes and reports
    for name in ("clean-train", "clean-test", "dev"):
        (one, one_meta), (two, two_meta) = (
            run_state.load_state(tmp_path / o / "features", name) for o in ("one", "two")
        )
        assert one_meta["key"] == two_meta["key"] and one.keys() == two.keys()
        # clean-test: 8 utterances, one batch, so rank 1 had none to trace
        assert "score.agreement" in one and sum(k.startswith("state.") for k in one) >= 8
        for key, value in one.items():  # the same batches as one process traces: the same numbers, in the same order
            torch.testing.assert_close(two[key], value, rtol=0, atol=0, msg=f"{name}: {key}")

    def results(out):
        return json.loads((tmp_path / out / "results.json").read_text())["results"]

    assert results("two") == results("one")
    # a rerun finds every feature cached (rank 0 tells the others so) and trains no probe again
    again = run(torchrun, tmp_path / "two")
    assert "extracting" not in again and "probe sid" not in again
    assert results("two") == results("one")
