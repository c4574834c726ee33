"""Whether audio sounds like what a model's policy was calibrated on.

An entropy threshold is only as good as the audio it was set on: to a model pretrained on synthetic speech,
every real recording is hard, so its heads stay unsure and every file runs to the last layer. Calibration
records how unsure the policy's first read head was on its calibration audio (`reference`); a run whose files
mostly read above all of that (`unfamiliar`) is out of the model's domain, and the fix is to calibrate on
the user's own clean audio. Only entropy policies (entropy, budget) are checked: the rule reads entropies.
"""

from __future__ import annotations

import torch

from daisy import policies


def _first_read_layer(policy: policies.Policy, num_layers: int) -> int | None:
    """The first layer whose entropy the policy reads, or None where it reads no entropy."""
    if "entropy" not in policy.needs:
        return None
    return next((layer for layer in range(1, num_layers) if policy.reads(layer)), None)


def reference(entropy: torch.Tensor, policy: policies.Policy) -> dict | None:
    """What calibration saw at the policy's first read layer: entropy (N, L) of the calibration audio."""
    layer = _first_read_layer(policy, entropy.shape[1])
    if layer is None:
        return None
    column = entropy[:, layer - 1]
    return {"layer": layer, "max_entropy": round(float(column.max()), 4), "utterances": len(column)}


def unfamiliar(record: dict | None, entropy: torch.Tensor) -> int:
    """How many utterances (entropy (N, L), NaN where a layer was not scored) read above everything the
    calibration audio gave at the recorded layer; 0 where the model has no record."""
    if not record or entropy.numel() == 0:
        return 0
    column = entropy[:, record["layer"] - 1]
    return int((column > record["max_entropy"]).sum())


def notice(model, model_dir: str, entropies: list[list[float | None]], what: str = "files") -> str | None:
    """The line to end a run with where most of its clean utterances (each one's per-layer head entropy, None
    where no head ran) read as harder than all of the model's calibration audio; None otherwise."""
    record = model.config.provenance.get("calibration", {}).get("domain")
    if not record or not entropies or model.policy.to_dict() != model.config.policy:
        return None  # no record, no entropy read, or another policy than the one calibrated
    entropy = torch.tensor([[float("nan") if v is None else v for v in row] for row in entropies])
    return warning(model_dir, unfamiliar(record, entropy), len(entropies), record, what)


def warning(model_dir: str, count: int, total: int, record: dict, what: str = "files") -> str | None:
    """One line for the end of a run where most files are out of the model's domain, naming the fix."""
    if total == 0 or count * 2 <= total:
        return None
    return (
        f"{count} of {total} {what} read as harder than all of this model's calibration audio (head entropy at "
        f"layer {record['layer']} above {record['max_entropy']:.2f}), so exits come late: the audio is unlike what "
        f"it was calibrated on. Calibrate on your own clean audio: daisy calibrate --model {model_dir} "
        "--data YOUR_CLEAN_AUDIO"
    )
