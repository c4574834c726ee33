"""The noise sweep: conditions, exact SNRs, files written, and the monotonicity verdict."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import random_early_exit
from daisy import audio, policies
from daisy.analysis import noise_sweep as ns
from daisy.apps.cli import app


def test_snr_list_parsing():
    assert ns.parse_snrs("clean,20,10,-5") == (True, (20.0, 10.0, -5.0))
    assert ns.parse_snrs("0") == (False, (0.0,))
    with pytest.raises(ValueError, match="--snr takes"):
        ns.parse_snrs("clean,loud")
    for text in ("", " , ", "nan", "clean,inf", "-inf"):  # nothing to sweep, or no level at all
        with pytest.raises(ValueError, match="--snr takes 'clean' and finite numbers in dB"):
            ns.parse_snrs(text)
    with pytest.raises(ValueError, match="SNRs are finite numbers of dB, got nan"):
        ns.SweepConfig(snrs=(10.0, float("nan")))


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


def test_sweep_under_a_confidence_policy_keeps_every_score_and_matches_the_live_model():
    import torch

    from daisy.calibration import trace_scores

    model = random_early_exit()
    rng = np.random.default_rng(2)
    wavs = [(0.2 * rng.standard_normal(int(n))).astype(np.float32) for n in (8000, 12000, 6000, 9000)]
    first = trace_scores(model, wavs)["confidence"][:, 0].sort().values
    model.policy = policies.Confidence(threshold=float(first[1] + first[2]) / 2)  # two exit at layer 1, two not
    rows = ns.sweep(model, wavs, ns.SweepConfig(noises=("white",), snrs=(0.0,)))
    with torch.no_grad():
        live = [int(model(torch.from_numpy(w)[None], output_hidden_states=False).exit_layers) for w in wavs]
    assert [r["exit_layer"] for r in rows if r["noise"] == "clean"] == live and live.count(1) == 2
    assert all(len(r["entropy"]) == len(r["confidence"]) == model.num_layers for r in rows)
    # traced scores are reused only where they hold what the policy reads
    clean = {("clean", None): {"entropy": torch.zeros(4, model.num_layers)}}
    again = ns.sweep(model, wavs, ns.SweepConfig(noises=()), traced=clean)
    assert [r["exit_layer"] for r in again] == live


def test_silent_audio_is_named_not_a_traceback(tmp_path):
    loud, silent = np.ones(4000, np.float32), np.zeros(4000, np.float32)
    with pytest.raises(ValueError, match="silent audio .* cannot be mixed at an SNR: b.wav$"):
        ns.check_audible([loud, silent], ["a.wav", "b.wav"])
    ns.check_audible([loud], ["a.wav"])
    with pytest.raises(ValueError, match="utterance 1 with white noise: cannot mix at an SNR with a silent signal"):
        ns.mixed([loud, silent], "white", 0.0, ns.SweepConfig(noises=("white",)))
    audio.save(tmp_path / "quiet.wav", np.zeros(8000))
    with pytest.raises(ValueError, match=f"--noise {tmp_path / 'quiet.wav'}: the file is silent"):
        ns.parse_noises(f"white,{tmp_path / 'quiet.wav'}")


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


@pytest.fixture
def sweep_files(tmp_path):
    model = random_early_exit()
    model.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(1)
    for i in range(4):
        audio.save(tmp_path / "wavs" / f"{i}.wav", 0.2 * rng.standard_normal(8000 + 1000 * i))
    return tmp_path


def sweep_cli(tmp_path, *options):
    args = ["noise-sweep", "--model", str(tmp_path / "m"), "--audio", str(tmp_path / "wavs"), "--noise", "white"]
    return CliRunner().invoke(app, [*args, *options])


def one_line_error(result, *parts):
    lines = result.output.strip().splitlines()
    return (
        result.exit_code == 1
        and len(lines) == 1
        and all(p in lines[0] for p in parts)
        and "Traceback" not in result.output
    )


def test_cli_refuses_nonsense_snrs_and_an_unwritable_folder_before_any_work(sweep_files, monkeypatch):
    tmp_path = sweep_files
    (tmp_path / "file").write_text("in the way")
    for options, parts in [
        (("--snr", ""), ("--snr takes", "got nothing")),
        (("--snr", "nan"), ("--snr takes", "'nan'")),
        (("--snr", "clean,inf"), ("--snr takes", "'clean,inf'")),
        (("--out", str(tmp_path / "file" / "sweep")), ("--out", "is not a folder")),
    ]:
        result = sweep_cli(tmp_path, *options)
        assert one_line_error(result, *parts), (options, result.output)
    import daisy.apps.cli as cli

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", lambda dir: (_ for _ in ()).throw(PermissionError(13, "denied")))
    result = sweep_cli(tmp_path, "--out", str(tmp_path / "ro" / "sweep"))
    assert one_line_error(result, "--out", str(tmp_path / "ro" / "sweep"), "cannot write in", "denied"), result.output
    assert not (tmp_path / "ro").exists()


def test_cli_names_a_silent_utterance_and_a_silent_noise_file(sweep_files):
    tmp_path = sweep_files
    audio.save(tmp_path / "quiet.wav", np.zeros(8000))
    result = sweep_cli(tmp_path, "--noise", f"white,{tmp_path / 'quiet.wav'}", "--out", str(tmp_path / "o"))
    assert one_line_error(result, "--noise", "quiet.wav", "silent"), result.output
    audio.save(tmp_path / "wavs" / "9.wav", np.zeros(8000))
    result = sweep_cli(tmp_path, "--snr", "clean,5", "--out", str(tmp_path / "o"))
    assert one_line_error(result, "silent audio", str(tmp_path / "wavs" / "9.wav")), result.output
    assert not (tmp_path / "o").exists()
    result = sweep_cli(tmp_path, "--snr", "clean", "--out", str(tmp_path / "o"))  # nothing mixed: silence is fine
    assert result.exit_code == 0, result.output


def test_cli_sweeps_a_model_whose_policy_reads_confidence(sweep_files):
    import json as json_

    tmp_path = sweep_files
    spec = json_.loads((tmp_path / "m" / "daisy.json").read_text())
    spec["policy"] = {"name": "confidence", "threshold": 0.6}
    (tmp_path / "m" / "daisy.json").write_text(json_.dumps(spec))
    result = sweep_cli(tmp_path, "--snr", "clean,5", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    data = json_.loads((tmp_path / "o" / "noise_sweep.json").read_text())
    assert data["policy"] == {"name": "confidence", "threshold": 0.6, "min_layer": 1} and len(data["utterances"]) == 8


def test_sweep_reports_each_conditions_agreement_with_the_full_models_answer(tmp_path):
    import torch

    from daisy.calibration import trace_scores
    from daisy.targets import TeacherHead

    model = random_early_exit()
    rng = np.random.default_rng(3)
    wavs = [(0.2 * rng.standard_normal(int(n))).astype(np.float32) for n in (8000, 12000, 6000)]
    config = ns.SweepConfig(noises=("white",), snrs=(10.0, 0.0))
    bare = ns.summarize(ns.sweep(model, wavs, config), model)  # no teacher head: no answer to agree with
    assert all(s["agreement"] is None for s in bare) and "| n/a |" in ns.markdown_table(bare)
    torch.manual_seed(1)
    model.teacher = TeacherHead(16, 8, 12)
    model.policy = policies.Fixed(layer=1)
    rows = ns.sweep(model, wavs, config)
    head1 = trace_scores(model, wavs, agreement=True)["agreement"][:, 0]
    clean = [r["exit_agreement"] for r in rows if r["noise"] == "clean"]
    assert clean == pytest.approx(head1.tolist(), abs=1e-4) and len(set(clean)) > 1
    summary = ns.summarize(rows, model)
    for s in summary:
        mine = [r["exit_agreement"] for r in rows if (r["noise"], r["snr"]) == (s["noise"], s["snr"])]
        assert s["agreement"] == pytest.approx(np.mean(mine), abs=1e-4)
    model.policy = policies.Fixed(layer=model.num_layers)  # the full model agrees with itself at every SNR
    assert {s["agreement"] for s in ns.summarize(ns.sweep(model, wavs, config), model)} == {1.0}
    ns.write_results(rows, summary, model, tmp_path)
    assert (tmp_path / "agreement_vs_snr.png").stat().st_size > 0
    assert "agreement |" in (tmp_path / "noise_sweep.md").read_text().splitlines()[0]
    data = json.loads((tmp_path / "noise_sweep.json").read_text())
    assert [s["agreement"] for s in data["summary"]] == [s["agreement"] for s in summary]
    assert (tmp_path / "exit_layers.csv").read_text().splitlines()[0].endswith(",agreement")
