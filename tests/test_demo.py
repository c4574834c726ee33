"""`daisy demo --quick` end to end: every stage runs, the report lands, a rerun reuses the outputs; a stage
reruns when its settings, the corpus or the model change."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from daisy.apps.demo import DemoConfig, run_demo, shipped_recipe


def test_quick_demo_writes_the_report_and_reruns_cheaply(tmp_path, monkeypatch):
    monkeypatch.setenv("DAISY_CACHE", str(tmp_path / "cache"))
    results = run_demo(tmp_path / "demo", DemoConfig(quick=True))
    report = tmp_path / "demo" / "report"
    for name in (
        "report.md",
        "results.json",
        "noise_sweep/exit_depth_vs_snr.png",
        "noise_sweep/exit_histogram.png",
        "noise_sweep/exit_layers.csv",
        "noise_sweep/asr_cer_vs_snr.png",
    ):
        assert (report / name).stat().st_size > 0, name
    stored = json.loads((report / "results.json").read_text())
    conditions = {(s["noise"], s["snr"]) for s in stored["noise_sweep"]["summary"]}
    assert ("clean", None) in conditions and ("babble", 0.0) in conditions
    assert "Exit depth vs noise" in (report / "report.md").read_text()
    assert "ASR per noise condition" in (report / "report.md").read_text()
    asr = {(r["noise"], r["snr"], r["setting"]) for r in stored["asr_per_snr"]["rows"]}
    assert ("babble", 0.0, "daisy") in asr and ("clean", None, "full") in asr
    # DAISY runs ASR at its own, deeper operating point and the other tasks at the model's default one
    saved = json.loads((tmp_path / "demo" / "model" / "daisy.json").read_text())
    probes = stored["minisuperb"]["results"]
    assert probes["asr"]["daisy"]["policy"] == saved["task_policies"]["asr"]
    assert probes["sid"]["daisy"]["policy"] == saved["policy"] != saved["task_policies"]["asr"]
    layers = json.loads((tmp_path / "demo" / "model" / "config.json").read_text())["num_hidden_layers"]
    depth = saved["provenance"]["task_calibration"]["asr"]["target_depth"]
    assert depth == round(0.95 * layers, 6)
    assert f"their own thresholds, as in DAISY's paper: asr {depth:g} layers" in (report / "report.md").read_text()
    # the shipped model answers (its teacher head): every exit setting reports its agreement with that answer
    for task, by_setting in probes.items():
        assert by_setting["mfcc"]["agreement"] is None and by_setting["full"]["agreement"] == 1.0, task
        assert all(0.0 <= r["agreement"] <= 1.0 for s, r in by_setting.items() if s != "mfcc"), task
        cached = json.loads((report / "minisuperb" / "results" / f"{task}-daisy.json").read_text())
        assert by_setting["daisy"]["agreement"] == cached["agreement"]
    text = (report / "report.md").read_text()
    sid_daisy = probes["sid"]["daisy"]
    assert (
        f"| {sid_daisy['mean_depth']:.2f} | {sid_daisy['compute_share']:.2f} | {sid_daisy['agreement']:.3f} |" in text
    )
    assert all(0.0 <= s["agreement"] <= 1.0 for s in stored["noise_sweep"]["summary"])
    assert "(noise_sweep/agreement_vs_snr.png)" in text and (report / "noise_sweep" / "agreement_vs_snr.png").is_file()
    model_time = (tmp_path / "demo" / "model" / "daisy.json").stat().st_mtime_ns
    again = run_demo(tmp_path / "demo", DemoConfig(quick=True))  # every stage reused
    assert (tmp_path / "demo" / "model" / "daisy.json").stat().st_mtime_ns == model_time
    assert again["noise_sweep"]["summary"] == results["noise_sweep"]["summary"]
    assert again["asr_per_snr"] == results["asr_per_snr"]


def test_pretraining_from_scratch_uses_the_shipped_models_recipe():
    recipe = shipped_recipe()  # from the shipped card; the run folder of record says the same
    run_config = json.loads(Path("pretraining/hubert-tiny-synth/config.json").read_text())
    assert {k: getattr(recipe, k) for k in run_config} == run_config
    assert recipe.pred_nomask_weight == 0.5 and recipe.noise_prob == 0.5  # not HuBERT's defaults


def test_a_stage_reruns_when_its_settings_corpus_or_model_change(tmp_path, monkeypatch):
    from daisy.analysis import noise_sweep as ns
    from daisy.apps import demo

    calls = []

    def sweep(model, wavs, config, *args, **kwargs):
        calls.append((len(wavs), config.snrs))
        return []

    def write_results(rows, summary, model, folder, ids):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "noise_sweep.json").write_text(json.dumps({"summary": []}))

    monkeypatch.setattr(ns, "sweep", sweep)
    monkeypatch.setattr(ns, "write_results", write_results)
    monkeypatch.setattr(ns, "summarize", lambda rows, model: [])
    monkeypatch.setattr("daisy.data.sources.load_all", lambda utts, *args: [np.zeros(400, np.float32)] * len(utts))
    corpus = tmp_path / "synthetic-abc"
    corpus.mkdir()
    (corpus / "manifest.jsonl").write_text('{"id": "000001", "samples": 16000}\n')
    utts = [SimpleNamespace(id=f"{i:06d}") for i in range(200)]
    splits = {"test": utts, "train": utts[:64]}

    def run(config, model_key="m1"):
        demo._noise_sweep(
            tmp_path / "demo", None, model_key, splits, config, demo._Stages(tmp_path / "demo", corpus), {}
        )
        return len(calls)

    assert run(DemoConfig(quick=True)) == 1 and run(DemoConfig(quick=True)) == 1  # the same: reused
    assert run(DemoConfig()) == 2 and calls[-1] == (120, (20.0, 10.0, 5.0, 0.0, -5.0))  # full after quick: reruns
    assert run(DemoConfig()) == 2
    (corpus / "manifest.jsonl").write_text('{"id": "000001", "samples": 16001}\n')  # another corpus (a length)
    assert run(DemoConfig()) == 3
    assert run(DemoConfig(), model_key="m2") == 4  # other heads or base model
    monkeypatch.setattr(demo, "REPORT_FORMAT", demo.REPORT_FORMAT + 1)  # the report gains a figure
    assert run(DemoConfig(), model_key="m2") == 5


def test_a_training_stage_resumes_under_its_key_and_starts_over_under_another(tmp_path):
    from daisy.apps import demo

    corpus = tmp_path / "synthetic-abc"
    corpus.mkdir()
    (corpus / "manifest.jsonl").write_text("{}\n")
    stages, folder = demo._Stages(tmp_path / "demo", corpus), tmp_path / "demo" / "pretrain"
    with pytest.raises(KeyboardInterrupt), stages.making("pretraining", "k1", {"steps": 6}, clear=folder):
        folder.mkdir(parents=True)
        (folder / "checkpoint.json").write_text("{}")
        raise KeyboardInterrupt  # killed after a checkpoint
    assert not stages.reuse("pretraining", "k1", folder)  # not finished ...
    with stages.making("pretraining", "k1", {"steps": 6}, clear=folder):
        assert (folder / "checkpoint.json").is_file()  # ... but resumable under the same key
    assert stages.reuse("pretraining", "k1", folder)
    with stages.making("pretraining", "k2", {"steps": 9}, clear=folder):
        assert not folder.exists()  # other settings: the other run's state goes
    stored = json.loads((tmp_path / "demo" / "stages.json").read_text())
    assert stored["pretraining"] == {"key": "k2", "done": True, "settings": {"steps": 9}}
