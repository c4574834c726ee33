"""Loading s3prl-converted fairseq HuBERT checkpoints, checked against s3prl's own HubertModel."""

import argparse

import pytest
import torch

from conftest import padded_batch
from daisy.upstream import HubertBackbone
from daisy.upstream.checkpoints import read_s3prl_checkpoint

hubert_model = pytest.importorskip(
    "s3prl.upstream.hubert.hubert_model", reason="s3prl extra not installed (pip install 'daisy-speech[s3prl]')"
)

CONV = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"


def make_s3prl_checkpoint(path, layer_norm_first: bool, extractor_mode: str, normalize=False, namespace=False):
    """A randomly initialised s3prl HubertModel, saved the way s3prl's convert.py saves fairseq weights
    (`namespace`: its configs as argparse.Namespace, as older fairseq kept them)."""
    model_cfg = dict(
        extractor_mode=extractor_mode,
        encoder_layers=3,
        encoder_embed_dim=24,
        encoder_ffn_embed_dim=40,
        encoder_attention_heads=2,
        conv_feature_layers=CONV,
        conv_pos=16,
        conv_pos_groups=4,
        conv_bias=extractor_mode == "layer_norm",
        layer_norm_first=layer_norm_first,
        final_dim=12,
        label_rate=50,
    )
    task_cfg = dict(sample_rate=16000, label_rate=50, normalize=normalize)
    torch.manual_seed(0)
    cfg = hubert_model.HubertConfig(**model_cfg)
    model = hubert_model.HubertModel(cfg, hubert_model.HubertPretrainingConfig(**task_cfg), [list(range(7))])
    with torch.no_grad():  # fairseq's init leaves layer norms at identity; perturb so a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    wrap = argparse.Namespace if namespace else dict
    torch.save(
        {
            "task_cfg": wrap(**task_cfg),
            "model_cfg": wrap(**model_cfg),
            "model_weight": model.state_dict(),
            "dictionaries_symbols": [list(range(7))],
        },
        path,
    )
    return model.eval()


def s3prl_states(model, wav):
    """All layer states of one unpadded utterance from s3prl's model (state 0 via a pre-hook)."""
    captured = {}
    hook = model.encoder.layers[0].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        layers = [model.extract_features(wav, output_layer=i)[0] for i in range(1, len(model.encoder.layers))]
        layers.append(model.extract_features(wav)[0])
    hook.remove()
    # fairseq pads the layer inputs to an even length (required_seq_len_multiple); drop that frame
    return [captured["x"].transpose(0, 1)[:, : layers[0].shape[1]]] + layers


@pytest.mark.parametrize("layer_norm_first,mode", [(False, "default"), (False, "layer_norm"), (True, "layer_norm")])
def test_converted_checkpoint_matches_s3prl(tmp_path, layer_norm_first, mode):
    reference = make_s3prl_checkpoint(tmp_path / "hubert.pt", layer_norm_first, mode)
    backbone = HubertBackbone.from_pretrained(tmp_path / "hubert.pt")
    assert backbone.config.do_stable_layer_norm == layer_norm_first
    for n in (16000, 5000):
        wav, lengths = padded_batch([n], seed=n)
        with torch.no_grad():
            ours = backbone.hidden_states(wav, lengths)
        theirs = s3prl_states(reference, wav)
        assert len(ours) == len(theirs) == 4
        for layer, (a, b) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"layer {layer}")


def test_converted_checkpoint_keeps_pretraining_head_and_normalisation(tmp_path):
    reference = make_s3prl_checkpoint(tmp_path / "h.pt", True, "layer_norm", normalize=True)
    converted = read_s3prl_checkpoint(tmp_path / "h.pt")
    torch.testing.assert_close(converted.pretraining_head["label_embs_concat"], reference.label_embs_concat.data)
    torch.testing.assert_close(converted.pretraining_head["final_proj.weight"], reference.final_proj.weight.data)
    assert converted.num_classes == [7]
    backbone = HubertBackbone.from_pretrained(tmp_path / "h.pt")
    assert backbone.config.normalize_waveform
    wav, lengths = padded_batch([6000])
    with torch.no_grad():
        ours = backbone.hidden_states(wav * 7.0, lengths)[-1]
        theirs = reference.extract_features(torch.nn.functional.layer_norm(wav * 7.0, wav.shape))[0]
    torch.testing.assert_close(ours, theirs, atol=3e-5, rtol=0)  # epsilons differ: 1e-10 (normalize_each), 1e-5


def test_a_checkpoint_with_namespace_configs_loads_safely(tmp_path):
    reference = make_s3prl_checkpoint(tmp_path / "ns.pt", False, "default", normalize=True, namespace=True)
    backbone = HubertBackbone.from_pretrained(tmp_path / "ns.pt")  # a weights-only load, Namespace allowed
    assert backbone.config.normalize_waveform and backbone.num_layers == 3
    wav, lengths = padded_batch([6000])
    with torch.no_grad():
        ours = backbone.hidden_states(wav, lengths)[-1]
        theirs = reference.extract_features(torch.nn.functional.layer_norm(wav, wav.shape))[0]
    torch.testing.assert_close(ours, theirs, atol=3e-5, rtol=0)
