"""MiniSUPERB runner end to end on the quick corpus, plus its score formula."""

import json

import pytest
import torch

from daisy import policies
from daisy.downstream.minisuperb import MiniSuperbConfig, markdown, run, score, scored_tasks
from daisy.downstream.tasks import synthetic_tasks


def test_score_normalises_between_mfcc_and_full():
    results = {
        "sid": {
            "mfcc": {"metrics": {"accuracy": 0.2}},
            "full": {"metrics": {"accuracy": 0.8}},
            "daisy": {"metrics": {"accuracy": 0.65}},
        },
        "asr": {
            "mfcc": {"metrics": {"cer": 0.9}},
            "full": {"metrics": {"cer": 0.5}},
            "daisy": {"metrics": {"cer": 0.6}},
        },  # lower is better: still 0..100
    }
    scores = score(results)
    assert scores["full"] == 100.0 and scores["mfcc"] == 0.0
    assert scores["daisy"] == pytest.approx((75.0 + 75.0) / 2)


def test_tasks_where_the_full_model_does_not_beat_mfcc_are_left_out_of_the_score():
    def task(mfcc, full, daisy, name):
        return {
            k: {"metrics": {name: v}, "mean_depth": None, "compute_share": None}
            for k, v in (("mfcc", mfcc), ("full", full), ("daisy", daisy))
        }

    results = {
        "sid": task(0.2, 0.8, 0.65, "accuracy"),
        "ss": task(1.114, 1.108, 1.038, "si_sdri"),  # full below MFCC: 100 * (d - m) / (f - m) = 1267
        "se": task(1.50, 1.51, 1.52, "pesq"),  # a gain under MIN_GAIN: dividing by 0.01 amplifies noise
    }
    assert scored_tasks(results) == ["sid"]
    assert score(results)["daisy"] == pytest.approx(75.0)
    table = markdown(results, score(results))
    assert "score over sid (" in table and "Not in the score: ss, se." in table
    assert (
        scored_tasks({"sid": task(0.2, 0.2, 0.3, "accuracy")}) == []
        and score({"sid": task(0.2, 0.2, 0.3, "accuracy")}) == {}
    )


def test_quick_run_writes_results_for_every_task_and_setting(tmp_path, quick_corpus):
    from conftest import random_early_exit
    from daisy.data.corpus import load_manifest

    model = random_early_exit()
    train, test = load_manifest(quick_corpus, "train")[:24], load_manifest(quick_corpus, "test")[:8]
    dev = [u.load() for u in load_manifest(quick_corpus, "dev")[:16]]
    data = synthetic_tasks(train, test, [u.load() for u in train], [u.load() for u in test])
    summary = run(model, data, dev, tmp_path, MiniSuperbConfig(size="quick"))
    for task in ("asr", "sid", "se", "ss"):
        assert {"mfcc", "full", "daisy", "budget-0.4", "budget-0.8"} <= set(summary["results"][task])
        assert summary["results"][task]["full"]["mean_depth"] == model.num_layers
        assert summary["results"][task]["full"]["compute_share"] == pytest.approx(1.0)
    for name in ("results.json", "results.md", "minisuperb.png"):
        assert (tmp_path / name).stat().st_size > 0
    cached = json.loads((tmp_path / "results" / "sid-full.json").read_text())
    again = run(model, data, dev, tmp_path, MiniSuperbConfig(size="quick"))  # resumed from the cache
    assert again["results"]["sid"]["full"] == cached


def test_a_rerun_with_other_settings_trains_only_the_probes_it_has_not_got(tmp_path, quick_corpus):
    from conftest import random_early_exit
    from daisy.data.corpus import load_manifest

    model = random_early_exit()
    train, test = load_manifest(quick_corpus, "train")[:24], load_manifest(quick_corpus, "test")[:8]
    dev = [u.load() for u in load_manifest(quick_corpus, "dev")[:16]]
    data = synthetic_tasks(train, test, [u.load() for u in train], [u.load() for u in test], tasks=("sid",))
    with pytest.raises(ValueError, match=r"fixed layers \[4\] beyond the model's 3 layers"):
        run(model, data, dev, tmp_path, MiniSuperbConfig(tasks=("sid",), size="quick", fixed=(1, 4)))
    assert not any(tmp_path.iterdir())  # refused before any feature was extracted
    first = run(model, data, dev, tmp_path, MiniSuperbConfig(tasks=("sid",), size="quick", budgets=(0.5,), fixed=(1,)))
    assert set(first["results"]["sid"]) == {"mfcc", "full", "daisy", "budget-0.5", "fixed-1"}
    results = tmp_path / "results"
    stamps = {f.name: f.stat().st_mtime_ns for f in results.iterdir()}

    more = MiniSuperbConfig(tasks=("sid",), size="quick", budgets=(0.5, 0.75), fixed=(1, 2))
    again = run(model, data, dev, tmp_path, more)
    assert set(again["results"]["sid"]) == {"mfcc", "full", "daisy", "budget-0.5", "budget-0.75", "fixed-1", "fixed-2"}
    assert {f.name: f.stat().st_mtime_ns for f in results.iterdir() if f.name in stamps} == stamps  # reused
    assert again["results"]["sid"]["fixed-2"]["mean_depth"] == 2.0
    assert again["results"]["sid"]["budget-0.75"]["policy"]["target_depth"] == 2.25

    reseeded = MiniSuperbConfig(tasks=("sid",), size="quick", budgets=(0.5,), fixed=(1,), seed=1)
    run(model, data, dev, tmp_path, reseeded)
    assert all(f.stat().st_mtime_ns != stamps[f.name] for f in results.iterdir() if f.name in stamps)  # retrained

    # a policy saved for the task is DAISY's operating point there: only that probe is trained again
    stamps = {f.name: f.stat().st_mtime_ns for f in results.iterdir()}
    model.set_task_policy("sid", policies.Fixed(layer=2))
    own = run(model, data, dev, tmp_path, reseeded)["results"]["sid"]
    assert own["daisy"]["mean_depth"] == 2.0 and own["daisy"]["policy"] == {"name": "fixed", "layer": 2}
    assert "| sid | daisy (sid's own policy) | accuracy |" in (tmp_path / "results.md").read_text()
    assert not first["results"]["sid"]["daisy"]["task_policy"]
    assert [f.name for f in results.iterdir() if f.stat().st_mtime_ns != stamps[f.name]] == ["sid-daisy.json"]


def test_speaker_id_is_closed_set_only_when_it_is_asked_for(quick_corpus):
    from daisy.data.corpus import load_manifest

    train, test = load_manifest(quick_corpus, "train")[:4], load_manifest(quick_corpus, "test")[:6]  # 4: babble
    train_wavs, test_wavs = [u.load() for u in train], [u.load() for u in test]
    assert {u.speaker for u in test} - {u.speaker for u in train}  # unseen speakers in the test set
    with pytest.raises(ValueError, match=r"never occur in the 4 training utterances \(raise --train\)"):
        synthetic_tasks(train, test, train_wavs, test_wavs)
    data = synthetic_tasks(train, test, train_wavs, test_wavs, tasks=("asr",))
    assert len(data["clean"]["test"].inputs) == 6


def test_feature_cache_is_reused_only_for_the_same_model_and_audio(tmp_path):
    import numpy as np

    from conftest import random_early_exit
    from daisy.downstream.minisuperb import extract

    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (6000, 9000)]
    model, cache = random_early_exit(), tmp_path / "f.pt"
    first = extract(model, wavs, cache)
    stamp = cache.stat().st_mtime_ns
    assert extract(model, wavs, cache).key == first.key and cache.stat().st_mtime_ns == stamp  # reused
    shorter = extract(model, [wavs[0][:4000], wavs[1]], cache)  # other audio: extracted again
    assert shorter.key != first.key and shorter.states[0].shape[1] < first.states[0].shape[1]
    other = extract(random_early_exit(seed=1), [wavs[0][:4000], wavs[1]], cache)  # other model: again
    assert other.key != shorter.key and not torch.equal(other.states[1][1], shorter.states[1][1])


def test_config_is_checked_when_made():
    for fields, problem in [
        ({"tasks": ()}, "tasks must be among asr, sid, se, ss, got ''"),
        ({"tasks": ("asr", "mt")}, "got 'asr,mt'"),
        ({"size": "huge"}, "size must be one of quick, cpu, paper"),
        ({"featurizer": "bogus"}, "featurizer must be one of static, dynamic, per_depth"),
        ({"budgets": (0.5, 1.5)}, r"in \(0, 1\]; got \(0.5, 1.5\)"),
        ({"fixed": (0, 2)}, r"fixed layers are 1-based; got \(0, 2\)"),
    ]:
        with pytest.raises(ValueError, match=problem):
            MiniSuperbConfig(**fields)
    assert MiniSuperbConfig(tasks=["sid"]).tasks == ("sid",)
