import pytest
import torch
from transformers import HubertConfig

from daisy.upstream import HubertBackbone

# a transformers-test-sized encoder (hidden 16, 3 layers) with the standard conv geometry (320-sample hop);
# every family's tiny test config shares it
TINY_GEOMETRY = dict(
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=20,
    conv_dim=(8,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=True,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


def tiny_config(stable: bool, norm: str = "layer", **overrides) -> HubertConfig:
    """A transformers-test-sized HuBERT (hidden 16) with the standard conv geometry."""
    fields = dict(TINY_GEOMETRY, feat_extract_norm=norm, do_stable_layer_norm=stable, classifier_proj_size=8)
    fields.update(overrides)
    return HubertConfig(**fields)


@pytest.fixture
def tiny_backbone() -> HubertBackbone:
    torch.manual_seed(0)
    return HubertBackbone.from_config(tiny_config(stable=False))


def padded_batch(lengths, seed=0):
    """Random speech-like batch (B, max(lengths)) with zero padding, and its lengths."""
    g = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = 0.1 * torch.randn(n, generator=g)
    return wavs, torch.tensor(lengths)


def random_early_exit(stable=False, norm="layer", num_classes=12, head_input="ffn", seed=0):
    """An EarlyExitHubert on a tiny random backbone whose heads give utterance-dependent entropies."""
    from daisy.model import EarlyExitHubert

    torch.manual_seed(seed)
    backbone = HubertBackbone.from_config(tiny_config(stable=stable, norm=norm))
    model = EarlyExitHubert.from_backbone(backbone, num_classes, head_input=head_input).eval()
    scale = 300.0 if head_input == "ffn" else 3.0  # random FFN outputs are ~1e-3: scale heads to spread
    with torch.no_grad():
        for head in model.heads.heads:
            head.weight.normal_(0.0, scale / head.in_features**0.5)
    return model


def varied_batch(n=8, seed=0):
    """n utterances of different lengths and characters (tones, noise, silence-ish)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in torch.randint(800, 12000, (n,), generator=g)]
    wavs, lengths_t = padded_batch(lengths, seed)
    for i, n_i in enumerate(lengths):
        t = torch.arange(n_i) / 16000
        wavs[i, :n_i] *= float(torch.rand((), generator=g)) * 3
        wavs[i, :n_i] += 0.5 * torch.sin(2 * torch.pi * (100 + 300 * i) * t)
    return wavs, lengths_t


@pytest.fixture(scope="session")
def quick_corpus(tmp_path_factory):
    """The quick synthetic corpus, built once per test session in a private cache."""
    from daisy.data.corpus import CorpusConfig, build_corpus

    return build_corpus(tmp_path_factory.mktemp("cache"), CorpusConfig.quick())
