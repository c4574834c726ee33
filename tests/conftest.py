import pytest
import torch
from transformers import HubertConfig

from daisy.upstream import HubertBackbone


def tiny_config(stable: bool, norm: str = "layer", **overrides) -> HubertConfig:
    """A transformers-test-sized HuBERT (hidden 16) with the standard conv geometry."""
    fields = dict(
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=20,
        conv_dim=(8,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=True,
        feat_extract_norm=norm,
        do_stable_layer_norm=stable,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=8,
    )
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
