"""Loading backbone weights from the formats users have on disk.

- a transformers `save_pretrained` directory (`config.json` + weights) of a HuBERT, wav2vec 2.0, WavLM or
  data2vec-audio model (config.json's model_type says which); daisy model directories are one;
- an s3prl "converted" fairseq checkpoint: a torch pickle holding `task_cfg`, `model_cfg`,
  `model_weight` (fairseq parameter names) and `dictionaries_symbols`, as written by s3prl's
  `upstream/hubert/convert.py`. Its weights are renamed onto transformers' `HubertModel` with the
  name table below; the masked-prediction head (`final_proj`, `label_embs_concat`) is returned apart.
  It is unpickled with `weights_only=True` (plus argparse.Namespace): a pickle naming anything else is refused.
"""

from __future__ import annotations

import argparse
import ast
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    PreTrainedModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMModel,
)

from daisy.io import recover_dir  # a leaf module (stdlib only): no import cycle
from daisy.upstream.geometry import SAMPLE_RATE

PREPROCESSOR_FILE = "preprocessor_config.json"  # transformers' feature extractor settings


@dataclass
class ConvertedCheckpoint:
    config: HubertConfig
    state_dict: dict[str, torch.Tensor]
    normalize_waveform: bool
    # fairseq's masked-prediction head, when the checkpoint has one: final_proj.{weight,bias},
    # label_embs_concat (sum of classes over label sets, final_dim)
    pretraining_head: dict[str, torch.Tensor] = field(default_factory=dict)
    num_classes: list[int] = field(default_factory=list)


# config.json's model_type -> the transformers model that reads it, and its name in messages
TRANSFORMERS_MODELS: dict[str, tuple[type[PreTrainedModel], str]] = {
    "hubert": (HubertModel, "HuBERT"),
    "wav2vec2": (Wav2Vec2Model, "wav2vec 2.0"),
    "wavlm": (WavLMModel, "WavLM"),
    "data2vec-audio": (Data2VecAudioModel, "data2vec-audio"),
}


def transformers_model_class(model_type: str) -> type[PreTrainedModel]:
    if model_type not in TRANSFORMERS_MODELS:
        raise ValueError(f"unsupported model type {model_type!r} (supported: {', '.join(TRANSFORMERS_MODELS)})")
    return TRANSFORMERS_MODELS[model_type][0]


def _names(model_types: tuple[str, ...]) -> str:
    """("hubert",) -> "HuBERT"; several -> "HuBERT, wav2vec 2.0 or WavLM"."""
    names = [TRANSFORMERS_MODELS[t][1] for t in model_types]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def load_backbone_model(path: str | Path, model_types: tuple[str, ...] = ("hubert",)) -> tuple[PreTrainedModel, bool]:
    """(transformers model in eval mode, whether waveforms are normalised per utterance) from `path`, which
    must hold one of `model_types` (config.json's model_type; an s3prl checkpoint file is a HuBERT)."""
    path = Path(path)
    recover_dir(path)  # a model folder whose rewrite was killed mid-swap is put back first
    if path.is_dir():
        if not (path / "config.json").is_file():
            hint = f"; did you mean {path / 'model'}?" if (path / "model" / "config.json").is_file() else ""
            raise FileNotFoundError(f"{path}: not a model directory (no config.json){hint}")
        try:  # the model type first: transformers would warn before our error
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{path}/config.json: not a model config ({e})") from e
        if model_type not in model_types:
            raise ValueError(f"{path}/config.json describes a {model_type!r} model, not a {_names(model_types)}")
        model_class, name = TRANSFORMERS_MODELS[model_type]
        config = model_class.config_class.from_pretrained(path)
        # weights may be stored in half precision (the shipped model is); compute runs in float32
        try:
            model = model_class.from_pretrained(path).float()
        except Exception as e:  # no weights file, a corrupt one (safetensors' own error type), wrong shapes
            raise ValueError(f"{path}: cannot load the {name} weights ({e})") from e
        return model.eval(), _normalizes(path, config)
    if path.is_file():
        if "hubert" not in model_types:
            raise ValueError(f"{path}: a checkpoint file is read as an s3prl HuBERT, not a {_names(model_types)}")
        converted = read_s3prl_checkpoint(path)
        model = HubertModel(converted.config)
        missing, unexpected = model.load_state_dict(converted.state_dict, strict=False)
        missing = [k for k in missing if k != "masked_spec_embed"]
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not fit a HuBERT of this config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.eval(), converted.normalize_waveform
    raise FileNotFoundError(f"{path}: no such checkpoint file or directory")


def _normalizes(path: Path, config) -> bool:
    """Whether `path`'s model takes each utterance at zero mean, unit variance: config.json's
    normalize_waveform (written by daisy), else its feature extractor's do_normalize (as transformers'
    own pipeline would apply it), else not."""
    if hasattr(config, "normalize_waveform"):
        return bool(config.normalize_waveform)
    if not (path / PREPROCESSOR_FILE).is_file():
        return False
    try:
        return bool(json.loads((path / PREPROCESSOR_FILE).read_text()).get("do_normalize", False))
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path / PREPROCESSOR_FILE}: not a feature extractor config ({e})") from e


def save_hubert(model: HubertModel, path: str | Path, state_dict: dict | None = None) -> None:
    """transformers' format (config.json + model.safetensors) and a feature extractor config, so that
    users of transformers' own pipeline normalise the input (or not) as this model expects."""
    model.save_pretrained(path, state_dict=state_dict)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=bool(getattr(model.config, "normalize_waveform", False)),
        return_attention_mask=model.config.feat_extract_norm == "layer",  # transformers' convention
    ).save_pretrained(path)


# What a converted checkpoint may hold beyond tensors and plain containers: older fairseq configs are
# argparse.Namespace objects. Nothing else is unpickled (`weights_only=True`): a pickle runs whatever
# callable it names, so a checkpoint from the internet must not be able to name any.
CHECKPOINT_GLOBALS = [argparse.Namespace]


def _torch_load(path: Path) -> dict:
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a paragraph; the line that matters names the global (or the opcode) refused
        if named := re.search(r"GLOBAL ([\w.]+)", str(err)):
            raise ValueError(
                f"{path}: refused: its pickle would run {named.group(1)}; only tensors, plain containers "
                "and argparse.Namespace are loaded (re-save it with plain dicts and tensors)"
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(err))
        detail = detail.group(1).strip() if detail else str(err).splitlines()[0]
        raise ValueError(f"{path}: not a readable torch checkpoint (UnpicklingError: {detail})") from None
    except Exception as err:  # garbage bytes fail in many ways inside the unpickler (KeyError, IndexError, ...)
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", evaluated
    without `eval`: only lists, tuples, integers, + and * are allowed."""

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported conv_feature_layers expression: {spec!r}")

    layers = value(ast.parse(spec, mode="eval").body)
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {spec!r}")
    return layers


def _as_dict(cfg) -> dict:
    if isinstance(cfg, dict):
        return dict(cfg)
    if hasattr(cfg, "items"):  # omegaconf DictConfig and similar mappings
        return {k: cfg[k] for k in cfg}
    return dict(vars(cfg))  # argparse.Namespace from older fairseq


def hf_config_from_fairseq(model_cfg: dict) -> HubertConfig:
    conv = parse_conv_layers(model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
    return HubertConfig(
        hidden_size=model_cfg.get("encoder_embed_dim", 768),
        num_hidden_layers=model_cfg.get("encoder_layers", 12),
        num_attention_heads=model_cfg.get("encoder_attention_heads", 12),
        intermediate_size=model_cfg.get("encoder_ffn_embed_dim", 3072),
        hidden_act=model_cfg.get("activation_fn", "gelu"),
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        feat_extract_norm="group" if model_cfg.get("extractor_mode", "default") == "default" else "layer",
        do_stable_layer_norm=bool(model_cfg.get("layer_norm_first", False)),
        num_conv_pos_embeddings=model_cfg.get("conv_pos", 128),
        num_conv_pos_embedding_groups=model_cfg.get("conv_pos_groups", 16),
        feat_proj_layer_norm=True,
        classifier_proj_size=model_cfg.get("final_dim", 256),
        layer_norm_eps=1e-5,
    )


# fairseq name -> transformers name; {i} is a layer index.
_LAYER_NAMES = {
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_POS_WEIGHT = "encoder.pos_conv_embed.conv.parametrizations.weight"
_TOP_NAMES = {
    "post_extract_proj": "feature_projection.projection",
    "layer_norm": "feature_projection.layer_norm",
    "encoder.layer_norm": "encoder.layer_norm",
    "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
    # weight norm: g (magnitude) and v (direction), in the old or the parametrization naming
    "encoder.pos_conv.0.weight_g": f"{_POS_WEIGHT}.original0",
    "encoder.pos_conv.0.weight_v": f"{_POS_WEIGHT}.original1",
    "encoder.pos_conv.0.parametrizations.weight.original0": f"{_POS_WEIGHT}.original0",
    "encoder.pos_conv.0.parametrizations.weight.original1": f"{_POS_WEIGHT}.original1",
    "mask_emb": "masked_spec_embed",
}
_HEAD_NAMES = ("final_proj.weight", "final_proj.bias", "label_embs_concat")


def rename_fairseq_weights(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Split fairseq HuBERT weights into (transformers HubertModel state dict, pretraining head)."""
    state, head = {}, {}
    for name, tensor in weights.items():
        if name in _HEAD_NAMES:
            head[name] = tensor
            continue
        new = _rename_one(name)
        if new is None:
            raise ValueError(f"unknown fairseq HuBERT parameter {name!r}")
        state[new] = tensor
    return state, head


def _rename_one(name: str) -> str | None:
    stem, _, leaf = name.rpartition(".")
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{leaf}"
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", stem):
        if m.group(2) in _LAYER_NAMES:
            return f"encoder.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{leaf}"
    # conv front-end: "<i>.0" is the conv, "0.2" the group norm of layer 0, "<i>.2.1" a layer norm
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)", stem):
        part = "conv" if m.group(2) == "0" else "layer_norm"
        return f"feature_extractor.conv_layers.{m.group(1)}.{part}.{leaf}"
    return None


def read_s3prl_checkpoint(path: str | Path) -> ConvertedCheckpoint:
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not {"model_cfg", "model_weight"} <= set(ckpt):
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path}: not an s3prl-converted HuBERT checkpoint "
            f"(expected keys task_cfg, model_cfg, model_weight; found {found})"
        )
    model_cfg = _as_dict(ckpt["model_cfg"])
    task_cfg = _as_dict(ckpt.get("task_cfg") or {})
    config = hf_config_from_fairseq(model_cfg)
    state, head = rename_fairseq_weights(ckpt["model_weight"])
    if "feature_projection.projection.weight" not in state:
        # fairseq omits post_extract_proj when conv and encoder widths match: an identity map
        width = config.hidden_size
        state["feature_projection.projection.weight"] = torch.eye(width)
        state["feature_projection.projection.bias"] = torch.zeros(width)
    num_classes = [len(s) for s in ckpt.get("dictionaries_symbols", [])]
    config.normalize_waveform = bool(task_cfg.get("normalize", False))
    return ConvertedCheckpoint(config, state, config.normalize_waveform, head, num_classes)
