"""`daisy asr-exits`: DAISY beside supervised early-exit ASR, CER against compute on clean and noisy audio."""

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from daisy.apps.cli import app

PAIRS = {
    ("daisy", "entropy"),
    *((m, s) for m in ("hubert-ee", "wright-scratch", "wright-finetune") for s in ("entropy", "posterior")),
}


METHODS = ("daisy", "hubert-ee", "wright-scratch", "wright-finetune")


@pytest.fixture
def one_thread():
    """The test box's 2 cores are shared: one intra-op thread keeps OpenMP from spinning against other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def quick_env(tmp_path_factory):
    """One synthetic-corpus cache for the module's runs, and one intra-op thread (see `one_thread`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAISY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(before)


def asr_exits(*args: str):
    return CliRunner().invoke(app, ["asr-exits", "--quick", *args])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, quick_env):
    """One quick run of every system (a minute or two), shared by the tests that read or resume it:
    its --out folder, printed output and results.json text."""
    out = tmp_path_factory.mktemp("asr-exits") / "out"
    result = asr_exits("--out", str(out))
    assert result.exit_code == 0, result.output
    return out, result.output, (out / "results.json").read_text()


def test_quick_run_gives_every_method_a_curve_clean_and_noisy(first_run):
    out, output, text = first_run
    summary = json.loads(text)
    points = summary["points"]
    assert {(p["method"], p["selection"]) for p in points} == PAIRS
    for pair in PAIRS:
        mine = [p for p in points if (p["method"], p["selection"]) == pair]
        clean = [p for p in mine if p["snr"] == "clean"]
        noisy = [p for p in mine if p["snr"] != "clean"]
        assert len({p["threshold"] for p in clean}) >= 3, pair
        assert noisy and {p["noise"] for p in noisy} == {"white", "babble"}, pair
        for p in mine:
            assert math.isfinite(p["cer"]) and p["cer"] >= 0, p
            assert 1 <= p["mean_exit"] <= summary["num_layers"] and 0 < p["compute_share"] <= 1, p
            assert set(p) >= {"method", "selection", "snr", "threshold", "mean_exit", "compute_share", "cer"}
        # a higher entropy threshold (or a lower posterior one) never exits later on the same audio
        depths = [p["mean_exit"] for p in sorted(clean, key=lambda p: p["threshold"])]
        assert depths == sorted(depths, reverse=pair[1] == "entropy"), (pair, depths)
    for method in METHODS:
        cost = summary["training"][method]
        assert cost["steps"] > 0 and cost["seconds"] > 0, method
    assert summary["training"]["hubert-ee"]["steps"] == 8 + 4  # fine-tuning, then the branches
    exit_cost = summary["exit_cost"]  # one exit read, as a share of a layer: attention costs more than a linear map
    assert exit_cost["hubert-ee"] > exit_cost["wright-scratch"] == exit_cost["wright-finetune"] > 0
    assert 0 < exit_cost["daisy"] < 1
    assert (out / "results.md").read_text().count("| clean |") == 3 * len(PAIRS)
    assert (out / "cer_vs_compute.png").stat().st_size > 0
    # each system announced as it starts (a log shows where a run is), then kept as a part of its own
    starts = [output.index(f"{m}: started ({i} of 4 to compute)") for i, m in enumerate(METHODS, 1)]
    assert starts == sorted(starts) and "reused" not in output
    for method in METHODS:
        part = json.loads((out / "parts" / f"{method}.json").read_text())
        assert part["points"] == [p for p in points if p["method"] == method]
        assert part["cost"] == summary["training"][method]


def test_a_rerun_with_the_same_settings_reuses_every_part(first_run, monkeypatch):
    import daisy.analysis.asr_exits as ax

    out, _, text = first_run
    parts = {m: (out / "parts" / f"{m}.json").read_bytes() for m in METHODS}

    def refuse(*args, **kwargs):
        raise AssertionError("a system with a current part was trained again")

    monkeypatch.setattr(ax, "train_recipe", refuse)  # the supervised systems
    monkeypatch.setattr(ax, "train_probe", refuse)  # DAISY's probes
    result = asr_exits("--out", str(out))
    assert result.exit_code == 0, result.output
    for method in METHODS:
        assert f"{method}: reused from {out / 'parts' / method}.json" in result.output, result.output
    assert "started" not in result.output
    assert (out / "results.json").read_text() == text
    assert {m: (out / "parts" / f"{m}.json").read_bytes() for m in METHODS} == parts


@pytest.mark.parametrize(
    "change",
    [
        (),  # the same settings, fewer systems: its part is reused
        ("--seed", "1"),
        ("--thresholds", "4"),
        "unreadable part",
    ],
)
def test_only_a_part_made_under_other_settings_is_recomputed(first_run, tmp_path, change):
    out = tmp_path / "out"
    shutil.copytree(first_run[0] / "parts", out / "parts")
    daisy_part = (out / "parts" / "daisy.json").read_bytes()
    path = out / "parts" / "wright-finetune.json"
    before = json.loads(path.read_text())
    reused = change == ()
    if change == "unreadable part":
        path.write_text('{"format": 1, "method": "wright-fine')  # as if cut short by hand or by a full disk
        change = ()
    result = asr_exits("--out", str(out), "--methods", "wright-finetune", *change)
    assert result.exit_code == 0, result.output
    assert (f"wright-finetune: reused from {path}" in result.output) == reused, result.output
    assert ("wright-finetune: started (1 of 1 to compute)" in result.output) != reused, result.output
    after = json.loads(path.read_text())
    summary = json.loads((out / "results.json").read_text())
    assert summary["points"] == after["points"] and summary["training"] == {"wright-finetune": after["cost"]}
    assert (out / "parts" / "daisy.json").read_bytes() == daisy_part  # not asked for: left as it was
    if reused:
        assert after == before
    elif change:  # recomputed under the new settings, and overwritten
        assert after["key"] != before["key"]
        assert after["settings"] != before["settings"]
    else:  # made again under the same settings, whole
        assert after["key"] == before["key"] and after["settings"] == before["settings"]
    if change == ("--thresholds", "4"):
        clean = {p["threshold"] for p in after["points"] if p["snr"] == "clean" and p["selection"] == "entropy"}
        assert len(clean) == 4


def test_part_keys_follow_each_system_s_own_settings_and_inputs():
    import daisy.analysis.asr_exits as ax

    inputs = {"model": "m", "train": {"digest": "a"}, "dev": {"digest": "b"}, "test": {"digest": "c"}}
    base = ax.AsrExitsConfig.quick()

    def keys(config=base, given=inputs):
        return {m: ax.part_key(m, config, given) for m in METHODS}

    first = keys()
    assert len(set(first.values())) == len(METHODS)
    assert keys(replace(base, methods=("daisy",))) == first  # which systems run is no part of any
    everything = [dict(seed=1), dict(thresholds=4), dict(noises=("white",)), dict(snrs=(5.0,))]
    for change in everything:
        assert all(a != b for a, b in zip(keys(replace(base, **change)).values(), first.values())), change
    assert all(a != b for a, b in zip(keys(given={**inputs, "dev": {"digest": "d"}}).values(), first.values()))
    probe = keys(replace(base, probe_size="cpu"))
    assert probe["daisy"] != first["daisy"] and all(probe[m] == first[m] for m in METHODS[1:])
    train = keys(replace(base, train=replace(base.train, steps=9)))
    assert train["daisy"] == first["daisy"] and all(train[m] != first[m] for m in METHODS[1:])


def test_the_input_identity_is_the_model_folder_s_files_and_the_audio_and_texts(tmp_path):
    import numpy as np

    from daisy.analysis.asr_exits import input_identity
    from daisy.apps.demo import shipped_model

    model = shutil.copytree(shipped_model(), tmp_path / "elsewhere")
    wavs = [np.full(400, 0.1 * i, dtype=np.float32) for i in range(1, 4)]
    sets = ((wavs, ["a", "b", "c"]), wavs[:1], (wavs[1:], ["b", "c"]))
    first = input_identity(shipped_model(), *sets)
    assert input_identity(model, *sets) == first  # where the folder lies does not count
    assert input_identity(model, (wavs, ["a", "b", "x"]), *sets[1:]) != first
    assert input_identity(model, sets[0], wavs[1:2], sets[2]) != first
    assert input_identity(model, *sets, babble_pool=wavs) != first
    with open(model / "daisy.json", "a") as fh:
        fh.write(" ")
    assert input_identity(model, *sets)["model"] != first["model"]


def test_a_second_run_into_the_same_out_is_refused_in_one_line(tmp_path, quick_env):
    from daisy.io import run_lock

    out = tmp_path / "out"
    with run_lock(out):
        result = asr_exits("--out", str(out), "--methods", "wright-finetune")
    assert result.exit_code == 1 and "is in use by another daisy run" in result.output, result.output
    assert "Traceback" not in result.output and not (out / "parts").exists()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (("--methods", "daisy,ctc"), "methods must be among daisy, hubert-ee, wright-scratch, wright-finetune"),
        (("--data", "sid=/nowhere"), "asr-exits reads one ASR corpus"),
        (("--thresholds", "2"), "thresholds must be a whole number >= 3"),
        (("--steps", "0"), "--steps must be at least 1"),
        (("--probe-size", "huge"), "probe_size must be one of quick, cpu, paper"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, options, problem):
    result = CliRunner().invoke(app, ["asr-exits", "--quick", "--out", str(tmp_path / "o"), *options])
    assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_librispeech_folder_is_read_for_training_held_out_and_test_audio(tmp_path, one_thread):
    from test_minisuperb_corpora import librispeech_tree

    root = librispeech_tree(tmp_path / "data")
    out = tmp_path / "out"
    args = ["asr-exits", "--quick", "--data", f"asr={root}", "--methods", "wright-finetune", "--steps", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["utterances"] == {"train": 6, "dev": 2, "test": 4}  # train-*, dev-*, test-* subsets
    assert {(p["method"], p["selection"]) for p in summary["points"]} == {
        ("wright-finetune", "entropy"),
        ("wright-finetune", "posterior"),
    }
    assert summary["training"]["wright-finetune"]["steps"] == 1


def test_an_exit_branch_costs_its_multiply_adds_against_a_layer_s():
    from transformers import HubertConfig

    from daisy.compute import exit_branch_share

    base = HubertConfig()  # d 768, FFN 3072: a layer is 4d^2 + 2dF + 2Td multiply-adds per frame at T = 250
    layer = 4 * 768**2 + 2 * 768 * 3072 + 2 * 250 * 768
    assert exit_branch_share(base, 500) == pytest.approx(768 * 500 / layer)  # a DAISY head over C = 500
    attention = 4 * 768**2 + 2 * 250 * 768
    assert exit_branch_share(base, 32, attention=True) == pytest.approx((attention + 768 * 32) / layer)
