"""The stepping backbone against transformers' own HubertModel."""

import pytest
import torch
import transformers
from transformers import HubertModel

from conftest import padded_batch, tiny_config
from daisy.upstream import PRESETS, HubertBackbone, preset_config

LENGTHS = [16000, 9000, 4321, 400]


def reference_states(model: HubertModel, wavs, lengths):
    """transformers' hidden states, the last one taken after the encoder's final layer norm.

    transformers 4.x returns that itself; 5.x records pre-norm models' last layer before the final
    norm in `hidden_states` and only normalises `last_hidden_state`. We follow 4.x, fairseq and s3prl.
    """
    attention = (torch.arange(wavs.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        out = model(wavs, attention_mask=attention, output_hidden_states=True)
    if int(transformers.__version__.split(".")[0]) < 5:
        torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    return (*out.hidden_states[:-1], out.last_hidden_state)


@pytest.mark.parametrize("stable,norm", [(False, "group"), (False, "layer"), (True, "layer")])
def test_stepping_reproduces_transformers_hidden_states(stable, norm):
    torch.manual_seed(0)
    backbone = HubertBackbone.from_config(tiny_config(stable=stable, norm=norm))
    wavs, lengths = padded_batch(LENGTHS)
    expected = reference_states(backbone.model, wavs, lengths)
    with torch.no_grad():
        got = backbone.hidden_states(wavs, lengths)
    assert len(got) == len(expected) == backbone.num_layers + 1
    frames = backbone.frame_lengths(lengths)
    for layer, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, layer
        for i, n in enumerate(frames.tolist()):  # padded frames carry no meaning in either
            torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=0, msg=f"layer {layer} utt {i}")


def test_stable_variant_normalises_only_the_last_state():
    torch.manual_seed(0)
    backbone = HubertBackbone.from_config(tiny_config(stable=True))
    wavs, lengths = padded_batch([8000])
    with torch.no_grad():
        states = backbone.hidden_states(wavs, lengths)
    last = states[-1][0]
    torch.testing.assert_close(last.mean(-1), torch.zeros(last.shape[0]), atol=1e-4, rtol=0)
    assert states[1][0].mean(-1).abs().max() > 1e-3


def test_truncated_run_is_a_prefix_of_the_full_run(tiny_backbone):
    wavs, lengths = padded_batch([6000, 3000])
    with torch.no_grad():
        full = tiny_backbone.hidden_states(wavs, lengths)
        part = tiny_backbone.hidden_states(wavs, lengths, num_layers=2)
    assert len(part) == 3
    for a, b in zip(part, full):
        torch.testing.assert_close(a, b)


def test_geometry(tiny_backbone):
    assert tiny_backbone.num_layers == 3
    assert tiny_backbone.hidden_size == 16
    assert tiny_backbone.downsample_rate == 320
    assert tiny_backbone.min_samples == 400
    # transformers: floor((n - 400) / 320) + 1 frames
    assert tiny_backbone.frame_lengths(torch.tensor([400, 719, 720, 16000])).tolist() == [1, 1, 2, 49]


def test_embed_returns_frame_mask(tiny_backbone):
    wavs, lengths = padded_batch([16000, 4000])
    x, mask = tiny_backbone.embed(wavs, lengths)
    assert x.shape == (2, 49, 16)
    assert mask.sum(1).tolist() == [49, 12]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_their_documented_sizes(name):
    config = preset_config(name)
    layers, width = {"tiny": (6, 256), "base": (12, 768), "large": (24, 1024)}[name]
    assert (config.num_hidden_layers, config.hidden_size) == (layers, width)
    assert config.do_stable_layer_norm == (name == "large")


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_save_and_load_round_trip_through_transformers(tmp_path, tiny_backbone):
    tiny_backbone.save_pretrained(tmp_path)
    plain = HubertModel.from_pretrained(tmp_path)  # transformers reads it without us
    loaded = HubertBackbone.from_pretrained(tmp_path)
    wavs, lengths = padded_batch([5000, 3000])
    with torch.no_grad():
        for a, b, c in zip(
            tiny_backbone.hidden_states(wavs, lengths),
            loaded.hidden_states(wavs, lengths),
            reference_states(plain, wavs, lengths),
        ):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(a[0], c[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: (torch.zeros(16000), None), "rank 1"),
        (lambda: (torch.zeros(1, 1, 16000), None), "rank 3"),
        (lambda: (torch.zeros(2, 16000, dtype=torch.int16), None), "float tensor"),
        (lambda: (torch.full((2, 16000), float("nan")), None), "NaN or inf values \\(utterances \\[0, 1\\]\\)"),
        (lambda: (torch.zeros(2, 16000), torch.tensor([16000, 399])), "utterance 1 has 399 samples"),
        (lambda: (torch.zeros(2, 16000), torch.tensor([16001, 500])), "exceeds the padded width"),
        (lambda: (torch.zeros(2, 16000), torch.tensor([16000])), "lengths must have shape \\(2,\\)"),
        (lambda: (torch.zeros(2, 16000), torch.tensor([1.0, 2.0])), "integer sample counts"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(tiny_backbone, make, message):
    wavs, lengths = make()
    with pytest.raises(ValueError, match=message):
        tiny_backbone.hidden_states(wavs, lengths)


def test_layer_index_is_checked(tiny_backbone):
    x, mask = tiny_backbone.embed(*padded_batch([4000]))
    with pytest.raises(ValueError, match="layer index 4 out of range 1..3"):
        tiny_backbone.layer(4, x, mask)


@pytest.mark.parametrize("stable", [False, True])
def test_return_ffn_gives_each_layers_feed_forward_output(stable):
    torch.manual_seed(0)
    backbone = HubertBackbone(HubertModel(tiny_config(stable)).eval())
    wavs, lengths = padded_batch([9000, 6000])
    seen = []
    hooks = [
        layer.feed_forward.register_forward_hook(lambda m, a, out: seen.append(out))
        for layer in backbone.model.encoder.layers
    ]
    reference_states(backbone.model, wavs, lengths)  # transformers' forward, observed by our own hooks
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        x, mask = backbone.embed(wavs, lengths)
        plain = x
        for i in range(1, backbone.num_layers + 1):
            x, ffn = backbone.layer(i, x, mask, return_ffn=True)
            plain = backbone.layer(i, plain, mask)  # asking for the FFN output changes nothing else
            torch.testing.assert_close(ffn, seen[i - 1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(x, plain, rtol=0, atol=0)


@pytest.mark.parametrize("stable,norm", [(False, "group"), (True, "layer")])
def test_encode_with_masking_and_layerdrop_matches_transformers_in_training(stable, norm):
    """Pretraining and the teacher report run the backbone's own layer stepping: in training mode, with
    masked frames, dropout and layerdrop, a seeded run gives transformers' HubertModel forward exactly."""
    torch.manual_seed(0)
    config = tiny_config(stable=stable, norm=norm, layerdrop=0.5, hidden_dropout=0.1, activation_dropout=0.1)
    backbone = HubertBackbone.from_config(config).train()
    wavs, lengths = padded_batch([16000, 9000, 4321])
    frames = backbone.frame_lengths(lengths)
    valid = torch.arange(int(frames.max()))[None] < frames[:, None]
    masked = (torch.rand(valid.shape) < 0.4) & valid
    attention = (torch.arange(wavs.shape[1])[None, :] < lengths[:, None]).long()
    for seed in range(4):  # layerdrop drops other layers under each seed
        torch.manual_seed(seed)
        expected = backbone.model(wavs, attention_mask=attention, mask_time_indices=masked).last_hidden_state
        torch.manual_seed(seed)
        got, mask = backbone.encode(wavs, lengths, masked, layerdrop=config.layerdrop)
        torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=0, msg=f"seed {seed}")
        assert torch.equal(mask, valid)
    assert not torch.equal(got[masked], backbone.encode(wavs, lengths)[0][masked])  # the mask did something


def test_load_backbone_gives_the_hubert_backbone_for_hubert_directories(tmp_path, tiny_backbone):
    from daisy.upstream import Backbone, load_backbone

    tiny_backbone.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path)
    assert type(loaded) is HubertBackbone and isinstance(loaded, Backbone)
    wavs, lengths = padded_batch([5000, 3000])
    with torch.no_grad():
        for a, b in zip(tiny_backbone.hidden_states(wavs, lengths), loaded.hidden_states(wavs, lengths)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_backbone_reads_s3prl_checkpoints_as_hubert(tmp_path):
    from daisy.upstream import WavLMBackbone, load_backbone

    s3prl_test = pytest.importorskip("test_s3prl_checkpoint")
    s3prl_test.make_s3prl_checkpoint(tmp_path / "h.pt", layer_norm_first=True, extractor_mode="layer_norm")
    loaded = load_backbone(tmp_path / "h.pt")
    assert type(loaded) is HubertBackbone and loaded.config.do_stable_layer_norm
    wavs, lengths = padded_batch([5000, 3000])
    with torch.no_grad():
        expected = HubertBackbone.from_pretrained(tmp_path / "h.pt").hidden_states(wavs, lengths)
        for a, b in zip(expected, loaded.hidden_states(wavs, lengths)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="h.pt: a checkpoint file is read as an s3prl HuBERT, not a WavLM$"):
        WavLMBackbone.from_pretrained(tmp_path / "h.pt")


def test_hubert_backbone_refuses_other_models():
    from transformers import WavLMConfig, WavLMModel

    with pytest.raises(
        ValueError, match="HubertBackbone runs hubert models, not 'wavlm'; daisy.upstream.load_backbone"
    ):
        HubertBackbone(
            WavLMModel(WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, conv_dim=(8,) * 7))
        )
