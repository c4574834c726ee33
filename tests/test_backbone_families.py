"""wav2vec 2.0, WavLM and data2vec-audio backbones against transformers' own models, loaded from
`save_pretrained` directories by `load_backbone`."""

import pytest
import torch
from test_backbone import LENGTHS, reference_states
from transformers import BertConfig, Data2VecAudioConfig, Wav2Vec2Config, WavLMConfig

from conftest import TINY_GEOMETRY, padded_batch, tiny_config, varied_batch
from daisy import policies
from daisy.model import EarlyExitHubert
from daisy.upstream import Backbone, HubertBackbone, WavLMBackbone, backbone_from_config, load_backbone
from daisy.upstream.checkpoints import transformers_model_class

FIELDS = TINY_GEOMETRY  # conftest's tiny HuBERT's geometry


def family_config(family: str, stable: bool = False, norm: str = "group", **overrides):
    fields = dict(FIELDS)
    if family == "data2vec-audio":  # one architecture: layer-normed convs, post-norm; a stack of pos convs
        fields.update(num_conv_pos_embeddings=3, conv_pos_kernel_size=5)
        return Data2VecAudioConfig(**fields, **overrides)
    fields.update(feat_extract_norm=norm, do_stable_layer_norm=stable)
    if family == "wavlm":  # few buckets, so that 49 frames reach the logarithmic ones
        return WavLMConfig(**fields, num_buckets=32, max_bucket_distance=64, **overrides)
    return Wav2Vec2Config(**fields, **overrides)


def saved(tmp_path, config):
    """A random transformers model of `config`, written with its own save_pretrained, loaded back by us."""
    torch.manual_seed(0)
    model = transformers_model_class(config.model_type)(config).eval()
    model.save_pretrained(tmp_path)
    return model, load_backbone(tmp_path)


VARIANTS = [
    ("wav2vec2", False, "group"),
    ("wav2vec2", True, "layer"),
    ("wavlm", False, "group"),
    ("wavlm", True, "layer"),
    ("data2vec-audio", False, "layer"),
]


@pytest.mark.parametrize("family,stable,norm", VARIANTS)
def test_loaded_backbone_reproduces_transformers_hidden_states(tmp_path, family, stable, norm):
    model, backbone = saved(tmp_path, family_config(family, stable, norm))
    assert type(backbone) is {"wavlm": WavLMBackbone}.get(family, Backbone)
    wavs, lengths = padded_batch(LENGTHS)
    expected = reference_states(model, wavs, lengths)
    with torch.no_grad():
        got = backbone.hidden_states(wavs, lengths)
    assert len(got) == len(expected) == 4
    frames = backbone.frame_lengths(lengths)
    assert frames.tolist() == model._get_feat_extract_output_lengths(lengths).tolist()
    for layer, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, layer
        for i, n in enumerate(frames.tolist()):
            torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=0, msg=f"layer {layer} utt {i}")


@pytest.mark.parametrize("family,stable,norm", VARIANTS)
def test_return_ffn_gives_each_layers_feed_forward_output(tmp_path, family, stable, norm):
    model, backbone = saved(tmp_path, family_config(family, stable, norm))
    wavs, lengths = padded_batch([9000, 6000])
    seen = []
    hooks = [
        layer.feed_forward.register_forward_hook(lambda m, a, out: seen.append(out)) for layer in model.encoder.layers
    ]
    reference_states(model, wavs, lengths)  # transformers' forward, observed by our own hooks
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        x, mask = backbone.embed(wavs, lengths)
        bias = backbone.attention_bias(mask, x.dtype)
        plain = x
        for i in range(1, backbone.num_layers + 1):
            x, ffn = backbone.layer(i, x, mask, bias, return_ffn=True)
            plain = backbone.layer(i, plain, mask)  # no bias given: the layer makes its own, the same
            torch.testing.assert_close(ffn, seen[i - 1], rtol=0, atol=1e-5)
            torch.testing.assert_close(x, plain, rtol=0, atol=0)


def test_wavlm_position_bias_is_layer_ones_carried_to_every_layer(tmp_path):
    """transformers' layer 1 computes the bias and every later layer returns it unchanged; ours is the
    same tensor, and it matters: layer 1's bucket embedding changes every layer's output."""
    model, backbone = saved(tmp_path, family_config("wavlm"))
    wavs, lengths = padded_batch([9000, 6000])
    carried = []
    hooks = [layer.register_forward_hook(lambda m, a, out: carried.append(out[1])) for layer in model.encoder.layers]
    reference_states(model, wavs, lengths)
    for hook in hooks:
        hook.remove()
    x, mask = backbone.embed(wavs, lengths)
    bias = backbone.attention_bias(mask, x.dtype)
    assert bias.position.shape == (2 * 2, x.shape[1], x.shape[1])
    assert len(carried) == 3
    for position in carried:
        torch.testing.assert_close(bias.position, position, rtol=0, atol=0)
    with torch.no_grad():
        before = backbone.hidden_states(wavs, lengths)
        backbone.model.encoder.layers[0].attention.rel_attn_embed.weight.mul_(-1.0)
        after = backbone.hidden_states(wavs, lengths)
    assert torch.equal(before[0], after[0])
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(before[1:], after[1:]))


@pytest.mark.parametrize("family,stable,norm", [("wav2vec2", True, "layer"), ("wavlm", False, "group")])
def test_encode_with_masking_and_layerdrop_matches_transformers_in_training(tmp_path, family, stable, norm):
    """Seeded training runs (dropout, masked frames, layerdrop, which WavLM never applies to its first
    layer) give the transformers model's forward exactly."""
    config = family_config(family, stable, norm, layerdrop=0.5, hidden_dropout=0.1, mask_time_prob=0.05)
    model, backbone = saved(tmp_path, config)
    model.train(), backbone.train()
    wavs, lengths = padded_batch([16000, 9000, 4321])
    frames = backbone.frame_lengths(lengths)
    valid = torch.arange(int(frames.max()))[None] < frames[:, None]
    masked = (torch.rand(valid.shape) < 0.4) & valid
    attention = (torch.arange(wavs.shape[1])[None, :] < lengths[:, None]).long()
    for seed in range(6):  # layerdrop drops other layers under each seed
        torch.manual_seed(seed)
        expected = model(wavs, attention_mask=attention, mask_time_indices=masked).last_hidden_state
        torch.manual_seed(seed)
        got, mask = backbone.encode(wavs, lengths, masked, layerdrop=config.layerdrop)
        torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=0, msg=f"seed {seed}")


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm", "data2vec-audio"])
def test_early_exit_runs_on_other_families(tmp_path, family):
    """EarlyExitHubert on a wav2vec 2.0, WavLM or data2vec-audio backbone: the live path (which trims the batch as
    utterances leave, so WavLM's bias is remade for the shorter width) equals the policy applied offline."""
    _, backbone = saved(tmp_path, family_config(family, norm="layer"))
    model = EarlyExitHubert.from_backbone(backbone, 12).eval()
    with torch.no_grad():
        for head in model.heads.heads:
            head.weight.normal_(0.0, 300.0 / head.in_features**0.5)  # spread the entropies
    wavs, lengths = varied_batch(8, seed=1)
    with torch.no_grad():
        trace = model.trace(wavs, lengths)
        model.policy = policies.Entropy(threshold=float(trace.scores["entropy"][:, 0].median()))
        live = model(wavs, lengths)
    exits = model.policy.exit_layers(trace.scores)
    assert exits.tolist() == live.exit_layers.tolist()
    assert len(set(exits.tolist())) > 1  # some left early, so the batch really was trimmed
    offline = trace.select(exits, model.policy)
    for i, n in enumerate(live.lengths.tolist()):
        torch.testing.assert_close(live.last_hidden_state[i, :n], offline.last_hidden_state[i, :n], atol=1e-5, rtol=0)


def test_families_save_and_load_through_their_own_class(tmp_path):
    _, backbone = saved(tmp_path / "w", family_config("wavlm"))
    backbone.save_pretrained(tmp_path / "again")
    again = load_backbone(tmp_path / "again")
    assert isinstance(again, WavLMBackbone)
    wavs, lengths = padded_batch([5000, 3000])
    with torch.no_grad():
        for a, b in zip(backbone.hidden_states(wavs, lengths), again.hidden_states(wavs, lengths)):
            torch.testing.assert_close(a, b)
    assert isinstance(load_backbone(tmp_path / "w"), WavLMBackbone)
    torch.manual_seed(0)
    HubertBackbone.from_config(tiny_config(False)).save_pretrained(tmp_path / "h")
    assert type(load_backbone(tmp_path / "h")) is HubertBackbone


def test_a_family_is_refused_by_another_familys_class(tmp_path):
    saved(tmp_path, family_config("wavlm"))
    with pytest.raises(ValueError, match="config.json describes a 'wavlm' model, not a HuBERT$"):
        HubertBackbone.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a HuBERT, wav2vec 2.0 or data2vec-audio$"):
        Backbone.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="HubertBackbone runs hubert models, not 'wav2vec2'"):
        HubertBackbone.from_config(family_config("wav2vec2"))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="'bert' model, not a HuBERT, wav2vec 2.0, WavLM or data2vec-audio$"):
        load_backbone(tmp_path)
    with pytest.raises(
        ValueError, match="no backbone for model type 'bert' \\(supported: hubert, wav2vec2, wavlm, data2"
    ):
        backbone_from_config(BertConfig())
    with pytest.raises(ValueError, match="unsupported model type 'bert'"):
        transformers_model_class("bert")


def test_a_wav2vec2_adapter_is_left_out(tmp_path):
    """transformers runs a wav2vec 2.0 adapter on last_hidden_state only (striding it further); the layer
    states, ours and its hidden_states, come before it, with the conv front-end's frame count."""
    config = family_config("wav2vec2", add_adapter=True, adapter_stride=2, num_adapter_layers=1)
    model, backbone = saved(tmp_path, config)
    wavs, lengths = padded_batch([9000, 6000])
    frames = backbone.frame_lengths(lengths)
    assert frames.tolist() == [27, 18]  # floor((n - 400) / 320) + 1
    attention = (torch.arange(wavs.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        out = model(wavs, attention_mask=attention, output_hidden_states=True)
        got = backbone.hidden_states(wavs, lengths)
    assert out.last_hidden_state.shape[1] < got[-1].shape[1] == 27
    for a, b in zip(got, out.hidden_states):
        for i, n in enumerate(frames.tolist()):
            torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm"])
def test_a_daisy_model_on_another_family_saves_and_loads_back(tmp_path, family):
    """A daisy model directory keeps its backbone's family: loaded back, it exits and computes as it did."""
    _, backbone = saved(tmp_path / "base", family_config(family, norm="layer"))
    model = EarlyExitHubert.from_backbone(backbone, 12, targets="kmeans").eval()
    model.policy = policies.Entropy(threshold=2.4)
    model.save_pretrained(tmp_path / "daisy")
    loaded = EarlyExitHubert.from_pretrained(tmp_path / "daisy")
    assert type(loaded.backbone) is type(backbone)
    wavs, lengths = varied_batch(4, seed=2)
    with torch.no_grad():
        a, b = model(wavs, lengths), loaded(wavs, lengths)
    assert a.exit_layers.tolist() == b.exit_layers.tolist()
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
