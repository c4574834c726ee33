"""A corpus read from its files as it is used: the same audio as loaded up front, the same heads trained on it,
with or without DataLoader workers."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_early_exit
from daisy.apps.cli import app
from daisy.data.corpus import load_manifest
from daisy.data.sources import load_all
from daisy.data.streaming import AudioFiles, identity
from daisy.run_state import audio_identity
from daisy.targets import TeacherHead
from daisy.training.train_heads import HeadTrainConfig, train_heads


def assert_same_audio(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_audio_files_decode_what_load_all_holds(quick_corpus):
    utts = load_manifest(quick_corpus, "train")[:10]
    held = load_all(utts)
    files = AudioFiles(utts)
    assert len(files) == 10 and len({len(w) for w in held}) > 1  # utterances of different lengths
    assert_same_audio([files[i] for i in range(10)], held)  # decoded on each access
    assert_same_audio(list(files), held)
    assert_same_audio(list(AudioFiles(utts, workers=2)), held)  # decoded in 2 worker processes, in order
    assert_same_audio(load_all(utts, workers=2), held)
    assert_same_audio(list(files[3:7]), held[3:7])
    assert isinstance(files[3:7], AudioFiles)
    # the same identity as the list's, so a checkpoint of either resumes with the other
    assert identity(files) == audio_identity(held) == identity(held)
    assert audio_identity(held)["digest"] != audio_identity(held[:9])["digest"]


def test_a_bad_worker_count_is_refused(quick_corpus, tmp_path):
    utts = load_manifest(quick_corpus, "train")[:2]
    with pytest.raises(ValueError, match="workers must be a count of processes, 0 or more; got -1"):
        AudioFiles(utts, workers=-1)
    with pytest.raises(ValueError, match="workers must be"):
        load_all(utts, workers=-1)
    with pytest.raises(ValueError, match="workers must be"):
        train_heads(_model(), load_all(utts), tmp_path / "h", HeadTrainConfig(steps=1), workers=-2)
    model = tmp_path / "m"
    _model().save_pretrained(model)
    for command in (["train-heads", "--out", str(tmp_path / "h")], ["minisuperb", "--out", str(tmp_path / "o")]):
        result = CliRunner().invoke(app, [*command, "--model", str(model), "--quick", "--workers", "-1"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.strip() == "error: --workers must be at least 0, got -1"
    assert not (tmp_path / "h").exists() and not (tmp_path / "o").exists()


def _model():
    model = random_early_exit()
    model.teacher = TeacherHead(model.backbone.hidden_size, 8, 12)  # the heads' targets
    return model


def test_heads_trained_from_the_files_equal_those_trained_from_memory(quick_corpus, tmp_path):
    utts = load_manifest(quick_corpus, "train")[:12]
    # noise on half the inputs: babble reads other utterances too, from the files where they are files
    config = HeadTrainConfig(steps=4, batch_size=3, noise_prob=0.5, checkpoint_every=10)
    runs = {
        "memory": (load_all(utts), 0),
        "files": (AudioFiles(utts), 0),
        "files, 2 workers": (AudioFiles(utts), 2),
    }
    heads = {}
    for name, (wavs, workers) in runs.items():
        heads[name] = train_heads(_model(), wavs, tmp_path / name, config, workers=workers).heads.state_dict()
    fresh = _model().heads.state_dict()
    assert any(not torch.equal(fresh[k], heads["memory"][k]) for k in fresh)  # the heads did learn
    for name in ("files", "files, 2 workers"):
        for key, value in heads["memory"].items():
            torch.testing.assert_close(heads[name][key], value, rtol=0, atol=0, msg=f"{name}: {key}")
    # a checkpoint trained from memory resumes from the files (the audio is the same), with the heads it saved
    resumed = train_heads(_model(), AudioFiles(utts), tmp_path / "memory", config).heads.state_dict()
    for key, value in heads["memory"].items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
