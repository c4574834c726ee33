"""Named HuBERT sizes, randomly initialised, for tests and pretraining.

Every preset keeps the standard 7-layer conv front-end geometry (kernels 10,3,3,3,3,2,2; strides
5,2,2,2,2,2,2), so one frame covers 400 samples and frames advance by 320 samples (20 ms at 16 kHz).
"""

from __future__ import annotations

from transformers import HubertConfig

_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)

PRESETS: dict[str, dict] = {
    # Small enough to pretrain on CPU. A layer-normed conv front-end (not HuBERT Base's group norm over
    # time) makes every frame independent of padding, so batched and single-utterance outputs agree.
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(64,) * 7,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=8,
        classifier_proj_size=128,
    ),
    # HuBERT Base (fairseq hubert_base_ls960): post-norm layers, group-normed first conv.
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_dim=(512,) * 7,
        conv_bias=False,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        classifier_proj_size=256,
    ),
    # HuBERT Large: pre-norm ("stable") layers, layer-normed conv front-end.
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_dim=(512,) * 7,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        classifier_proj_size=768,
    ),
}


def preset_config(name: str, **overrides) -> HubertConfig:
    """A `HubertConfig` for a named size; keyword overrides replace single fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[name], conv_kernel=_CONV_KERNEL, conv_stride=_CONV_STRIDE)
    fields.update(overrides)
    return HubertConfig(**fields)
