"""The backbone for each transformers model family, and `load_backbone`, which picks it by config.json.

HuBERT, wav2vec 2.0 and data2vec-audio step alike (`daisy.upstream.backbone.Backbone`; data2vec-audio's own
positional conv stack is its `encoder.pos_conv_embed`). WavLM differs in one thing: its attention adds a
relative position bias, which transformers' first layer computes from its bucket embedding and its encoder
hands on to every later layer, each gating it by its own input.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from daisy.upstream.backbone import Backbone, HubertBackbone
from daisy.upstream.checkpoints import load_backbone_model


class WavLMBias(NamedTuple):
    """What WavLM's layers take besides the state: the frame mask (None when nothing is padded) and the
    relative position bias (B * heads, T', T') before each layer's gate."""

    mask: torch.Tensor | None
    position: torch.Tensor


class WavLMBackbone(Backbone):
    """transformers' `WavLMModel`, stepped layer by layer."""

    model_types = ("wavlm",)
    first_droppable_layer = 2  # transformers never drops the first layer: it makes the position bias

    def attention_bias(self, mask: torch.Tensor, dtype: torch.dtype) -> WavLMBias:
        """The frame mask and layer 1's relative position bias, as transformers' layer 1 computes it and
        passes it on. It depends only on the batch size and width, so it is made here, once per batch
        shape: any layer can then run alone, and a batch trimmed by early exit gets its own."""
        attention = self.model.encoder.layers[0].attention
        batch, width = mask.shape
        position = attention.compute_bias(width, width)  # (heads, T', T')
        position = position.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * attention.num_heads, width, width)
        return WavLMBias(None if bool(mask.all()) else mask, position)

    def _run_layer(self, module: nn.Module, x: torch.Tensor, bias: WavLMBias) -> torch.Tensor:
        return module(x, attention_mask=bias.mask, position_bias=bias.position)[0]


# config.json's model_type -> the backbone that steps it
BACKBONES: dict[str, type[Backbone]] = {
    "hubert": HubertBackbone,
    "wav2vec2": Backbone,
    "wavlm": WavLMBackbone,
    "data2vec-audio": Backbone,
}


def backbone_class(model_type: str) -> type[Backbone]:
    if model_type not in BACKBONES:
        raise ValueError(f"no backbone for model type {model_type!r} (supported: {', '.join(BACKBONES)})")
    return BACKBONES[model_type]


def load_backbone(path: str | Path) -> Backbone:
    """The layer-stepping backbone for a transformers `save_pretrained` directory of a HuBERT, wav2vec 2.0,
    WavLM or data2vec-audio model (by config.json's model_type; daisy model directories are one) or an
    s3prl-converted fairseq HuBERT checkpoint file."""
    model, normalize = load_backbone_model(path, tuple(BACKBONES))
    return backbone_class(model.config.model_type)(model.eval(), normalize_waveform=normalize)


def backbone_from_config(config) -> Backbone:
    """A randomly initialised backbone for a transformers config of any supported family."""
    return backbone_class(config.model_type).from_config(config)
