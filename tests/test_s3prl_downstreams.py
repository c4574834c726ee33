"""s3prl's SUPERB downstreams that read audio files, trained and evaluated through s3prl's runner
(`run_s3prl_downstream`, what `daisy s3prl -- ...` runs) on a tiny daisy model, on CPU, with no FFmpeg.

Each data set is a few short tones and noises written here in that task's own layout (the files, lists
and transcripts s3prl's dataset code reads); each run trains two steps and evaluates dev and test at
step 2. fluent_commands runs by default; the others take about as long each (mostly s3prl importing
every upstream) and are marked slow.
"""

import argparse
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

pytest.importorskip("s3prl", reason="s3prl extra not installed (pip install -e '.[s3prl]')")

from conftest import random_early_exit  # noqa: E402
from daisy.upstream.s3prl_plugin import run_s3prl_downstream  # noqa: E402

RUNNER = """runner: {{total_steps: 2, gradient_clipping: 1, gradient_accumulate_steps: 1, log_step: 1,
         eval_step: 2, save_step: 2, max_keep: 1, eval_dataloaders: {evals}}}
optimizer: {{name: TorchOptim, torch_optim_name: Adam, lr: 1.0e-3}}
"""
UTTERANCE_PROBE = "{projector_dim: 8, select: UtteranceLevel, UtteranceLevel: {pooling: MeanPooling}}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("daisy") / "model"
    random_early_exit().save_pretrained(path)
    return path


def write_wav(path, seed: int, seconds: float = 0.5, rate: int = 16000, channels: int = 1, fmt: str = "WAV"):
    """A tone (its pitch set by `seed`) in a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.02 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.stack([wav] * channels, axis=1), rate, subtype="PCM_16", format=fmt)
    return path


def run(tmp_path, downstream: str, config: str, model_dir, *extra: str) -> tuple:
    """Train `downstream` for two steps (evaluating at step 2); returns (expdir, the checkpoint)."""
    (tmp_path / "config.yaml").write_text(config)
    expdir = tmp_path / "exp"
    args = ["-m", "train", "-d", downstream, "-c", str(tmp_path / "config.yaml"), "-u", "daisy_hubert"]
    args += ["-k", str(model_dir), "--device", "cpu", "-p", str(expdir), *extra]
    assert run_s3prl_downstream(args) == 0
    with torch.serialization.safe_globals([argparse.Namespace]):  # the runner's own Args, as it reloads them
        states = torch.load(expdir / "states-2.ckpt", weights_only=True)
    assert states["Step"] == 2 and states["Args"].downstream == downstream
    assert states["Featurizer"]["weights"].abs().sum() > 0  # the featurizer trained on our states
    return expdir, states


def test_fluent_commands(tmp_path, model_dir, capfd):
    """Intent classification (action, object, location) from `data/{train,valid,test}_data.csv`; audio read
    with torchaudio.load, which here has no torchcodec: soundfile reads it. With `-f`: the upstream
    fine-tunes too (exits decided in eval mode, the training pass with dropout and gradients)."""
    root = tmp_path / "fluent_speech_commands_dataset"
    header = "path,speakerId,transcription,action,object,location\n"
    intents = [("activate", "lights", "kitchen"), ("deactivate", "music", "none")]
    rows = {"train": [], "valid": [], "test": []}
    for i, split in enumerate(["train", "train", "train", "train", "valid", "valid", "test", "test"]):
        action, obj, location = intents[i % 2]
        path = f"wavs/speakers/spk{i % 3}/utt{i}.wav"
        write_wav(root / path, seed=i % 2)
        rows[split].append(f"{path},spk{i % 3},{action} {obj} {location},{action},{obj},{location}\n")
    (root / "data").mkdir()
    for split, lines in rows.items():
        (root / "data" / f"{split}_data.csv").write_text(header + "".join(lines))
    config = RUNNER.format(evals="[dev, test]") + (
        "downstream_expert:\n"
        f"  datarc: {{file_path: {root}, num_workers: 0, train_batch_size: 2, eval_batch_size: 2}}\n"
        f"  modelrc: {UTTERANCE_PROBE}\n"
    )
    expdir, states = run(tmp_path, "fluent_commands", config, model_dir, "-f")
    assert states["Downstream"]["projector.weight"].shape == (8, 16)  # our hidden size in
    before = load_file(model_dir / "model.safetensors")
    name = "encoder.layers.0.feed_forward.output_dense.weight"
    assert not torch.allclose(states["Upstream"][f"model.backbone.model.{name}"], before[name])  # fine-tuned
    predicted = (expdir / "test_predict.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in predicted) == ["utt6", "utt7"]
    assert all(line.split(",")[1] in ("activate", "deactivate") for line in predicted)
    assert "test acc:" in capfd.readouterr().out


def speech_commands_split(name: str) -> str:
    """The Speech Commands rule (its README; s3prl's `split_dataset`): a hash of the speaker part."""
    speaker = re.sub(r"_nohash_.*$", "", name)
    share = (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))
    return "valid" if share < 10 else "test" if share < 20 else "train"


@pytest.mark.slow
def test_speech_commands(tmp_path, model_dir, capfd):
    """Keyword spotting over `<word>/<speaker>_nohash_<n>.wav` folders, read through
    torchaudio.sox_effects.apply_effects_file (channels 1, rate 16000, gain -3), which torchaudio >= 2.9
    no longer has. The test files are 8 kHz stereo, so the effects have work to do."""
    train, test = tmp_path / "speech_commands" / "train", tmp_path / "speech_commands" / "test"
    names = {"train": [], "valid": []}
    for i in range(200):  # speakers until two train and one valid name
        split = speech_commands_split(f"{i:08x}_nohash_0.wav")
        if split in names and len(names[split]) < (2 if split == "train" else 1):
            names[split].append(f"{i:08x}_nohash_0.wav")
    for seed, word in enumerate(["yes", "no"]):
        for name in names["train"] + names["valid"]:
            write_wav(train / word / name, seed, seconds=1.0)
        write_wav(test / word / f"test{seed}_nohash_0.wav", seed, seconds=1.0, rate=8000, channels=2)
    write_wav(train / "_background_noise_" / "noise.wav", seed=5, seconds=1.5)  # the _silence_ class
    config = RUNNER.format(evals="[dev, test]") + (
        "downstream_expert:\n"
        f"  datarc: {{speech_commands_root: {train}, speech_commands_test_root: {test}, num_workers: 0,"
        " batch_size: 2}\n"
        f"  modelrc: {UTTERANCE_PROBE}\n"
    )
    expdir, _ = run(tmp_path, "speech_commands", config, model_dir)
    truth = dict(line.split() for line in (expdir / "test_truth.txt").read_text().splitlines())
    assert truth == {"yes-test0_nohash_0.wav": "yes", "no-test1_nohash_0.wav": "no"}
    dev = {line.split()[0] for line in (expdir / "dev_predict.txt").read_text().splitlines()}
    assert dev <= {f"yes-{names['valid'][0]}", f"no-{names['valid'][0]}", "_background_noise_-noise.wav"}
    assert "test acc:" in capfd.readouterr().out


@pytest.mark.slow
def test_voxceleb1_speaker_id(tmp_path, model_dir, capfd):
    """Speaker identification: `<split>/wav/id1000N/<video>/<n>.wav` and an `iden_split.txt`-style list
    (1 train, 2 dev, 3 test). s3prl caches the file lists in its package folder; here they go to the
    expdir, are read back safely by `-m evaluate -e`, and nothing is written under site-packages."""
    from s3prl.downstream import voxceleb1

    package_cache = Path(voxceleb1.__file__).parent / ".cache"
    before = sorted(package_cache.rglob("*")) if package_cache.exists() else []
    root = tmp_path / "VoxCeleb1"
    lines = []
    for i, (split, speaker) in enumerate([(1, 1), (1, 2), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]):
        relative = f"id1000{speaker}/video{i}/0000{i}.wav"
        write_wav(root / ("test" if split == 3 else "dev") / "wav" / relative, seed=speaker, seconds=0.6)
        lines.append(f"{split} {relative}\n")
    (tmp_path / "iden_split.txt").write_text("".join(lines))
    config = RUNNER.format(evals="[dev, test]") + (
        "downstream_expert:\n"
        f"  datarc: {{file_path: {root}, meta_data: {tmp_path / 'iden_split.txt'}, num_workers: 0,"
        " train_batch_size: 2, eval_batch_size: 1, max_timestep: 8000}\n"
        f"  modelrc: {UTTERANCE_PROBE}\n"
    )
    expdir, _ = run(tmp_path, "voxceleb1", config, model_dir)
    assert sorted(p.name for p in (expdir / "voxceleb1_cache").iterdir()) == ["dev.pkl", "test.pkl", "train.pkl"]
    after = sorted(package_cache.rglob("*")) if package_cache.exists() else []
    assert after == before
    capfd.readouterr()
    evaluate = ["-m", "evaluate", "-e", str(expdir / "states-2.ckpt"), "-t", "test", "--device", "cpu"]
    assert run_s3prl_downstream(evaluate) == 0
    out = capfd.readouterr().out
    assert f"Loading file paths from {expdir / 'voxceleb1_cache' / 'test.pkl'}" in out
    assert "test acc:" in out


@pytest.mark.slow
def test_asr_librispeech(tmp_path, model_dir, capfd):
    """Character CTC on LibriSpeech's layout: `<split>/<speaker>/<chapter>/<s>-<c>-<n>.flac` with a
    `<s>-<c>.trans.txt` per chapter, length tables (`len_for_bucket/<split>.csv`) and a fairseq-style
    character dictionary; FLAC read by soundfile."""
    root, buckets = tmp_path / "LibriSpeech", tmp_path / "len_for_bucket"
    buckets.mkdir()
    texts = ["YES NO", "NO YES", "GO", "NO"]
    for split, speaker in [("train-clean-100", 19), ("dev-clean", 84), ("test-clean", 61)]:
        chapter = root / split / str(speaker) / "198"
        rows, transcripts = ["file_path,length\n"], []
        for n, text in enumerate(texts[:2] if split == "train-clean-100" else texts[2:]):
            name = f"{speaker}-198-{n:04d}"
            write_wav(chapter / f"{name}.flac", seed=n, seconds=0.8, fmt="FLAC")
            rows.append(f"{split}/{speaker}/198/{name}.flac,{12800}\n")
            transcripts.append(f"{name} {text}\n")
        (chapter / f"{speaker}-198.trans.txt").write_text("".join(transcripts))
        (buckets / f"{split}.csv").write_text("".join(rows))
    (tmp_path / "char.dict").write_text("".join(f"{c} 10\n" for c in "|EOSNYG"))
    config = RUNNER.format(evals="[dev-clean, test-clean]") + (
        "downstream_expert:\n"
        "  datarc:\n"
        "    {train: [train-clean-100], dev-clean: [dev-clean], test-clean: [test-clean],"
        f" num_workers: 0, train_batch_size: 2, batch_size: 2, eval_batch_size: 1, libri_root: {root},"
        f" bucket_file: {buckets}, dict_path: {tmp_path / 'char.dict'}, zero_infinity: true,"
        " decoder_args: {decoder_type: None}}\n"
        "  modelrc:\n"
        "    {project_dim: 8, select: RNNs, RNNs: {total_rate: -1, module: LSTM, bidirection: false, dim: [8],"
        " dropout: [0.0], layer_norm: [false], proj: [false], sample_rate: [1], sample_style: concat}}\n"
    )
    expdir, _ = run(tmp_path, "asr", config, model_dir)
    refs = (expdir / "test-clean-noLM-ref.ark").read_text().splitlines()
    assert sorted(refs) == ["61-198-0000 GO", "61-198-0001 NO"]
    out = capfd.readouterr().out
    assert "dev-clean wer:" in out and "test-clean wer:" in out
