"""Representation side of daisy: the layer-stepping HuBERT backbone and checkpoint loading."""

from daisy.upstream.backbone import HubertBackbone, check_batch, normalize_each
from daisy.upstream.presets import PRESETS, preset_config
from daisy.upstream.s3prl_plugin import register as register  # s3prl itself loads only inside register()

__all__ = ["HubertBackbone", "check_batch", "normalize_each", "PRESETS", "preset_config"]
