"""MiniSUPERB probes learn tiny separable problems, and never read padding."""

from __future__ import annotations

import math

import pytest
import torch

from daisy.downstream.probes import (
    CharVocab,
    CTCProbe,
    EnhancementProbe,
    SeparationProbe,
    SIDProbe,
    Spectrogram,
    ctc_greedy_decode,
)

HOP = 320


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: on a busy machine, intra-op threads only wait on each other (measured here:
    65 s with the default threads while another job ran, under 1 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(probe, loss_fn, steps, lr):
    optimiser = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimiser.step()
    return value(loss_fn)


def value(loss_fn) -> float:
    with torch.no_grad():
        return float(loss_fn())


def garbage_padded(sequences, dim, value=50.0):
    """Stack (T_i, D) sequences into (B, T, D), filling padding with large values no probe may read."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width, dim), value)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out, torch.tensor([len(s) for s in sequences])


# -- ASR ----------------------------------------------------------------------------------------------------------
def test_char_vocab_round_trip_reserves_blank():
    vocab = CharVocab.from_texts(["Hello, World!", "it's"])
    assert vocab.chars == " 'dehilorstw"
    assert len(vocab) == len(vocab.chars) + 1
    ids = vocab.encode("Hello   world, it's")
    assert 0 not in ids
    assert vocab.decode(ids) == "hello world it's"
    assert vocab.encode("xyz") == []  # not in this vocabulary
    assert len(CharVocab()) == 29  # blank + space + apostrophe + 26 letters


def test_ctc_greedy_decode_merges_repeats_drops_blanks_and_stops_at_length():
    path = torch.tensor([[0, 3, 3, 0, 3, 5, 5, 0, 2, 2], [1, 1, 0, 0, 2, 0, 4, 4, 4, 4]])
    logits = torch.nn.functional.one_hot(path, 6).float()
    assert ctc_greedy_decode(logits, torch.tensor([10, 5])) == [[3, 3, 5, 2], [1, 2]]


def ctc_batch():
    """Frames one-hot encode a label or blank; decoding them must give the labels."""
    paths = [[0, 3, 3, 0, 5, 5, 0, 2, 2, 0, 0], [0, 4, 4, 0, 1, 1, 0]]
    features, lengths = garbage_padded([torch.nn.functional.one_hot(torch.tensor(p), 6).float() for p in paths], 6)
    targets = torch.tensor([[3, 5, 2], [4, 1, 0]])
    return features, lengths, targets, torch.tensor([3, 2])


def test_ctc_probe_learns_a_fixed_label_sequence():
    torch.manual_seed(0)
    features, lengths, targets, target_lengths = ctc_batch()
    probe = CTCProbe(6, 6, hidden=16, layers=1)
    before = value(lambda: probe.loss(features, lengths, targets, target_lengths))
    after = train(probe, lambda: probe.loss(features, lengths, targets, target_lengths), steps=60, lr=0.03)
    assert after < 0.05 * before
    assert probe.predict(features, lengths) == [[3, 5, 2], [4, 1]]


@pytest.mark.parametrize("make", [lambda: CTCProbe(6, 6, hidden=8, layers=2), lambda: SIDProbe(6, 3)])
def test_padding_never_reaches_the_output(make):
    torch.manual_seed(0)
    probe = make().eval()
    features, lengths, _, _ = ctc_batch()
    batched = probe(features, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = probe(features[i : i + 1, :n], lengths[i : i + 1])
        mine = batched[i : i + 1, :n] if batched.dim() == 3 else batched[i : i + 1]
        torch.testing.assert_close(mine, alone, rtol=1e-5, atol=1e-6)


# -- SID ----------------------------------------------------------------------------------------------------------
def test_sid_probe_reaches_full_accuracy_when_the_mean_encodes_the_speaker():
    torch.manual_seed(0)
    speakers, dim = 4, 8
    centres = 2.0 * torch.randn(speakers, dim)
    labels = torch.arange(16) % speakers
    utterances = [torch.randn(5 + i % 6, dim) + centres[label] for i, label in enumerate(labels.tolist())]
    features, lengths = garbage_padded(utterances, dim)
    probe = SIDProbe(dim, speakers)
    train(probe, lambda: probe.loss(features, lengths, labels), steps=40, lr=0.05)
    assert torch.equal(probe.predict(features, lengths), labels)


# -- STFT, SE, SS -------------------------------------------------------------------------------------------------
def hubert_frames(samples: int) -> int:
    return 1 + (samples - 400) // HOP


def test_stft_frames_align_with_hubert_frames_and_invert_exactly():
    spectrogram = Spectrogram()
    for samples in (400, 719, 720, 6480, 6799, 6800):
        wav = torch.randn(2, samples, dtype=torch.float64)
        spec = spectrogram.double()(wav)
        assert spec.shape == (2, 257, hubert_frames(samples) + 3)  # edge frames: one at the head, two at the tail
        torch.testing.assert_close(spectrogram.inverse(spec, samples), wav)
    # frame t + 1 windows exactly HuBERT frame t's 400 samples [320 t, 320 t + 400): an impulse at sample s
    # shows in frame j with the weight of the Hann window at s - 320 (j - 1), and nowhere else
    hann = torch.hann_window(400, dtype=torch.float64)
    for s in (0, 1, 200, 321, 719, 999):
        wav = torch.zeros(1000, dtype=torch.float64)
        wav[s] = 1.0
        seen = spectrogram(wav).abs()[0]  # bin 0: the window weight itself
        starts = [HOP * (j - 1) for j in range(hubert_frames(1000) + 3)]
        expected = torch.tensor([hann[s - start] if 0 <= s - start < 400 else 0.0 for start in starts])
        torch.testing.assert_close(seen, expected.double(), rtol=0, atol=1e-6)  # the window is built in float32


def test_mask_of_feature_frame_t_lands_on_stft_frame_t_plus_1():
    probe = EnhancementProbe(1, hidden=4, layers=1)
    probe.forward = lambda features, lengths: features[:, None].expand(-1, 1, -1, 257)  # mask = the feature
    samples = [6480, 3000]
    lengths = torch.tensor([hubert_frames(n) for n in samples])  # 20, 9
    features = torch.arange(1.0, 21.0)[None, :, None].repeat(2, 1, 1)  # frame t carries t + 1
    masks, _, _, valid = probe.masked(features, lengths, torch.zeros(2, 6480))
    # head frame: feature frame 0; then frames 0..len-1; then the last frame repeated to the end
    assert masks[0, 0, :, 0].tolist() == [1.0] + list(range(1, 21)) + [20.0] * 2
    assert masks[1, 0, :, 0].tolist() == [1.0] + list(range(1, 10)) + [9.0] * 13
    assert valid[1].tolist() == [False] + [True] * 9 + [False] * 13


def gated_tones(batch, frames, freqs, seed):
    """Tones switched on and off per HuBERT frame: (sources (B, K, n), gates (B, K, frames))."""
    g = torch.Generator().manual_seed(seed)
    samples = (frames - 1) * HOP + 400
    gates = (torch.rand(batch, len(freqs), frames, generator=g) > 0.5).float()
    t = torch.arange(samples) / 16000
    phases = 2 * math.pi * torch.rand(batch, len(freqs), 1, generator=g)
    tones = torch.sin(2 * math.pi * torch.tensor(freqs)[None, :, None] * t + phases)
    per_sample = gates.repeat_interleave(HOP, -1)
    per_sample = torch.cat([per_sample, per_sample[..., -1:].expand(-1, -1, samples - per_sample.shape[-1])], -1)
    return tones * per_sample, gates


def test_enhancement_probe_learns_to_mask_noise():
    torch.manual_seed(0)
    frames = 20
    (clean, gates) = gated_tones(4, frames, [1000.0], seed=1)
    clean = clean[:, 0]
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    features = torch.cat([gates[:, 0, :, None], torch.ones(4, frames, 1)], -1)  # clean-present indicator
    lengths = torch.full((4,), frames)
    probe = EnhancementProbe(2, hidden=16, layers=1)
    before = value(lambda: probe.loss(features, noisy, clean, lengths))
    after = train(probe, lambda: probe.loss(features, noisy, clean, lengths), steps=40, lr=0.02)
    assert after < 0.3 * before
    enhanced = probe.enhance(features, noisy, lengths)
    assert enhanced.shape == noisy.shape
    assert (enhanced - clean).square().sum() < 0.2 * (noisy - clean).square().sum()


def test_all_pass_enhancement_returns_the_input_in_a_padded_batch():
    probe = EnhancementProbe(3, hidden=4, layers=1)
    with torch.no_grad():
        probe.out.weight.zero_()
        probe.out.bias.fill_(40.0)  # sigmoid -> 1: keep every bin
    samples = [6480, 3000, 400]
    noisy = torch.zeros(3, 6480)
    for i, n in enumerate(samples):
        noisy[i, :n] = torch.randn(n)
    lengths = torch.tensor([hubert_frames(n) for n in samples])
    out = probe.enhance(torch.randn(3, int(lengths.max()), 3), noisy, lengths)
    torch.testing.assert_close(out, noisy, rtol=0, atol=1e-4)


def separation_batch():
    sources, gates = gated_tones(4, 20, [500.0, 2500.0], seed=3)
    features = torch.cat([gates.transpose(1, 2), torch.ones(4, 20, 1)], -1)  # which speaker talks when
    return features, sources.sum(1), sources, torch.full((4,), 20)


def test_separation_loss_is_the_best_permutation_and_ignores_source_order():
    torch.manual_seed(0)
    features, mixture, sources, lengths = separation_batch()
    probe = SeparationProbe(3, hidden=8, layers=1)
    loss = probe.loss(features, mixture, sources, lengths)
    assert torch.equal(loss, probe.loss(features, mixture, sources.flip(1), lengths))
    # by hand: per utterance, the smaller of the two assignments; averaged over utterances and speakers
    masks, mix, _, valid = probe.masked(features, lengths, mixture)
    target = torch.log1p(probe.spectrogram(sources).abs()).transpose(-1, -2)
    weight = valid[:, None, :, None] / valid.sum(1)[:, None, None, None]
    straight = ((masks * mix - target).square() * weight).sum((1, 2, 3))
    crossed = ((masks * mix - target.flip(1)).square() * weight).sum((1, 2, 3))
    assert not torch.allclose(straight, crossed)
    torch.testing.assert_close(loss, torch.minimum(straight, crossed).mean() / 2)


def test_separation_probe_learns_and_separates():
    torch.manual_seed(0)
    features, mixture, sources, lengths = separation_batch()
    probe = SeparationProbe(3, hidden=16, layers=1)
    before = value(lambda: probe.loss(features, mixture, sources, lengths))
    after = train(probe, lambda: probe.loss(features, mixture, sources, lengths), steps=40, lr=0.02)
    assert after < 0.2 * before
    estimates = probe.separate(features, mixture, lengths)
    assert estimates.shape == sources.shape
    # under the best assignment, each estimate is closer to its source than the mixture is
    errors = [(estimates - sources[:, perm]).square().sum((1, 2)) for perm in ([0, 1], [1, 0])]
    best = torch.minimum(*errors)
    assert bool((best < 0.05 * (mixture[:, None] - sources).square().sum((1, 2))).all())
