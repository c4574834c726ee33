"""Teacher figures for the model card: per-layer frame features and the linear CTC character probe."""

import numpy as np
import pytest
import torch

from conftest import random_early_exit
from daisy.analysis.teacher_report import char_probe, frame_layers
from daisy.apps.ship import per_feature, probe_table


def synthetic_char_task(n: int, seed: int, dim: int = 8):
    """Texts over 'abc' and two frame features per utterance: one says each character (3 frames, then a
    pause frame), the other is noise of the same shape."""
    fixed = np.random.default_rng(0)  # the same code per character in train and test
    codes = {c: fixed.normal(0, 1, dim) for c in "abc"}
    pause = fixed.normal(0, 1, dim)
    rng = np.random.default_rng(seed)
    texts, informative, noise = [], [], []
    for _ in range(n):
        text = "".join(rng.choice(list("abc"), size=int(rng.integers(3, 7))))
        frames = np.concatenate([np.stack([codes[c]] * 3 + [pause]) for c in text])
        frames = frames + rng.normal(0, 0.3, frames.shape)
        texts.append(text)
        informative.append(torch.from_numpy(frames).half())
        noise.append(torch.from_numpy(rng.normal(0, 1, frames.shape)).half())
    return texts, [informative, noise]


def test_linear_ctc_probe_learns_characters_per_feature_index():
    train_texts, train_x = synthetic_char_task(60, seed=0)
    test_texts, test_x = synthetic_char_task(20, seed=1)
    cers = char_probe(train_x, train_texts, test_x, test_texts, steps=300)
    untrained = char_probe(train_x, train_texts, test_x, test_texts, steps=0)
    assert len(cers) == len(untrained) == 2  # one CER per feature index
    assert cers[0] < 0.1 and untrained[0] > 0.5, (cers, untrained)
    assert cers[1] > 0.5  # noise says nothing about characters
    assert char_probe(train_x, train_texts, test_x, test_texts, steps=300) == cers  # fixed seed


def test_frame_layers_of_a_model_feed_the_probe_and_the_card(tmp_path):
    model = random_early_exit()
    model.backbone.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    wavs = [rng.normal(0, 0.1, n).astype(np.float32) for n in (4000, 6400, 9000)]
    feats = frame_layers(tmp_path / "m", wavs)
    assert len(feats) == model.num_layers + 2  # MFCC, states 0..L
    assert [tuple(f.shape) for f in feats[0]] == [((len(w) - 400) // 320 + 1, 39) for w in wavs]
    assert feats[1][2].shape == ((9000 - 400) // 320 + 1, model.backbone.hidden_size)
    cers = char_probe(feats, ["a b", "ab", "ba"], feats, ["a b", "ab", "ba"], steps=4)
    assert len(cers) == model.num_layers + 2
    table = probe_table({"speaker_probe": per_feature([0.5] * len(cers)), "char_probe": per_feature(cers)})
    assert table[2].startswith("| mfcc | 0.500 |") and table[-1].startswith(f"| state_{model.num_layers} |")


def test_input_level_rows_and_the_card_say_whether_the_level_matters(tmp_path):
    import json

    from daisy.analysis.input_levels import exits_at_gains
    from daisy.apps.ship import write_card
    from daisy.calibration import trace_scores
    from daisy.policies import Entropy

    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (4000, 6000, 9000)]
    model = random_early_exit()
    entropy = trace_scores(model, wavs)["entropy"]
    model.policy = Entropy(threshold=float(entropy[:, 0].median()))  # some exit at layer 1, some later
    raw = exits_at_gains(model, wavs, (20, 0, -20))
    assert [r["rms_dbfs"] for r in raw] == [0.0, -20.0, -40.0]  # 0.1 RMS = -20 dBFS
    model.backbone.config.normalize_waveform = True
    normalised = exits_at_gains(model, wavs, (20, 0, -20))
    assert len({r["mean_exit"] for r in normalised}) == 1
    assert len({r["mean_exit"] for r in raw}) > 1  # this random model's exits do move with the level

    card = json.loads(open("daisy/assets/hubert-tiny-synth/card.json").read())
    card["pretraining"]["config"]["normalize"] = False  # a model pretrained on raw input
    card["figures"]["input_level"] = raw
    write_card(tmp_path / "raw.md", card, "")
    assert "Bring audio to about -20 dBFS RMS" in (tmp_path / "raw.md").read_text()
    card["pretraining"]["config"]["normalize"] = True
    card["figures"]["input_level"] = normalised
    write_card(tmp_path / "new.md", card, "")
    new = (tmp_path / "new.md").read_text()
    assert "| -20 | -40.0 | " in new and "do not depend on the recording level" in new
    assert "Bring audio" not in new


def test_the_shipped_model_and_its_card_carry_asrs_own_operating_point(tmp_path):
    import json

    from daisy.apps.ship import write_card
    from daisy.calibration import TASK_DEPTH_FRACTIONS
    from daisy.model import EarlyExitHubert

    shipped = "daisy/assets/hubert-tiny-synth"
    model = EarlyExitHubert.from_pretrained(shipped)
    assert model.tasks == sorted(TASK_DEPTH_FRACTIONS)
    assert model.task_policy("asr").target_depth == round(TASK_DEPTH_FRACTIONS["asr"] * model.num_layers, 6)
    assert model.policy.target_depth < model.task_policy("asr").target_depth
    card = json.loads(open(f"{shipped}/card.json").read())
    write_card(tmp_path / "card.md", card, "")
    line = f"Policy for asr, its own operating point (`--task asr`): `{json.dumps(model.task_policy('asr').to_dict())}`"
    assert line in (tmp_path / "card.md").read_text()


def test_the_shipped_model_was_calibrated_under_the_current_rare_exits_rule():
    from daisy.calibration import RARE_EXITS
    from daisy.model import EarlyExitHubert

    model = EarlyExitHubert.from_pretrained("daisy/assets/hubert-tiny-synth")
    provenance = model.config.provenance
    records = {None: provenance["calibration"], **provenance["task_calibration"]}
    assert set(records) == {None, *model.tasks}
    for task, record in records.items():  # a changed default needs `daisy ship` again (and its figures)
        policy = model.policy if task is None else model.task_policy(task)
        assert record["rare_exits"] == RARE_EXITS and record["min_layer"] == policy.min_layer


def test_speaker_levels_compare_the_spread_between_and_within_speakers():
    from daisy.analysis.input_levels import speaker_levels

    ones = np.ones(1000, np.float32)
    wavs = [0.1 * ones, 0.1 * ones, 0.01 * ones, 0.01 * ones]  # -20 dBFS twice, -40 dBFS twice
    levels = speaker_levels(wavs, ["a", "a", "b", "b"])
    assert levels == {
        "speakers": 2,
        "speaker_mean_dbfs_min": -40.0,
        "speaker_mean_dbfs_max": -20.0,
        "between_speakers_std_db": 10.0,
        "within_speaker_std_db": 0.0,
    }


def test_the_card_shows_exits_on_real_recordings_and_how_its_heads_were_trained(tmp_path):
    import json

    from daisy.analysis.real_speech import measure
    from daisy.apps.ship import REAL_SPEECH, NeuralSpeech, write_card

    model = random_early_exit()
    result = measure(model, REAL_SPEECH, {}, ["white", "babble"], [0.0])
    assert list(result["exits"]) == ["clean", "white 0 dB", "babble 0 dB"]
    assert all(1 <= row["all"] <= model.num_layers for row in result["exits"].values())
    card = json.loads(open("daisy/assets/hubert-tiny-synth/card.json").read())
    card["figures"]["real_speech"] = result
    card["neural_speech"], card["base"] = vars(NeuralSpeech()), "daisy/assets/hubert-tiny-synth"
    card["head_training"] = {"steps": 1500}
    write_card(tmp_path / "card.md", card, "")
    text = (tmp_path / "card.md").read_text()
    assert "## Real recordings" in text and f"| white 0 dB | {result['exits']['white 0 dB']['all']:.2f} |" in text
    assert "--base daisy/assets/hubert-tiny-synth --out" in text and "calibrated on 100 other Kokoro" in text
    card["neural_speech"] = None
    del card["figures"]["real_speech"]
    write_card(tmp_path / "plain.md", card, "")
    plain = (tmp_path / "plain.md").read_text()
    assert "--no-neural-speech" in plain and "## Real recordings" not in plain


def test_neural_speech_mix_reaches_its_share_and_refuses_bad_settings():
    from daisy.apps.ship import NeuralSpeech

    mix = NeuralSpeech(share=0.25).mix(["e"] * 900, ["k"] * 100)
    assert mix.count("k") == 300 and mix.count("e") == 900
    with pytest.raises(ValueError, match="share"):
        NeuralSpeech(share=1.0)
    with pytest.raises(ValueError, match="heard"):
        NeuralSpeech(heard=0)
