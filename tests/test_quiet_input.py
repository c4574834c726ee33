"""Input normalisation against transformers: an HF-format HuBERT with `do_normalize` (the shipped model) gives
transformers' states at any input level, quiet input included, where the normalisation's epsilon shows."""

import pytest
import torch
from transformers import HubertModel, Wav2Vec2FeatureExtractor

from daisy.upstream import HubertBackbone, normalize_each

SHIPPED = "daisy/assets/hubert-tiny-synth"


def speech_like(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    wav = torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) + 0.3 * torch.randn(
        len(t), generator=g
    )
    return wav + 0.2  # a DC offset: the normalisation removes the mean too


def at_dbfs(wav: torch.Tensor, dbfs: float) -> torch.Tensor:
    return wav * (10 ** (dbfs / 20) / wav.pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def references():
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(SHIPPED)
    assert extractor.do_normalize  # precondition: the shipped model normalises its input
    return extractor, HubertModel.from_pretrained(SHIPPED).eval(), HubertBackbone.from_pretrained(SHIPPED)


def transformers_states(extractor, model, wav: torch.Tensor) -> list[torch.Tensor]:
    inputs = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        return list(model(inputs.input_values, output_hidden_states=True).hidden_states)


@pytest.mark.parametrize("dbfs", [-20.0, -60.0, -80.0])
def test_states_match_transformers_feature_extractor_and_model(references, dbfs):
    extractor, model, backbone = references
    wav = at_dbfs(speech_like(), dbfs)
    theirs = transformers_states(extractor, model, wav)
    with torch.no_grad():
        ours = backbone.hidden_states(wav[None])
    assert len(ours) == len(theirs) == 7
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0, msg=f"layer {layer} at {dbfs} dBFS")


def test_the_epsilon_shows_at_minus_80_dbfs(references):
    """Why the epsilon must be transformers' own: with a smaller one (1e-10), -80 dBFS input is scaled up
    to unit variance, which transformers' feature extractor does not do, and the states move far apart."""
    extractor, model, backbone = references
    wav = at_dbfs(speech_like(seed=1), -80.0)
    theirs = transformers_states(extractor, model, wav)[-1]
    lengths = torch.tensor([len(wav)])
    with torch.no_grad():
        other = normalize_each(wav[None], lengths, eps=1e-10)
        backbone.config.normalize_waveform = False  # feed the other normalisation's output as it is
        try:
            far = backbone.hidden_states(other, lengths)[-1]
        finally:
            backbone.config.normalize_waveform = True
        near = backbone.hidden_states(wav[None], lengths)[-1]
    assert (far - theirs).abs().max() > 0.1
    assert (near - theirs).abs().max() < 2e-4


def test_normalised_input_matches_the_feature_extractor(references):
    """The normalisation itself, on two utterances of different lengths and levels in one padded batch."""
    extractor, _, _ = references
    wavs = [at_dbfs(speech_like(0.5, seed=2), -70.0), at_dbfs(speech_like(0.8, seed=3), -30.0)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lengths = torch.tensor([len(w) for w in wavs])
    ours = normalize_each(batch, lengths)
    theirs = extractor([w.numpy() for w in wavs], sampling_rate=16000, padding=True, return_tensors="pt")
    torch.testing.assert_close(ours, theirs.input_values, atol=1e-5, rtol=1e-5)
