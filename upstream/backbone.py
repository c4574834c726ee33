"""A speech backbone (HuBERT, wav2vec 2.0, WavLM, data2vec-audio) that runs one transformer layer at a time.

Layer numbering follows transformers' `output_hidden_states`: state 0 is the input of the first
transformer layer (conv features, projection, positional conv and, for post-norm models, the encoder
layer norm); state l (1-based) is the output of transformer layer l. Pre-norm ("stable layer norm")
models apply the encoder's final layer norm after the last layer only, exactly as transformers does.

The backbone knows nothing of exit heads or policies: callers step it and decide themselves.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from daisy.upstream.checkpoints import load_backbone_model, save_hubert, transformers_model_class
from daisy.upstream.geometry import HOP, MIN_SAMPLES, SAMPLE_RATE
from daisy.upstream.presets import preset_config


def check_batch(wavs: torch.Tensor, lengths: torch.Tensor | None, min_samples: int = MIN_SAMPLES) -> torch.Tensor:
    """Validate a padded batch of waveforms; return `lengths` as a long tensor on `wavs.device`.

    wavs: (B, T) float, 16 kHz mono, right-padded. lengths: (B,) valid samples per row (None: all T).
    """
    if not isinstance(wavs, torch.Tensor):
        raise ValueError(f"wavs must be a torch.Tensor of shape (batch, samples), got {type(wavs).__name__}")
    if wavs.dim() != 2:
        raise ValueError(f"wavs must have shape (batch, samples), got rank {wavs.dim()}: {tuple(wavs.shape)}")
    if not wavs.is_floating_point():
        raise ValueError(f"wavs must be a float tensor (float32 audio in [-1, 1]), got dtype {wavs.dtype}")
    if lengths is None:
        lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
    lengths = torch.as_tensor(lengths, device=wavs.device)
    if lengths.dim() != 1 or lengths.shape[0] != wavs.shape[0]:
        raise ValueError(f"lengths must have shape ({wavs.shape[0]},) to match wavs, got {tuple(lengths.shape)}")
    if lengths.is_floating_point():
        raise ValueError("lengths must be integer sample counts")
    lengths = lengths.long()
    if int(lengths.max()) > wavs.shape[1]:
        raise ValueError(f"a length ({int(lengths.max())}) exceeds the padded width of wavs ({wavs.shape[1]})")
    if int(lengths.min()) < min_samples:
        raise ValueError(
            f"utterance {int(lengths.argmin())} has {int(lengths.min())} samples; at least {min_samples} "
            f"({min_samples / SAMPLE_RATE * 1000:.0f} ms at 16 kHz) are needed for one frame"
        )
    if not torch.isfinite(wavs).all():
        bad = (~torch.isfinite(wavs)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"wavs contain NaN or inf values (utterances {bad})")
    return lengths


class Backbone(nn.Module):
    """A transformers wav2vec 2.0-style model (conv front-end, feature projection, positional conv, transformer
    layers: HuBERT, wav2vec 2.0, data2vec-audio; WavLM in `daisy.upstream.families`) exposed as `embed` +
    `layer(i)`, so a caller can stop at any layer. `model_types` lists the config.json model types a class runs;
    `daisy.upstream.load_backbone` picks the class for a directory."""

    model_types: tuple[str, ...] = ("hubert", "wav2vec2", "data2vec-audio")
    downsample_rate = HOP
    first_droppable_layer = 1  # layerdrop may skip layers from this one on (transformers' encoder loop)

    def __init__(self, model: PreTrainedModel, normalize_waveform: bool | None = None):
        super().__init__()
        self._check_model_type(model.config.model_type)
        self.model = model
        config = model.config
        if math.prod(config.conv_stride) != self.downsample_rate:
            hop = math.prod(config.conv_stride)
            raise ValueError(f"conv strides {config.conv_stride} give a hop of {hop} samples, not 320")
        # fairseq Large checkpoints expect each utterance normalised to zero mean, unit variance.
        if normalize_waveform is None:
            normalize_waveform = bool(getattr(config, "normalize_waveform", False))
        config.normalize_waveform = normalize_waveform
        # data2vec-audio has one architecture and its config names neither choice: its conv front-end is
        # layer-normed and its encoder post-norm. Recorded so every family answers the same questions.
        if not hasattr(config, "feat_extract_norm"):
            config.feat_extract_norm = "layer"
        if not hasattr(config, "do_stable_layer_norm"):
            config.do_stable_layer_norm = False
        self.min_samples = self._receptive_field(config)
        self._ffn_out: list | None = None  # filled by the feed-forward hooks once return_ffn is first asked for

    @classmethod
    def _check_model_type(cls, model_type: str) -> None:
        if model_type not in cls.model_types:
            raise ValueError(
                f"{cls.__name__} runs {', '.join(cls.model_types)} models, not {model_type!r}; "
                "daisy.upstream.load_backbone picks the backbone for any supported model"
            )

    @staticmethod
    def _receptive_field(config: PretrainedConfig) -> int:
        field = 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            field = (field - 1) * stride + kernel
        return field

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: PretrainedConfig) -> Backbone:
        """A randomly initialised backbone of this transformers config (HubertConfig, Wav2Vec2Config, ...)."""
        cls._check_model_type(config.model_type)
        return cls(transformers_model_class(config.model_type)(config).eval())

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Backbone:
        """Load a transformers `save_pretrained` directory of a model type this class runs (daisy model
        directories are one too) or an s3prl-converted fairseq HuBERT checkpoint file."""
        model, normalize = load_backbone_model(path, cls.model_types)
        return cls(model.eval(), normalize_waveform=normalize)

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """Write transformers' format (`config.json` + `model.safetensors`, loadable by the transformers model)
        and its feature extractor config (`preprocessor_config.json`: whether input is normalised)."""
        save_hubert(self.model, path, state_dict)

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced for `lengths` samples (transformers' own formula; a wav2vec 2.0 adapter, which
        strides only transformers' last_hidden_state further, is not run and so not counted)."""
        if getattr(self.config, "add_adapter", False):
            return self.model._get_feat_extract_output_lengths(lengths, add_adapter=False).long()
        return self.model._get_feat_extract_output_lengths(lengths).long()

    # -- stepping ---------------------------------------------------------------------------------
    def embed(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None, mask_time_indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, T) + lengths (B,) -> (state 0 of shape (B, T', D), frame mask (B, T') bool).

        `mask_time_indices` (B, T') bool: frames replaced by the learned mask embedding before the positional
        conv, as transformers' models do for masked prediction (pretraining, the teacher report)."""
        lengths = check_batch(wavs, lengths, self.min_samples)
        model = self.model
        weight = model.feature_projection.projection.weight
        # to the weights' device (callers keep batches on the CPU: `model.to(device)` is all they do) and dtype
        # (float64 from soundfile, fp16, ...)
        wavs, lengths = wavs.to(weight.device, weight.dtype), lengths.to(weight.device)
        if self.config.normalize_waveform:
            wavs = normalize_each(wavs, lengths)
        features = model.feature_extractor(wavs).transpose(1, 2)
        frames = self.frame_lengths(lengths)
        mask = torch.arange(features.shape[1], device=wavs.device)[None, :] < frames[:, None]
        x = model.feature_projection(features)
        if isinstance(x, tuple):  # all but HuBERT also return the normed conv features (for quantisation)
            x = x[0]
        if mask_time_indices is not None:
            x = torch.where(mask_time_indices[..., None], model.masked_spec_embed.to(x.dtype), x)
        x = x.masked_fill(~mask[..., None], 0.0)  # padded frames must not leak through the positional conv
        encoder = model.encoder
        x = x + encoder.pos_conv_embed(x)
        if not self.config.do_stable_layer_norm:
            x = encoder.layer_norm(x)
        return encoder.dropout(x), mask

    def attention_bias(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive key mask (B, 1, 1, T') for the attention layers; None when nothing is padded."""
        if bool(mask.all()):
            return None
        return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min

    def _run_layer(self, module: nn.Module, x: torch.Tensor, bias) -> torch.Tensor:
        """One transformers encoder layer on x, given `attention_bias`'s output (the per-family part)."""
        out = module(x, attention_mask=bias)
        return out[0] if isinstance(out, tuple) else out

    def layer(
        self,
        i: int,
        x: torch.Tensor,
        mask: torch.Tensor,
        bias=None,
        return_ffn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run transformer layer i (1-based) on state i-1 -> state i.

        `bias` is `attention_bias(mask, x.dtype)`, which callers stepping many layers may compute once.
        `return_ffn` also returns the layer's feed-forward output before the residual add and the
        layer norm (fairseq's `layer_result`, DAISY's "before-norm" head input): (state, ffn).
        """
        if not 1 <= i <= self.num_layers:
            raise ValueError(f"layer index {i} out of range 1..{self.num_layers}")
        if bias is None:
            bias = self.attention_bias(mask, x.dtype)
        if return_ffn:
            self._capture_ffn()[0] = None
        x = self._run_layer(self.model.encoder.layers[i - 1], x, bias)
        if i == self.num_layers and self.config.do_stable_layer_norm:
            x = self.model.encoder.layer_norm(x)
        if not return_ffn:
            return x
        ffn, self._ffn_out[0] = self._ffn_out[0], None
        return x, ffn

    def _capture_ffn(self) -> list:
        """The slot every layer's feed-forward output lands in. The hooks are registered once, on first
        use: adding and removing a hook at each call costs as much as a small model's exit head."""
        if self._ffn_out is None:
            self._ffn_out = [None]
            for layer in self.model.encoder.layers:
                layer.feed_forward.register_forward_hook(self._store_ffn)
        return self._ffn_out

    def _store_ffn(self, module, inputs, output) -> None:
        self._ffn_out[0] = output

    def hidden_states(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None, num_layers: int | None = None
    ) -> list[torch.Tensor]:
        """States 0..num_layers (default all: num_layers + 1 tensors of shape (B, T', D))."""
        x, mask = self.embed(wavs, lengths)
        bias = self.attention_bias(mask, x.dtype)
        states = [x]
        for i in range(1, (num_layers or self.num_layers) + 1):
            x = self.layer(i, x, mask, bias)
            states.append(x)
        return states

    def encode(
        self,
        wavs: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        layerdrop: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last state (B, T', D) and the frame mask, all layers run: what the transformers model returns
        as `last_hidden_state`. In training mode each layer is skipped with probability `layerdrop` (one draw
        per layer, in transformers' order, so a seeded run matches it)."""
        x, mask = self.embed(wavs, lengths, mask_time_indices)
        bias = self.attention_bias(mask, x.dtype)
        for i in range(1, self.num_layers + 1):
            dropped = bool(torch.rand([]) < layerdrop) and self.training and i >= self.first_droppable_layer
            if not dropped:
                x = self.layer(i, x, mask, bias)
            elif i == self.num_layers and self.config.do_stable_layer_norm:
                x = self.model.encoder.layer_norm(x)  # the final norm comes after the layers, run or not
        return x, mask

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.hidden_states(wavs, lengths)


class HubertBackbone(Backbone):
    """transformers' `HubertModel`, stepped layer by layer (and the model daisy pretrains)."""

    model_types = ("hubert",)

    @classmethod
    def from_preset(cls, name: str, seed: int | None = 0, **overrides) -> HubertBackbone:
        """A randomly initialised backbone of a named size (`tiny`, `base`, `large`)."""
        if seed is not None:
            torch.manual_seed(seed)
        return cls.from_config(preset_config(name, **overrides))


# transformers' Wav2Vec2FeatureExtractor (`zero_mean_unit_var_norm`), the preprocessor an HF-format HuBERT
# with `do_normalize` is used with: states then match it for quiet input too (-60 dBFS and below, where the
# epsilon shows). fairseq and s3prl's own HuBERT use layer_norm's 1e-5.
NORMALIZE_EPS = 1e-7


def normalize_each(wavs: torch.Tensor, lengths: torch.Tensor, eps: float = NORMALIZE_EPS) -> torch.Tensor:
    """Zero mean, unit variance over each utterance's valid samples (fairseq's `normalize: true`), dividing by
    sqrt(variance + eps). With transformers' 1e-7, input below about -70 dBFS RMS is not fully scaled up,
    exactly as transformers' feature extractor leaves it."""
    out = torch.zeros_like(wavs)
    for b, n in enumerate(lengths.tolist()):
        out[b, :n] = torch.nn.functional.layer_norm(wavs[b, :n], (n,), eps=eps)
    return out
