"""Representation side of daisy: the layer-stepping HuBERT backbone and checkpoint loading."""

from daisy.upstream.backbone import HubertBackbone, check_batch
from daisy.upstream.presets import PRESETS, preset_config

__all__ = ["HubertBackbone", "check_batch", "PRESETS", "preset_config"]
