"""MiniSUPERB runner end to end on the quick corpus, plus its score formula."""

import json

import pytest
import torch

from daisy import policies
from daisy.downstream import metrics
from daisy.downstream.minisuperb import MiniSuperbConfig, markdown, run, score, scored_tasks
from daisy.downstream.probes import SIDProbe
from daisy.downstream.tasks import Task, TaskData, synthetic_tasks


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
    model, cache = random_early_exit(), tmp_path / "f"
    first = extract(model, wavs, cache)
    stamp = (tmp_path / "f.json").stat().st_mtime_ns
    assert extract(model, wavs, cache).key == first.key and (tmp_path / "f.json").stat().st_mtime_ns == stamp
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


# --- tasks are registered objects ---------------------------------------------------------------------------------


GAINS = (0.1, 1.0)


def played(wavs):
    """Utterances at alternating gains, the gain's index as the label."""
    return TaskData([w * GAINS[i % 2] for i, w in enumerate(wavs)], speakers=[i % 2 for i in range(len(wavs))])


class GainTask(Task):
    """A task made in the test, whole in one class as a task module holds it: at which gain an utterance plays."""

    name = "gain"
    primary = ("accuracy", True)
    steps = {"quick": 5, "cpu": 50, "paper": 500}
    synthetic_source = "gain"
    corpus = "gainbank"

    def synthetic(self, corpus):
        return {"train": played(corpus.train_wavs), "test": played(corpus.test_wavs)}

    def read_corpus(self, root, pick, load):  # a folder of wavs per split
        return {s: played([load(p) for p in pick(sorted((root / s).glob("*.wav")), s)]) for s in ("train", "test")}

    def head(self, dim, size, train):
        return SIDProbe(dim, len(GAINS))

    def loss(self, head, features, frames, idx, data):
        return head.loss(features, frames, torch.tensor([data.speakers[i] for i in idx]))

    def evaluate(self, head, batches, data):
        preds, truth = [], []
        for features, frames, idx in batches:
            preds += head.predict(features, frames).tolist()
            truth += [data.speakers[i] for i in idx]
        return {"accuracy": metrics.accuracy(preds, truth)}


@pytest.fixture
def gain_task(monkeypatch):
    """The Gain task registered for one test only (the registry is restored afterwards)."""
    from daisy.downstream.tasks import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return base.register(GainTask)


def test_a_task_is_one_registered_class_and_the_runner_serves_it(gain_task, tmp_path, quick_corpus):
    from conftest import random_early_exit
    from daisy import audio
    from daisy.data.corpus import load_manifest
    from daisy.downstream.tasks import corpus_tasks, names, parse_corpus_paths

    assert names() == ("asr", "sid", "se", "ss", "gain")
    train, test = load_manifest(quick_corpus, "train")[:8], load_manifest(quick_corpus, "test")[:4]
    dev = [u.load() for u in load_manifest(quick_corpus, "dev")[:4]]
    data = synthetic_tasks(train, test, [u.load() for u in train], [u.load() for u in test], tasks=("gain",))
    assert set(data) == {"gain"} and data["gain"]["train"].speakers == [0, 1] * 4  # only the input set it reads
    config = MiniSuperbConfig(tasks=("gain",), size="quick", budgets=(), fixed=(1,))
    summary = run(random_early_exit(), data, dev, tmp_path, config)
    assert set(summary["results"]["gain"]) == {"mfcc", "full", "daisy", "fixed-1"}
    assert 0.0 <= summary["results"]["gain"]["full"]["metrics"]["accuracy"] <= 1.0
    assert "| gain | full | accuracy |" in (tmp_path / "results.md").read_text()
    # its real corpus: a folder of wavs per split, found by task or corpus name
    for split, utts in (("train", train[:4]), ("test", test[:2])):
        for u in utts:
            audio.save(tmp_path / "bank" / split / f"{u.id}.wav", u.load())
    assert parse_corpus_paths(f"gainbank={tmp_path / 'bank'}") == {"gain": tmp_path / "bank"}
    real = corpus_tasks({"gain": tmp_path / "bank"}, train=3, test=2)
    assert real.source == {"gain": "gainbank"} and len(real.data["gainbank"]["train"].inputs) == 3
    assert len(real.dev) == 3  # no dev split: a sample of its training inputs


def test_registering_checks_the_task(gain_task):
    from daisy.downstream.tasks import register

    with pytest.raises(ValueError, match="the name 'gain' is taken; corpus 'gainbank' is another task's"):
        register(gain_task)

    class Sizeless(gain_task):
        name, corpus, steps = "sizeless", "nothing", {"quick": 5}

    with pytest.raises(ValueError, match="task Sizeless: steps must give quick, cpu, paper, got quick"):
        register(Sizeless)


def test_unknown_task_names_are_refused_before_any_work_naming_the_known_ones(tmp_path):
    from daisy.downstream.minisuperb import train_probe
    from daisy.downstream.tasks import corpus_tasks, get, parse_corpus_paths

    known = "asr, sid, se, ss"
    with pytest.raises(ValueError, match=f"unknown task 'mt': expected one of {known}"):
        get("mt")
    with pytest.raises(ValueError, match=f"tasks must be among {known}, got 'sid,mt'"):
        MiniSuperbConfig(tasks=("sid", "mt"))
    with pytest.raises(ValueError, match=f"unknown task\\(s\\) mt: expected among {known}"):
        corpus_tasks({"mt": tmp_path}, train=1, test=1)
    with pytest.raises(ValueError, match=f"KEY among {known} or librispeech, voxceleb1, voicebank, libri2mix"):
        parse_corpus_paths(f"mt={tmp_path}")
    with pytest.raises(ValueError, match="unknown task 'mt'"):
        synthetic_tasks([], [], [], [], tasks=("mt",))
    with pytest.raises(ValueError, match="unknown task 'mt'"):
        train_probe("mt", None, None, None, MiniSuperbConfig(size="quick"))


# --- any policy: the features keep every score the trace gives --------------------------------------------------


def test_a_confidence_policy_runs_minisuperb_from_the_cli(tmp_path, quick_corpus, monkeypatch):
    from typer.testing import CliRunner

    from conftest import random_early_exit
    from daisy.apps.cli import app

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "corpus").symlink_to(quick_corpus.parent)  # `--quick` reads the session's corpus
    monkeypatch.setenv("DAISY_CACHE", str(tmp_path / "cache"))
    model = random_early_exit()
    model.policy = policies.Confidence(threshold=0.6)
    model.save_pretrained(tmp_path / "model")
    args = ["minisuperb", "--model", str(tmp_path / "model"), "--quick", "--tasks", "sid", "--size", "quick"]
    result = CliRunner().invoke(
        app, [*args, "--train", "24", "--test", "8", "--budgets", "0.5", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    daisy = json.loads((tmp_path / "o" / "results.json").read_text())["results"]["sid"]["daisy"]
    assert daisy["policy"] == {"name": "confidence", "threshold": 0.6, "min_layer": 1}
    from daisy import run_state

    tensors, _ = run_state.load_state(tmp_path / "o" / "features", "clean-test")
    stored = run_state.unprefixed("score.", tensors)
    assert {"entropy", "confidence"} <= set(stored)
    exits = policies.Confidence(threshold=0.6).exit_layers(stored)
    assert daisy["mean_depth"] == pytest.approx(exits.float().mean().item())
    assert "probe sid / daisy" in result.output  # progress lines, as the output is not a terminal


# --- agreement with the full model's answer, per setting -------------------------------------------------------


def test_each_setting_reports_its_exits_agreement_and_an_old_cache_without_it_is_made_again(
    tmp_path, quick_corpus, monkeypatch
):
    from conftest import random_early_exit
    from daisy import run_state
    from daisy.calibration import exit_agreement, trace_scores
    from daisy.data.corpus import load_manifest
    from daisy.downstream import minisuperb
    from daisy.targets import TeacherHead

    model = random_early_exit()  # a teacher-target model without its teacher head gives no answer
    train, test = load_manifest(quick_corpus, "train")[:24], load_manifest(quick_corpus, "test")[:8]
    dev = [u.load() for u in load_manifest(quick_corpus, "dev")[:16]]
    data = synthetic_tasks(train, test, [u.load() for u in train], [u.load() for u in test], tasks=("sid",))
    config = MiniSuperbConfig(tasks=("sid",), size="quick", budgets=(0.5,), fixed=(1,))
    bare = run(model, data, dev, tmp_path / "bare", config)["results"]["sid"]
    assert all(r["agreement"] is None for r in bare.values())
    rows = (tmp_path / "bare" / "results.md").read_text().splitlines()
    assert rows[0].endswith("| agreement |") and rows[2].endswith("| - |")  # MFCC: no exits
    assert all(row.endswith("| n/a |") for row in rows[3:7])

    torch.manual_seed(1)
    model.teacher = TeacherHead(16, 8, 12)  # now the full model answers
    # a feature cache, and probe records, from before agreement was stored
    monkeypatch.setattr(minisuperb, "can_answer", lambda model: False)
    run(model, data, dev, tmp_path / "o", config)
    for record in (tmp_path / "o" / "results").iterdir():
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "agreement"}))
    stamps = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "o" / "results").iterdir()}
    monkeypatch.undo()
    results = run(model, data, dev, tmp_path / "o", config)["results"]["sid"]
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "o" / "results").iterdir()} == stamps  # probes reused
    tensors, _ = run_state.load_state(tmp_path / "o" / "features", "clean-test")
    assert "score.agreement" in tensors  # the old cache was extracted again, with the answer's scores

    scores = trace_scores(model, data["clean"]["test"].inputs, agreement=True)
    for setting, r in results.items():
        if setting == "mfcc":
            assert r["agreement"] is None
            continue
        exits = policies.policy_from_dict(r["policy"]).exit_layers(scores)
        want = exit_agreement(scores["agreement"], exits).mean().item()
        assert r["agreement"] == pytest.approx(want, abs=1e-4) and 0.0 <= r["agreement"] <= 1.0, setting
    assert results["full"]["agreement"] == 1.0  # the full model gives its own answer
    assert results["fixed-1"]["agreement"] < 1.0
    fixed = next(row for row in (tmp_path / "o" / "results.md").read_text().splitlines() if "| fixed-1 |" in row)
    assert fixed.endswith(
        f"| 1.00 | {results['fixed-1']['compute_share']:.2f} | {results['fixed-1']['agreement']:.3f} |"
    )
    stored = json.loads((tmp_path / "o" / "results.json").read_text())["results"]["sid"]
    assert {s: r["agreement"] for s, r in stored.items()} == {s: r["agreement"] for s, r in results.items()}
