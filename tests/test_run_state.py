"""Run states (safetensors + JSON, atomic), fingerprints and stage records."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from daisy import run_state
from daisy.run_state import (
    StageRecords,
    fingerprint,
    load_optimizer_state,
    load_state,
    optimizer_state,
    read_state_meta,
    save_state,
)


@dataclass
class _Settings:
    steps: int = 3
    snr: tuple = (0.0, 10.0)


def test_fingerprint_tells_settings_tensors_and_files_apart(tmp_path):
    assert fingerprint(_Settings()) == fingerprint({"snr": [0.0, 10.0], "steps": 3})  # as JSON would store it
    assert fingerprint(_Settings()) != fingerprint(_Settings(steps=4))
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint([1, 2]) != fingerprint([[1, 2]]) != fingerprint("[1, 2]")
    x = torch.arange(6.0)
    assert fingerprint(x) == fingerprint(x.clone()) != fingerprint(x.double()) != fingerprint(x.reshape(2, 3))
    assert fingerprint(x.bfloat16()) != fingerprint(x.half())
    wav = np.ones(4, np.float32)
    assert fingerprint([wav]) != fingerprint([wav, wav]) != fingerprint([np.ones(5, np.float32)])
    linear = torch.nn.Linear(2, 2)
    assert fingerprint(linear) == fingerprint({"weight": linear.weight, "bias": linear.bias})  # its state_dict
    for name in ("a", "b"):  # two copies of one folder: its content counts, not where it lies
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "w.bin").write_bytes(b"123")
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")
    (tmp_path / "b" / "sub" / "w.bin").write_bytes(b"124")
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "b")
    with pytest.raises(TypeError, match="cannot digest a object"):
        fingerprint(object())
    with pytest.raises(FileNotFoundError, match="missing"):
        fingerprint(tmp_path / "nope")


def test_a_state_round_trips_and_a_kill_between_writes_keeps_the_previous_one(tmp_path, monkeypatch):
    tied = torch.arange(6.0)
    state = {"w": torch.ones(3), "step": torch.tensor(2.0), "a": tied[:3], "b": tied[3:]}  # views of one buffer
    save_state(tmp_path, "ck", state, {"step": 1, "log": [0.5]})
    tensors, meta = load_state(tmp_path, "ck")
    assert meta["step"] == 1 and meta["log"] == [0.5] and torch.equal(tensors["w"], torch.ones(3))
    assert tensors["a"].tolist() == [0, 1, 2] and tensors["b"].tolist() == [3, 4, 5]
    assert tensors["step"].shape == ()  # 0-dim tensors (Adam's step) survive

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_state, "write_json", killed)  # tensors written, then killed before the commit
    with pytest.raises(KeyboardInterrupt):
        save_state(tmp_path, "ck", {"w": torch.zeros(3)}, {"step": 2})
    monkeypatch.undo()
    assert len(list(tmp_path.glob("ck-*.safetensors"))) == 2  # the new file is an orphan ...
    tensors, meta = load_state(tmp_path, "ck")  # ... and the previous state loads whole
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    save_state(tmp_path, "ck", {"w": torch.zeros(3)}, {"step": 3})
    assert [p.name for p in tmp_path.glob("ck-*.safetensors")] == [read_state_meta(tmp_path, "ck")["tensors"]]
    assert load_state(tmp_path, "other") is None


def test_a_planted_state_file_is_refused(tmp_path):
    (tmp_path / "ck.json").write_text(json.dumps({"format": 1, "tensors": "../../etc/x.safetensors"}))
    with pytest.raises(ValueError, match="not a state this version writes"):
        load_state(tmp_path, "ck")
    (tmp_path / "ck.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable state"):
        load_state(tmp_path, "ck")


def test_optimizer_state_round_trips_exactly():
    def setup():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))

    def step(model, optim, seed):
        torch.manual_seed(seed)
        optim.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optim.step()

    model, optim = setup()
    for seed in (1, 2):
        step(model, optim, seed)
    tensors, meta = optimizer_state(optim)
    tensors, meta = {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta))  # as stored
    copy, copy_optim = setup()
    copy.load_state_dict(model.state_dict())
    load_optimizer_state(copy_optim, tensors, meta)
    assert copy_optim.param_groups[0]["betas"] == (0.9, 0.98)
    step(model, optim, 3)
    step(copy, copy_optim, 3)
    for a, b in zip(model.parameters(), copy.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_stage_records_reuse_only_finished_work_of_the_same_key(tmp_path):
    records, output = StageRecords(tmp_path / "stages.json"), tmp_path / "out.json"
    assert not records.current("sweep", "k1", output)
    assert records.begin("sweep", "k1", {"snr": (0, 10)}) is None
    output.write_text("{}")
    assert not records.current("sweep", "k1", output)  # begun, not finished (killed midway)
    records.finish("sweep", "k1")
    assert records.current("sweep", "k1", output) and not records.current("sweep", "k2", output)
    assert not records.current("other", "k1", output)
    output.unlink()
    assert not records.current("sweep", "k1", output)  # its output is gone
    assert records.begin("sweep", "k2") == "k1"  # the caller learns that the earlier work was made otherwise
    assert not records.current("sweep", "k1")  # beginning forgets the earlier result
    with pytest.raises(RuntimeError, match="did not begin with"):
        records.finish("sweep", "k1")
