"""Representation side of daisy: layer-stepping backbones (HuBERT, wav2vec 2.0, WavLM, data2vec-audio) and
checkpoint loading."""

from daisy.upstream.backbone import Backbone, HubertBackbone, check_batch, normalize_each
from daisy.upstream.families import WavLMBackbone, backbone_from_config, load_backbone
from daisy.upstream.presets import PRESETS, preset_config
from daisy.upstream.s3prl_plugin import register as register  # s3prl itself loads only inside register()

__all__ = [
    "Backbone",
    "HubertBackbone",
    "WavLMBackbone",
    "backbone_from_config",
    "load_backbone",
    "check_batch",
    "normalize_each",
    "PRESETS",
    "preset_config",
]
