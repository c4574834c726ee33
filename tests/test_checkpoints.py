"""Checkpoint format handling that needs no s3prl."""

import argparse
import os
import pickletools
import shlex
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from daisy.apps.cli import app
from daisy.training.train_heads import prepare_model
from daisy.upstream import HubertBackbone
from daisy.upstream.checkpoints import _torch_load, parse_conv_layers, read_s3prl_checkpoint, rename_fairseq_weights


def test_conv_spec_is_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    with pytest.raises(ValueError, match="unsupported"):
        parse_conv_layers("__import__('os').system('true')")


def test_fairseq_names_map_onto_transformers():
    weights = {
        n: torch.zeros(1)
        for n in [
            "feature_extractor.conv_layers.0.0.weight",
            "feature_extractor.conv_layers.0.2.weight",
            "feature_extractor.conv_layers.3.2.1.bias",
            "encoder.layers.11.self_attn.q_proj.weight",
            "encoder.layers.0.fc2.bias",
            "encoder.pos_conv.0.weight_g",
            "post_extract_proj.weight",
            "layer_norm.bias",
            "final_proj.weight",
            "label_embs_concat",
        ]
    }
    state, head = rename_fairseq_weights(weights)
    assert sorted(state) == sorted(
        [
            "feature_extractor.conv_layers.0.conv.weight",
            "feature_extractor.conv_layers.0.layer_norm.weight",
            "feature_extractor.conv_layers.3.layer_norm.bias",
            "encoder.layers.11.attention.q_proj.weight",
            "encoder.layers.0.feed_forward.output_dense.bias",
            "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
            "feature_projection.projection.weight",
            "feature_projection.layer_norm.bias",
        ]
    )
    assert sorted(head) == ["final_proj.weight", "label_embs_concat"]
    with pytest.raises(ValueError, match="unknown fairseq HuBERT parameter 'encoder.mystery'"):
        rename_fairseq_weights({"encoder.mystery": torch.zeros(1)})


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "not a readable torch checkpoint"),
        (b"not a pickle at all", "not a readable torch checkpoint"),
        (b"hi\n", "not a readable torch checkpoint"),  # the unpickler fails with a KeyError here
        (b"RIFF$\x00\x00\x00WAVEfmt ", "not a readable torch checkpoint"),  # a wav: an IndexError
    ],
)
def test_unreadable_checkpoint_files_are_named(tmp_path, content, message):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"broken.pt: {message}"):
        HubertBackbone.from_pretrained(path)


def test_foreign_pickles_and_missing_paths_are_named(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an s3prl-converted HuBERT checkpoint"):
        HubertBackbone.from_pretrained(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="nowhere: no such checkpoint"):
        HubertBackbone.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no config.json\)$"):
        HubertBackbone.from_pretrained(tmp_path)
    (tmp_path / "model").mkdir()  # a pretraining run folder: its model is one level down
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no config.json\); did you mean .*model\?"):
        HubertBackbone.from_pretrained(tmp_path)


def test_a_transformers_feature_extractor_that_normalises_is_honoured(tmp_path):
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    from daisy.upstream import preset_config

    torch.manual_seed(0)
    reference = HubertModel(preset_config("tiny", num_hidden_layers=2)).eval()
    reference.save_pretrained(tmp_path / "hf")  # as on the hub: config.json without daisy's normalize_waveform
    wav = 0.05 * torch.randn(8000) + 0.01
    assert not HubertBackbone.from_pretrained(tmp_path / "hf").config.normalize_waveform
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    extractor.save_pretrained(tmp_path / "hf")
    backbone = HubertBackbone.from_pretrained(tmp_path / "hf")
    assert backbone.config.normalize_waveform
    inputs = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():  # ours equals transformers' own pipeline: feature extractor, then the model
        expected = reference(inputs, output_hidden_states=True).hidden_states
        for ours, theirs in zip(backbone.hidden_states(wav[None]), expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    backbone.save_pretrained(tmp_path / "ours")  # and writes its own setting for transformers' pipeline
    assert Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "ours").do_normalize
    assert HubertBackbone.from_pretrained(tmp_path / "ours").config.normalize_waveform
    config = (tmp_path / "hf" / "config.json").read_text()
    (tmp_path / "hf" / "preprocessor_config.json").write_text("{not json")
    assert "normalize_waveform" not in config
    with pytest.raises(ValueError, match="preprocessor_config.json: not a feature extractor config"):
        HubertBackbone.from_pretrained(tmp_path / "hf")


def test_a_config_of_another_model_or_none_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "wav2vec2"}')
    with pytest.raises(ValueError, match="config.json describes a 'wav2vec2' model, not a HuBERT"):
        HubertBackbone.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="config.json: not a model config"):
        HubertBackbone.from_pretrained(tmp_path)


class RunsCode:
    """A pickle payload: unpickling it runs a shell command (here: one that creates `marker`)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def hostile(tmp_path):
    """An s3prl-shaped checkpoint whose config, once unpickled, would have run a command."""
    marker = tmp_path / "the_code_ran"
    torch.save({"task_cfg": {}, "model_cfg": RunsCode(marker), "model_weight": {}}, tmp_path / "evil.pt")
    return tmp_path / "evil.pt", marker


def test_a_checkpoint_whose_pickle_runs_code_is_refused_unrun(hostile):
    path, marker = hostile
    refused = r"evil.pt: refused: its pickle would run \w+\.system; only tensors"
    for load in (HubertBackbone.from_pretrained, read_s3prl_checkpoint, prepare_model):  # API, train-heads
        with pytest.raises(ValueError, match=refused):
            load(path)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and "evil.pt: refused: its pickle would run" in result.output
    assert not marker.exists()
    # the payload is live (an unsafe load would run it): its pickle calls os.system, read without unpickling
    with zipfile.ZipFile(path) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(pickled))
    assert any(op.name == "GLOBAL" and arg.endswith(" system") for op, arg, _ in ops)
    assert any(isinstance(arg, str) and arg.startswith("touch ") and str(marker) in arg for _, arg, _ in ops)


def test_a_transformers_folder_with_a_hostile_pickle_is_refused_unrun(hostile, tmp_path):
    from transformers import HubertModel

    from daisy.upstream import preset_config

    path, marker = hostile
    HubertModel(preset_config("tiny", num_hidden_layers=2)).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    path.rename(tmp_path / "hf" / "pytorch_model.bin")  # transformers' older weights file: a pickle
    with pytest.raises(ValueError, match=r"hf: cannot load the HuBERT weights \("):  # transformers says why
        HubertBackbone.from_pretrained(tmp_path / "hf")
    assert not marker.exists()


def test_a_fairseq_namespace_config_is_allowed(tmp_path):
    config = argparse.Namespace(encoder_layers=2, normalize=True)
    torch.save({"model_cfg": config, "model_weight": {"w": torch.ones(2)}}, tmp_path / "ns.pt")
    loaded = _torch_load(tmp_path / "ns.pt")
    assert loaded["model_cfg"] == config and torch.equal(loaded["model_weight"]["w"], torch.ones(2))
