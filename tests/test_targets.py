"""Targets: the teacher's own answer, k-means ids, and MFCC features aligned to frames."""

import math

import numpy as np
import pytest
import torch

from conftest import random_early_exit, varied_batch
from daisy.features import deltas, mfcc
from daisy.model import EarlyExitHubert
from daisy.targets import KMeansTargets, TeacherHead, align_frames


def test_teacher_logits_are_cosine_over_temperature():
    torch.manual_seed(0)
    teacher = TeacherHead(hidden_size=8, proj_size=4, num_classes=5)
    h = torch.randn(2, 3, 8)
    proj = teacher.final_proj(h)
    expected = torch.nn.functional.cosine_similarity(proj[..., None, :], teacher.label_embs, dim=-1) / 0.1
    torch.testing.assert_close(teacher.logits(h), expected)
    assert teacher(h).tolist() == expected.argmax(-1).tolist()


def test_teacher_from_fairseq_head_takes_the_first_label_set():
    head = {
        "final_proj.weight": torch.randn(4, 8),
        "final_proj.bias": torch.randn(4),
        "label_embs_concat": torch.randn(7 + 3, 4),
    }
    teacher = TeacherHead.from_fairseq(head, [7, 3])
    assert teacher.num_classes == 7
    torch.testing.assert_close(teacher.label_embs.data, head["label_embs_concat"][:7])


def test_kmeans_recovers_separated_clusters_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (200, 2)) for c in centres])
    km = KMeansTargets.fit(points, k=3, n_init=3)
    ids = km.assign(torch.from_numpy(points).float()).numpy()
    for block in range(3):  # each true cluster maps to a single id, all different
        assert len(set(ids[block * 200 : (block + 1) * 200])) == 1
    assert len(set(ids)) == 3
    km.save(tmp_path / "km.safetensors")
    loaded = KMeansTargets.load(tmp_path / "km.safetensors")
    assert loaded.features == "mfcc"
    torch.testing.assert_close(loaded.centers, km.centers)
    with pytest.raises(ValueError, match="at least 5 frames"):
        KMeansTargets.fit(points[:4], k=5)


def test_mfcc_has_one_frame_per_backbone_frame():
    for n in (400, 719, 720, 16000, 16320):
        assert mfcc(torch.randn(n)).shape == ((n - 400) // 320 + 1, 39)


def test_mfcc_separates_tones_and_deltas_follow_change():
    t = torch.arange(16000) / 16000
    low, high = mfcc(torch.sin(2 * math.pi * 200 * t)), mfcc(torch.sin(2 * math.pi * 4000 * t))
    assert not torch.allclose(low[:, :13], high[:, :13])
    chirp = mfcc(torch.sin(2 * math.pi * (200 + 3000 * t) * t))
    assert low[:, 13:26].abs().mean() < 0.1 * chirp[:, 13:26].abs().mean()  # a steady tone has ~no deltas
    ramp = torch.arange(10.0)[:, None]
    assert deltas(ramp)[2:-2].flatten().tolist() == [1.0] * 6


def test_teacher_targets_from_the_full_model(tmp_path):
    from daisy.training.train_heads import HeadTrainConfig, train_heads

    model = random_early_exit()
    wavs, lengths = varied_batch(2)
    with pytest.raises(ValueError, match="no pretraining head"):
        model.teacher_targets(wavs, lengths)
    with pytest.raises(ValueError, match="no pretraining head"):  # before any step or file
        train_heads(model, [w.numpy() for w in wavs], tmp_path / "h", HeadTrainConfig.quick())
    assert not (tmp_path / "h").exists()
    model.teacher = TeacherHead(model.backbone.hidden_size, 8, 12)
    ids = model.teacher_targets(wavs, lengths)
    expected = model.teacher(model.backbone.hidden_states(wavs, lengths)[-1])
    assert ids.tolist() == expected.tolist()


def test_kmeans_targets_on_mfcc_and_layer_features(tmp_path):
    model = random_early_exit()
    model.config.targets = "kmeans"
    wavs, lengths = varied_batch(3)
    rng = np.random.default_rng(0)
    model.kmeans = KMeansTargets(torch.from_numpy(rng.normal(size=(4, 39))).float(), "mfcc")
    ids = model.teacher_targets(wavs, lengths)
    n = int(lengths[0])
    assert ids[0, : (n - 400) // 320 + 1].tolist() == model.kmeans.assign(mfcc(wavs[0, :n])).tolist()
    model.kmeans = KMeansTargets(torch.randn(4, model.backbone.hidden_size), "layer:2")
    expected = model.kmeans.assign(model.backbone.hidden_states(wavs, lengths)[2])
    assert model.teacher_targets(wavs, lengths).tolist() == expected.tolist()
    model.save_pretrained(tmp_path / "m")
    assert EarlyExitHubert.from_pretrained(tmp_path / "m").kmeans.features == "layer:2"


def test_label_frames_align_to_the_trained_models_frames(tmp_path):
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    # a label model one frame short on the second utterance, one long on the first: repeat / drop at the end
    aligned = align_frames(ids, torch.tensor([4, 2]), torch.tensor([3, 3]))
    assert aligned.tolist() == [[1, 2, 3], [5, 6, 6]]
    km = KMeansTargets(torch.randn(3, 4), "layer:2", source=str(tmp_path / "it1"))
    km.save(tmp_path / "km.safetensors")
    loaded = KMeansTargets.load(tmp_path / "km.safetensors")
    assert (loaded.features, loaded.source) == ("layer:2", str(tmp_path / "it1"))
    with pytest.raises(FileNotFoundError, match="it1, which is missing"):
        loaded.targets(torch.randn(1, 1600))
