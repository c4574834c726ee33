"""Resumable run state and fingerprinted caches, without pickles.

A *state* (a training checkpoint) is tensors in safetensors and everything else (step, config, scheduler,
optimiser hyper-parameters, log) in JSON. `NAME.json` is the commit point: it names its tensor file
`NAME-<token>.safetensors`, which is written first; older tensor files go after the JSON is in place. Each
write is atomic, so a kill between any two of them leaves the previous pair loadable.

A *fingerprint* is a digest of what made an artefact: settings (JSON-able values, dataclasses), tensors,
arrays, modules and files, so a run resumes, and a cached output is reused, only for the same.
`StageRecords` keeps, per named stage of a pipeline, the fingerprint its outputs were made under.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections import Counter
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from daisy.io import atomic_path, write_json

FORMAT = 1
_TENSOR_FILE = re.compile(r"[\w.-]+-[0-9a-f]{8}\.safetensors")
log = logging.getLogger(__name__)


class ResumeRefused(ValueError):
    """A run folder holds state made under other settings or inputs than those asked for."""


# ---------------------------------------------------------------- fingerprints


def fingerprint(*parts) -> str:
    """Hex digest of `parts`: None, bools, numbers, strings, dicts, lists/tuples (alike, as in JSON),
    dataclasses, tensors and arrays (dtype, shape, bytes), modules (their state_dict) and paths (a file's
    bytes; a folder's relative file names and bytes: where it lies does not count)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        _update(digest, part)
    return digest.hexdigest()


def _update(digest, value) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        digest.update(b"j" + json.dumps(value).encode() + b"\0")
    elif is_dataclass(value) and not isinstance(value, type):
        _update(digest, asdict(value))
    elif isinstance(value, dict):
        digest.update(b"{%d}" % len(value))
        for key in sorted(value, key=str):
            _update(digest, str(key))
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(b"[%d]" % len(value))
        for item in value:
            _update(digest, item)
    elif isinstance(value, torch.nn.Module):
        _update(digest, dict(value.state_dict()))
    elif isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"t{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # uint8 view: bf16 has no numpy dtype
    elif isinstance(value, np.ndarray):
        digest.update(f"a{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Path):
        _update_path(digest, value)
    else:
        raise TypeError(f"fingerprint: cannot digest a {type(value).__name__}")


def _update_path(digest, path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (cannot fingerprint it)")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(b"f" + (file.relative_to(path).as_posix() if file != path else "").encode() + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)


def audio_identity(wavs) -> dict:
    """What identifies a list of waveforms, readable in messages: count, total samples and a digest (that of
    `fingerprint(list(wavs))`). `wavs` may be any sized iterable of arrays (a corpus streamed from its files,
    `daisy.data.streaming.AudioFiles`): it is read once, one array at a time."""
    digest, samples = hashlib.blake2b(digest_size=16), 0
    digest.update(b"[%d]" % len(wavs))  # as fingerprint digests a list, item by item
    for wav in wavs:
        _update(digest, wav)
        samples += len(wav)
    return {"utterances": len(wavs), "samples": int(samples), "digest": digest.hexdigest()}


def plain(value):
    """The JSON form of `value` (tuples become lists, dataclasses dicts), as a stored state gives it back."""
    return json.loads(json.dumps(value, default=_as_json))


def _as_json(value):
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"not JSON: a {type(value).__name__}")


# ---------------------------------------------------------------- states


def state_file(folder: str | os.PathLike, name: str) -> Path:
    """The commit file of a state: `folder/NAME.json`."""
    return Path(folder) / f"{name}.json"


def save_state(folder: str | os.PathLike, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a state: tensors to a fresh safetensors file, then `NAME.json` (meta + its name), then drop
    older tensor files. Returns the JSON file."""
    folder = Path(folder)
    tensor_name = f"{name}-{secrets.token_hex(4)}.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    storages = Counter(v.untyped_storage().data_ptr() for v in tensors.values())
    # safetensors refuses tensors that share storage (views of one buffer): those are copied
    tensors = {k: v.clone() if storages[v.untyped_storage().data_ptr()] > 1 else v for k, v in tensors.items()}
    with atomic_path(folder / tensor_name, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    path = state_file(folder, name)
    write_json(path, {"format": FORMAT, "tensors": tensor_name, **meta})
    for old in folder.glob(f"{name}-*.safetensors"):
        if old.name != tensor_name and _TENSOR_FILE.fullmatch(old.name):
            old.unlink(missing_ok=True)
    return path


def read_state_meta(folder: str | os.PathLike, name: str) -> dict | None:
    """The JSON part of a state (cheap: no tensors), or None where there is none."""
    path = state_file(folder, name)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a readable state ({err}); delete it to start over") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or not _TENSOR_FILE.fullmatch(str(meta.get("tensors")))
    ):
        raise ValueError(f"{path}: not a state this version writes (format {FORMAT}); delete it to start over")
    return meta


def load_state(
    folder: str | os.PathLike, name: str, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, meta) of the state `name` under `folder`, or None where there is none."""
    meta = read_state_meta(folder, name)
    if meta is None:
        return None
    tensor_path = Path(folder) / meta["tensors"]
    if not tensor_path.is_file():
        raise ValueError(
            f"{state_file(folder, name)}: its tensors {tensor_path.name} are missing; delete it to restart"
        )
    return load_file(str(tensor_path), device=device), meta


def note_legacy(folder: str | os.PathLike, filename: str) -> None:
    """One line about an old pickled checkpoint in `folder`: it is never loaded (a pickle can run code)."""
    path = Path(folder) / filename
    if path.is_file():
        log.warning(f"note: ignoring {path}: old pickled checkpoints are never loaded (delete it)")


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_state(optim: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state_dict split into tensors ('<param index>.<key>') and JSON (the rest, param groups)."""
    state = optim.state_dict()
    tensors, rest = {}, {}
    for index, entry in state["state"].items():
        rest[str(index)] = {k: v for k, v in entry.items() if not torch.is_tensor(v)}
        tensors.update({f"{index}.{k}": v for k, v in entry.items() if torch.is_tensor(v)})
    return tensors, {"state": rest, "param_groups": state["param_groups"]}


def load_optimizer_state(optim: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of `optimizer_state`."""
    state: dict[int, dict] = {int(i): dict(entry) for i, entry in meta["state"].items()}
    groups = meta["param_groups"]
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # JSON gave lists where the optimiser held tuples (betas)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in groups]
    optim.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------- cached stages


def save_training(folder: str | os.PathLike, name: str, module: torch.nn.Module, optim, sched, meta: dict) -> Path:
    """A training run's state: `module`'s and the optimiser's tensors, the optimiser's and the scheduler's
    settings, and `meta` (step, log, what the run was made under)."""
    optim_tensors, optim_meta = optimizer_state(optim)
    tensors = {**prefixed("model.", module.state_dict()), **prefixed("optim.", optim_tensors)}
    return save_state(folder, name, tensors, {**meta, "optim": optim_meta, "sched": sched.state_dict()})


def restore_training(state: tuple[dict[str, torch.Tensor], dict], module: torch.nn.Module, optim, sched) -> dict:
    """Load a `save_training` state (as `load_state` gives it) into module, optimiser and scheduler; its meta."""
    tensors, meta = state
    module.load_state_dict(unprefixed("model.", tensors))
    load_optimizer_state(optim, unprefixed("optim.", tensors), meta["optim"])
    sched.load_state_dict(meta["sched"])
    return meta


class StageRecords:
    """Per named stage, the fingerprint its outputs were made under, in one JSON file (`folder/stages.json`).

    `begin` before a stage writes anything (it forgets that the stage was done), `finish` after; `current`
    says whether outputs may be reused: finished under the same key, and all still there."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _read(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            stored = json.loads(self.path.read_text())
        except json.JSONDecodeError:
            return {}  # unreadable records: every stage reruns
        return stored if isinstance(stored, dict) else {}

    def _write(self, name: str, entry: dict) -> None:
        records = self._read()
        records[name] = entry
        write_json(self.path, records)

    def current(self, name: str, key: str, *outputs: str | os.PathLike) -> bool:
        entry = self._read().get(name, {})
        return entry.get("key") == key and entry.get("done") is True and all(Path(p).exists() for p in outputs)

    def begin(self, name: str, key: str, settings: dict | None = None) -> str | None:
        """Mark `name` as being made under `key`; returns the key its earlier (finished or not) work was
        made under, None if none: work under the same key may be resumed, other work must go."""
        before = self._read().get(name, {}).get("key")
        self._write(name, {"key": key, "done": False, "settings": plain(settings)})
        return before

    def finish(self, name: str, key: str) -> None:
        entry = self._read().get(name, {})
        if entry.get("key") != key:
            raise RuntimeError(f"{self.path}: stage {name!r} finished under a key it did not begin with")
        self._write(name, {**entry, "done": True})
