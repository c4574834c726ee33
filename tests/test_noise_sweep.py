"""The noise sweep: conditions, exact SNRs, files written, and the monotonicity verdict."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import random_early_exit
from daisy import audio
from daisy.analysis import noise_sweep as ns
from daisy.apps.cli import app


def test_snr_list_parsing():
    assert ns.parse_snrs("clean,20,10,-5") == (True, (20.0, 10.0, -5.0))
    assert ns.parse_snrs("0") == (False, (0.0,))
    with pytest.raises(ValueError, match="--snr takes"):
        ns.parse_snrs("clean,loud")


def test_sweep_runs_every_condition_and_matches_the_live_model(tmp_path):
    model = random_early_exit()
    rng = np.random.default_rng(0)
    wavs = [(0.2 * rng.standard_normal(int(n))).astype(np.float32) for n in (8000, 12000, 6000)]
    config = ns.SweepConfig(noises=("white", "pink"), snrs=(10.0, 0.0))
    rows = ns.sweep(model, wavs, config, include_clean=True)
    assert len(rows) == 3 * (1 + 2 * 2)
    import torch

    with torch.no_grad():  # the clean condition's exits equal the live model's
        live = [int(model(torch.from_numpy(w)[None], output_hidden_states=False).exit_layers) for w in wavs]
    assert [r["exit_layer"] for r in rows if r["noise"] == "clean"] == live
    summary = ns.summarize(rows, model)
    assert {(s["noise"], s["snr"]) for s in summary} == {
        ("clean", None),
        ("white", 10.0),
        ("white", 0.0),
        ("pink", 10.0),
        ("pink", 0.0),
    }
    assert all(sum(s["histogram"]) == 3 for s in summary)
    ns.write_results(rows, summary, model, tmp_path)
    for name in (
        "noise_sweep.json",
        "exit_layers.csv",
        "noise_sweep.md",
        "exit_depth_vs_snr.png",
        "exit_histogram.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "exit_layers.csv").read_text().count("\n") == len(rows) + 1


def test_monotone_verdict():
    def s(noise, snr, mean):
        return {"noise": noise, "snr": snr, "mean_exit": mean}

    rising = [s("clean", None, 2.0), s("white", 20.0, 2.5), s("white", 0.0, 4.0)]
    assert ns.monotone(rising) == {"white": True}
    falling = [s("clean", None, 3.0), s("white", 20.0, 2.5), s("white", 0.0, 4.0)]
    assert ns.monotone(falling) == {"white": False}


def test_cli_on_a_folder_of_wavs_with_a_noise_file(tmp_path):
    model = random_early_exit()
    model.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(1)
    for i in range(5):
        audio.save(tmp_path / "wavs" / f"{i}.wav", 0.2 * rng.standard_normal(8000 + 1000 * i))
    audio.save(tmp_path / "hum.wav", 0.1 * np.sin(np.arange(20000) * 0.1))
    result = CliRunner().invoke(
        app,
        [
            "noise-sweep",
            "--model",
            str(tmp_path / "m"),
            "--audio",
            str(tmp_path / "wavs"),
            "--noise",
            f"white,{tmp_path / 'hum.wav'}",
            "--snr",
            "clean,5",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "noise_sweep.json").read_text())
    assert {row["noise"] for row in data["utterances"]} == {"clean", "white", str(tmp_path / "hum.wav")}
    assert len(data["utterances"]) == 5 * 3
