"""Pretraining and head training: learning, exact resume, DDP, and the model directories they write."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from daisy.analysis.teacher_report import masked_prediction
from daisy.data.corpus import load_manifest
from daisy.model import EarlyExitHubert
from daisy.run_state import ResumeRefused, load_state
from daisy.targets import KMeansTargets
from daisy.training.pretrain import MaskedPredictionModel, PretrainConfig, _batch, pretrain
from daisy.training.pretrain_state import check_resume, export_checkpoint, load_exported
from daisy.training.train_heads import HeadTrainConfig, prepare_model, train_heads
from daisy.upstream import HubertBackbone
from daisy.upstream.geometry import num_frames


def small_config(**fields):
    config = PretrainConfig.quick()
    config.steps, config.checkpoint_every, config.num_classes, config.batch_size = 6, 3, 12, 4
    for k, v in fields.items():
        setattr(config, k, v)
    return config


def test_interrupted_pretraining_resumes_exactly(tmp_path, quick_corpus):
    utts = load_manifest(quick_corpus, "train")[:30]
    config = small_config(noise_prob=0.5)
    straight = pretrain(utts, tmp_path / "a", config)
    assert pretrain(utts, tmp_path / "b", config, stop_after=3) is None  # "killed" after 3 steps
    resumed = pretrain(utts, tmp_path / "b", config)
    (a, a_meta), (b, b_meta) = load_state(tmp_path / "a", "checkpoint"), load_state(tmp_path / "b", "checkpoint")
    assert a_meta["step"] == b_meta["step"] == 6 and a_meta["log"] == b_meta["log"]
    assert a_meta["sched"] == b_meta["sched"] and a_meta["optim"] == b_meta["optim"]
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)  # model and optimiser tensors
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=0, atol=0, msg=name)
    # one state in the folder: the JSON commit file and the one tensor file it names
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint*")) == sorted(
        ["checkpoint.json", b_meta["tensors"]]
    )
    assert (
        {p.name for p in straight.iterdir()}
        == {p.name for p in resumed.iterdir()}
        == {"config.json", "model.safetensors", "preprocessor_config.json", "teacher_head.safetensors"}
        | {"kmeans.safetensors", "pretrain.json"}
    )


class _Planted:
    """What a planted pickle would run when loaded: it leaves a file behind."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_an_old_pickled_checkpoint_is_never_loaded_and_other_audio_is_refused(tmp_path, quick_corpus, caplog):
    utts = load_manifest(quick_corpus, "train")[:30]
    run, marker = tmp_path / "run", tmp_path / "unpickled"
    run.mkdir()
    torch.save({"step": 3, "payload": _Planted(marker)}, run / "checkpoint.pt")  # a reused --out with a planted file
    assert pretrain(utts, run, small_config(), stop_after=2) is None
    assert not marker.exists() and "ignoring" in caplog.text and "checkpoint.pt" in caplog.text
    assert [r["step"] for r in load_state(run, "checkpoint")[1]["log"]] == [1, 2]  # started afresh
    # the state resumes on its own audio only
    with pytest.raises(ResumeRefused, match=r"trained on other audio \(30 utterances, \d+ samples there; 29,"):
        pretrain(utts[:29], run, small_config())
    other = [*utts[:29], load_manifest(quick_corpus, "train")[30]]  # as many utterances, one other
    with pytest.raises(ResumeRefused, match="trained on other audio"):
        pretrain(other, run, small_config())
    heads = tmp_path / "heads"
    heads.mkdir()
    torch.save({"payload": _Planted(marker)}, heads / "heads_checkpoint.pt")
    model = pretrain(utts, run, small_config())
    train_heads(prepare_model(model), [u.load() for u in utts], heads, HeadTrainConfig(steps=1, batch_size=2))
    assert not marker.exists() and "heads_checkpoint.pt" in caplog.text


def test_warm_start_from_an_export_continues_the_runs_step_count(tmp_path, quick_corpus):
    utts = load_manifest(quick_corpus, "train")[:30]
    first = pretrain(utts, tmp_path / "a", small_config())
    a_log = json.loads((tmp_path / "a" / "log.json").read_text())["log"]
    torch.manual_seed(1)
    fresh = MaskedPredictionModel(small_config().resolved(), 12)
    load_exported(fresh, first, small_config().temperature)  # the export's float32 weights, exactly
    trained, _ = load_state(tmp_path / "a", "checkpoint")
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, trained[f"model.{name}"], rtol=0, atol=0, msg=name)

    # a run folder as the shipped run's is kept: config, log, codebook and labels, no state
    run = tmp_path / "run"
    run.mkdir()
    for name in ("log.json", "kmeans.safetensors", "labels.npz"):
        shutil.copy(tmp_path / "a" / name, run / name)
    with pytest.raises(ValueError, match="is at step 6: give --steps above it"):
        pretrain(utts, run, small_config(), init_from=first)
    pretrain(utts, run, small_config(steps=9), init_from=first)
    meta = load_state(run, "checkpoint")[1]
    assert meta["step"] == 9 and meta["log"][:6] == a_log and [r["step"] for r in meta["log"][6:]] == [7, 8, 9]
    assert meta["sched"]["last_epoch"] == 9  # the schedule went on from step 6
    with pytest.raises(ResumeRefused, match="already holds step 9 of this run: resume it without --init-from"):
        pretrain(utts, run, small_config(steps=12), init_from=first)
    exported = export_checkpoint(run, tmp_path / "exported")  # what `daisy ship` starts from
    assert json.loads((exported / "pretrain.json").read_text())["summary"]["steps"] == 9
    assert HubertBackbone.from_pretrained(exported).num_layers == 4

    stale = tmp_path / "stale"  # a log that is not the export's run
    stale.mkdir()
    a_config = json.loads((tmp_path / "a" / "log.json").read_text())["config"]
    (stale / "log.json").write_text(json.dumps({"config": a_config, "log": a_log[:5]}))
    with pytest.raises(ResumeRefused, match="was trained for 6 steps, .*records 5"):
        pretrain(utts, stale, small_config(steps=9), init_from=first)
    pretrain(utts, tmp_path / "new", small_config(steps=2), init_from=first)  # no log: a fresh schedule
    assert [r["step"] for r in load_state(tmp_path / "new", "checkpoint")[1]["log"]] == [1, 2]
    with pytest.raises(ValueError, match="does not fit the config's model"):
        pretrain(
            utts,
            tmp_path / "wide",
            small_config(overrides={**small_config().overrides, "hidden_size": 64}),
            init_from=first,
        )


def test_normalized_pretraining_gives_a_model_blind_to_the_level(tmp_path, quick_corpus):
    utts = load_manifest(quick_corpus, "train")[:30]
    wavs = [u.load() for u in utts]
    labels = [np.zeros(num_frames(len(w)), dtype=np.int64) for w in wavs]
    for normalize in (False, True):  # the training forward sees the level only without normalize
        config = small_config(normalize=normalize)
        torch.manual_seed(0)
        model = MaskedPredictionModel(config, 12).eval()
        batch, lengths, labels_t, mask = _batch(0, 0, wavs, labels, config, [])
        losses = [model(batch * gain, lengths, labels_t, mask, 0.5)[0].item() for gain in (1.0, 0.03)]
        assert (losses[0] == pytest.approx(losses[1], abs=1e-4)) == normalize, (normalize, losses)

    model_dir = pretrain(utts, tmp_path / "run", small_config(normalize=True))
    assert json.loads((model_dir / "config.json").read_text())["normalize_waveform"] is True
    backbone = prepare_model(model_dir).backbone  # inference normalises the same way
    wav = torch.from_numpy(wavs[0])[None]  # about -20 dBFS: at these levels the normalisation's epsilon is negligible
    for quiet, loud in zip(backbone.hidden_states(wav / 2), backbone.hidden_states(wav * 4)):
        torch.testing.assert_close(quiet, loud, rtol=1e-4, atol=1e-4)
    with pytest.raises(
        ValueError, match=r"checkpoint.json was trained with other normalize .*stored True, asked False"
    ):
        check_resume(tmp_path / "run", small_config().resolved())
    check_resume(tmp_path / "run", small_config(normalize=True, steps=12).resolved())  # more steps: a resume


def test_iteration_two_labels_come_from_a_layer_of_iteration_one(tmp_path, quick_corpus):
    utts = load_manifest(quick_corpus, "train")[:30]
    wavs = [u.load() for u in utts]
    first = pretrain(utts, tmp_path / "it1", small_config())
    with pytest.raises(ValueError, match="out of range 1..4"):
        small_config(label_model=str(first), label_features="layer:5").resolved()
    second = pretrain(utts, tmp_path / "it2", small_config(label_model=str(first), num_classes=10))

    meta = json.loads((second / "pretrain.json").read_text())
    source = str(first.resolve())
    assert meta["config"]["label_features"] == "layer:2"  # the middle of 4 layers, recorded
    assert meta["labels"] == {"features": "layer:2", "source": source, "num_classes": 10}
    km = KMeansTargets.load(second / "kmeans.safetensors")
    assert (km.features, km.source, km.num_classes) == ("layer:2", source, 10)
    stored = np.load(tmp_path / "it2" / "labels.npz")
    labels = [stored[f"u{i}"] for i in range(len(wavs))]
    assert [len(lab) for lab in labels] == [num_frames(len(w)) for w in wavs]
    assert 1 < len(np.unique(np.concatenate(labels))) <= 10
    states = HubertBackbone.from_pretrained(first).hidden_states(torch.from_numpy(wavs[0])[None])[2][0]
    assert labels[0].tolist() == km.assign(states).tolist()  # batched labelling = one utterance alone

    report = masked_prediction(second, wavs[:4])
    assert 0 <= report["masked_accuracy"] <= 1 and report["chance"] == 0.1
    early = prepare_model(second)
    early.config.targets = "kmeans"  # the codebook kept along labels with the source model's layer 2
    lengths = torch.tensor([len(wavs[0])])
    assert early.teacher_targets(torch.from_numpy(wavs[0])[None], lengths)[0].tolist() == labels[0].tolist()

    with pytest.raises(ValueError, match="holds labels of layer 2 states"):
        pretrain(utts, tmp_path / "it2", small_config())  # resuming with other labels
    first.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="missing"):
        masked_prediction(second, wavs[:2])


def test_pretraining_learns_and_heads_learn_the_teacher(tmp_path, quick_corpus):
    utts = load_manifest(quick_corpus, "train")
    config = PretrainConfig.quick()
    config.steps, config.num_classes = 120, 20
    model_dir = pretrain(utts, tmp_path / "pt", config)
    log = json.loads((tmp_path / "pt" / "log.json").read_text())["log"]
    first, last = np.mean([r["loss"] for r in log[:10]]), np.mean([r["loss"] for r in log[-10:]])
    assert last < first - 0.3, (first, last)

    early = prepare_model(model_dir)
    assert early.config.targets == "teacher" and early.config.num_classes == 20
    wavs = [u.load() for u in utts]
    train_heads(early, wavs, tmp_path / "heads", HeadTrainConfig(steps=40, checkpoint_every=20))
    hlog = json.loads((tmp_path / "heads" / "heads_log.json").read_text())["log"]
    assert np.mean([r["loss"] for r in hlog[-5:]]) < np.mean([r["loss"] for r in hlog[:5]])

    def deep_acc(rows):
        return np.mean([r["layers"][-1]["acc"] for r in rows])

    # the last layer's head learns to recover the teacher's own argmax
    assert deep_acc(hlog[-5:]) > deep_acc(hlog[:5]) + 0.15, (deep_acc(hlog[:5]), deep_acc(hlog[-5:]))
    early.save_pretrained(tmp_path / "daisy")
    reloaded = EarlyExitHubert.from_pretrained(tmp_path / "daisy")
    assert reloaded.teacher is not None and reloaded.config.targets == "teacher"


def test_head_training_resumes_exactly(tmp_path, quick_corpus):
    utts = load_manifest(quick_corpus, "train")[:20]
    wavs = [u.load() for u in utts]
    pretrained = pretrain(utts, tmp_path / "pt", small_config())
    config = HeadTrainConfig(steps=6, checkpoint_every=3, batch_size=2)
    straight = train_heads(prepare_model(pretrained), wavs, tmp_path / "a", config)
    train_heads(prepare_model(pretrained), wavs, tmp_path / "b", config, stop_after=3)
    resumed = train_heads(prepare_model(pretrained), wavs, tmp_path / "b", config)
    for name, value in straight.heads.state_dict().items():
        torch.testing.assert_close(value, resumed.heads.state_dict()[name], rtol=0, atol=0)
    # the checkpoint resumes only with the settings it was trained with
    other = HeadTrainConfig(steps=8, checkpoint_every=3, batch_size=2, noise_prob=0.5)
    with pytest.raises(
        ResumeRefused, match=r"heads_checkpoint.json was trained with other settings.*noise_prob: 0.0 th"
    ):
        train_heads(prepare_model(pretrained), wavs, tmp_path / "b", other)
    with pytest.raises(ResumeRefused, match="head_input: 'ffn' there, 'output' now"):
        train_heads(prepare_model(pretrained, head_input="output"), wavs, tmp_path / "b", config)
    # ... and only on the audio and the model it was trained on
    with pytest.raises(ResumeRefused, match=r"audio: 20 utterances, \d+ samples there; 19, \d+ now"):
        train_heads(prepare_model(pretrained), wavs[:19], tmp_path / "b", config)
    other_model = prepare_model(pretrained)
    with torch.no_grad():
        other_model.backbone.model.encoder.layer_norm.bias.add_(0.01)
    with pytest.raises(ResumeRefused, match="the model: other backbone"):
        train_heads(other_model, wavs, tmp_path / "b", config)


def test_ddp_with_two_processes_keeps_ranks_in_sync(tmp_path, quick_corpus):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        os.path.join(os.path.dirname(__file__), "ddp_worker.py"),
        str(quick_corpus),
        str(tmp_path),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "pretrain" / "model" / "model.safetensors").is_file()
    r0, r1 = (load_file(str(tmp_path / f"heads_rank{r}.safetensors")) for r in (0, 1))
    for name in r0:
        torch.testing.assert_close(r0[name], r1[name], rtol=0, atol=0)  # gradients were averaged
