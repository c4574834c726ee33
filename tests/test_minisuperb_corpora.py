"""MiniSUPERB on real-corpus layouts: tiny fake LibriSpeech, VoxCeleb1, VoiceBank-DEMAND and Libri2Mix
trees with real audio -> task data (texts, speakers, targets, selection), a quick run and CLI errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from daisy import audio
from daisy.apps.cli import app
from daisy.downstream.minisuperb import MiniSuperbConfig, run
from daisy.downstream.tasks import corpus_tasks, parse_corpus_paths

RATE = 16000


def tone(path: Path, freq: float, seconds: float = 1.0, rate: int = RATE, extra: int = 0) -> np.ndarray:
    """A sine plus a little noise (`extra` samples longer), written as wav or flac by suffix."""
    t = np.arange(int(seconds * rate) + extra) / rate
    wav = (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(int(freq)).standard_normal(len(t))).astype(
        np.float32
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, rate)
    return wav


def librispeech_tree(root: Path) -> Path:
    """3 train speakers x 2 utterances, 1 dev speaker, 2 test speakers; texts name the utterance."""
    layout = {"train-clean-100": ("19", "103", "250"), "dev-clean": ("1272",), "test-clean": ("1688", "2035")}
    freq = 200.0
    for subset, speakers in layout.items():
        for speaker in speakers:
            folder = root / "LibriSpeech" / subset / speaker / "100"
            lines = []
            for utt in ("0000", "0001"):
                tone(folder / f"{speaker}-100-{utt}.flac", freq)
                freq += 37.0
                lines.append(f"{speaker}-100-{utt} SPEAKER {speaker} SAYS {utt}\n")
            (folder / f"{speaker}-100.trans.txt").write_text("".join(lines))
    return root / "LibriSpeech"


def voxceleb_tree(root: Path, test_speakers=("id10001", "id10003")) -> Path:
    """Train: id10001 x2, id10002 x2; test: one utterance per speaker in `test_speakers`."""
    rows, freq = [], 300.0
    for split, speakers in (("1", ("id10001", "id10001", "id10002", "id10002")), ("3", test_speakers)):
        for speaker in speakers:
            key = f"{speaker}/vid{split}/{len(rows):05d}.wav"
            tone(root / "wav" / key, freq)
            freq += 53.0
            rows.append(f"{split} {key}\n")
    (root / "iden_split.txt").write_text("".join(rows))
    return root


def voicebank_tree(root: Path, mismatch: int = 3) -> Path:
    """48 kHz pairs; the first clean file is `mismatch` samples longer than its noisy twin."""
    for i, (noisy_dir, clean_dir) in enumerate(
        (("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav"), ("noisy_testset_wav", "clean_testset_wav"))
    ):
        for j, name in enumerate(("p226_001", "p227_002")):
            freq = 400.0 + 100 * i + 10 * j
            tone(root / clean_dir / f"{name}.wav", freq, rate=48000, extra=mismatch if i == j == 0 else 0)
            tone(root / noisy_dir / f"{name}.wav", freq + 1000, rate=48000)
    return root


def libri2mix_tree(root: Path) -> Path:
    for split in ("train-100", "test"):
        for k in range(2):
            name = f"{19 + k}-198-000{k}_{1272 + k}-128104-000{k}.wav"
            base = root / "wav16k" / "min" / split
            s1 = tone(base / "s1" / name, 500.0 + 50 * k)
            s2 = tone(base / "s2" / name, 800.0 + 50 * k)
            (base / "mix_clean").mkdir(parents=True, exist_ok=True)
            sf.write(base / "mix_clean" / name, s1 + s2, RATE)
    return root


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return {
        "asr": librispeech_tree(root / "libri"),
        "sid": voxceleb_tree(root / "vox"),
        "se": voicebank_tree(root / "vb"),
        "ss": libri2mix_tree(root / "l2m"),
    }


def test_librispeech_gives_asr_texts_and_its_dev_split_for_calibration(corpora):
    tasks = corpus_tasks({"asr": corpora["asr"]}, train=10, test=10)
    assert tasks.source == {"asr": "librispeech"} and set(tasks.data) == {"librispeech"}
    train, test = tasks.data["librispeech"]["train"], tasks.data["librispeech"]["test"]
    assert train.texts[:2] == ["SPEAKER 103 SAYS 0000", "SPEAKER 103 SAYS 0001"] and len(train.texts) == 6
    assert [t.split()[1] for t in test.texts] == ["1688", "1688", "2035", "2035"]
    assert all(w.dtype == np.float32 and len(w) == RATE for w in train.inputs + test.inputs)
    assert len(tasks.dev) == 2  # dev-clean, not a training sample


def test_selection_is_seeded_spread_and_in_corpus_order(corpora):
    def chosen(seed):
        return corpus_tasks({"asr": corpora["asr"]}, train=3, test=1, seed=seed).data["librispeech"]["train"].texts

    everything = corpus_tasks({"asr": corpora["asr"]}, train=10, test=1).data["librispeech"]["train"].texts
    assert chosen(0) == chosen(0)
    picks = [chosen(seed) for seed in range(6)]
    assert any(p != everything[:3] for p in picks)  # not simply the first N (one speaker's)
    assert all(p == [t for t in everything if t in p] for p in picks)  # corpus order kept


def test_voxceleb_is_closed_set_over_the_training_selection(corpora, tmp_path):
    sid = corpus_tasks({"sid": corpora["sid"]}, train=10, test=10).data["voxceleb1"]
    assert sid["train"].speakers == [0, 0, 1, 1] and sid["test"].speakers == [0]  # id10003 is dropped
    assert sid["train"].texts == [] and len(sid["test"].inputs) == 1
    unseen = voxceleb_tree(tmp_path / "vox", test_speakers=("id10003", "id10004"))
    with pytest.raises(ValueError, match="none of the 2 test utterances.*closed-set"):
        corpus_tasks({"sid": unseen}, train=10, test=10)


def test_voicebank_resamples_and_trims_pairs_and_rejects_mismatched_lengths(corpora, tmp_path):
    tasks = corpus_tasks({"se": corpora["se"]}, train=10, test=10)
    se = tasks.data["voicebank"]
    for split in ("train", "test"):
        assert len(se[split].inputs) == 2
        for noisy, clean in zip(se[split].inputs, se[split].targets):
            assert noisy.shape == clean.shape and abs(len(noisy) - RATE) <= 1 and clean.dtype == np.float32
    expected = audio.load(corpora["se"] / "clean_trainset_28spk_wav" / "p227_002.wav")
    np.testing.assert_array_equal(se["train"].targets[1], expected)
    assert len(tasks.dev) == 2  # no LibriSpeech: a sample of the first task's training inputs
    bad = voicebank_tree(tmp_path / "vb", mismatch=4800)  # 0.1 s longer
    with pytest.raises(ValueError, match=r"p226_001.wav \(\d+ samples\).*differ by more than"):
        corpus_tasks({"se": bad}, train=10, test=10)


def test_libri2mix_targets_are_the_stacked_sources(corpora):
    ss = corpus_tasks({"ss": corpora["ss"]}, train=10, test=10).data["libri2mix"]
    for split in ("train", "test"):
        for mix, sources in zip(ss[split].inputs, ss[split].targets):
            assert sources.shape == (2, len(mix)) and sources.dtype == np.float32
            np.testing.assert_allclose(sources.sum(0), mix, atol=2e-4)  # 16-bit PCM


def test_only_given_tasks_are_built_and_layout_errors_name_the_path(corpora, tmp_path):
    tasks = corpus_tasks({"sid": corpora["sid"], "ss": corpora["ss"]}, train=2, test=2)
    assert tasks.source == {"sid": "voxceleb1", "ss": "libri2mix"} and set(tasks.data) == {"voxceleb1", "libri2mix"}
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}: no such folder"):
        corpus_tasks({"asr": tmp_path / "nope"}, train=2, test=2)
    shutil.copytree(corpora["asr"] / "train-clean-100", tmp_path / "ls" / "train-clean-100")
    with pytest.raises(ValueError, match="ls: no LibriSpeech test-\\* utterances"):
        corpus_tasks({"asr": tmp_path / "ls"}, train=2, test=2)


def test_parse_corpus_paths_accepts_task_and_corpus_names():
    assert parse_corpus_paths("asr=/a, voxceleb1=/b,se=/c") == {"asr": Path("/a"), "sid": Path("/b"), "se": Path("/c")}
    for spec, message in (("asr=/a,librispeech=/b", "given twice"), ("timit=/t", "'timit=/t'"), ("asr", "KEY=PATH")):
        with pytest.raises(ValueError, match=message):
            parse_corpus_paths(spec)


def test_quick_run_on_real_corpus_layouts(corpora, tmp_path):
    from conftest import random_early_exit

    model = random_early_exit()
    tasks = corpus_tasks({"asr": corpora["asr"], "ss": corpora["ss"]}, train=4, test=2)
    config = MiniSuperbConfig(tasks=("asr", "ss"), size="quick", budgets=(0.5,))
    summary = run(model, tasks.data, tasks.dev, tmp_path, config, source=tasks.source)
    assert set(summary["results"]) == {"asr", "ss"}
    assert {"mfcc", "full", "daisy", "budget-0.5"} <= set(summary["results"]["ss"])
    assert "cer" in summary["results"]["asr"]["full"]["metrics"]
    assert summary["results"]["ss"]["full"]["input"] == "libri2mix"
    features = {p.name for p in (tmp_path / "features").iterdir()}
    assert {"librispeech-train.json", "libri2mix-test.json", "dev.json"} <= features
    with pytest.raises(ValueError, match="no data for task\\(s\\) sid"):
        run(model, tasks.data, tasks.dev, tmp_path, MiniSuperbConfig(tasks=("sid",)), source=tasks.source)


def test_cli_reports_bad_data_as_one_line_errors(corpora, tmp_path):
    from conftest import random_early_exit

    runner = CliRunner()
    result = runner.invoke(app, ["minisuperb", "--model", str(tmp_path), "--data", "asr=/x,timit=/t"])
    assert result.exit_code == 1 and "'timit=/t'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["minisuperb", "--model", str(tmp_path), "--data", "asr=/x", "--tasks", "sid"])
    assert result.exit_code == 1 and "no corpus for sid" in result.output
    random_early_exit().save_pretrained(tmp_path / "model")
    missing = tmp_path / "no-voxceleb"
    result = runner.invoke(app, ["minisuperb", "--model", str(tmp_path / "model"), "--data", f"sid={missing}"])
    assert result.exit_code == 1 and "no such folder" in result.output and "Traceback" not in result.output


def test_cli_runs_the_tasks_given_in_data(corpora, tmp_path):
    from conftest import random_early_exit

    random_early_exit().save_pretrained(tmp_path / "model")
    args = ["minisuperb", "--model", str(tmp_path / "model"), "--data", f"voxceleb1={corpora['sid']}"]
    result = CliRunner().invoke(app, [*args, "--size", "quick", "--out", str(tmp_path / "out"), "--train", "4"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(summary["results"]) == ["sid"] and summary["config"]["tasks"] == ["sid"]
    assert (tmp_path / "out" / "features" / "voxceleb1-train.json").is_file()
