"""`daisy demo --quick` end to end: every stage runs, the report lands, a rerun reuses the outputs."""

import json
from pathlib import Path

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
