"""Where models run and in what precision: `--device auto` resolved, and bf16 autocast for inference.

Placement needs no threading through the library: a backbone moves each batch to its own weights' device
(`HubertBackbone.embed`), so `model.to(device)` is all a caller does, and what is stored (traces, features)
is moved back to the CPU where it is kept. Precision is an autocast region around inference; exit decisions
stay float32 inside it (`exact` around the heads' scores), and training steps run under it (heads, probes)
opt out with `exact` too.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str) -> str:
    """'auto': cuda where torch sees a CUDA device, else cpu; any other name as given (under torchrun,
    `daisy.distributed.rank_device` then gives each process its own GPU)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def inference(device: str | torch.device, precision: str = "fp32"):
    """The region models run in on `device`: fp32, as they are; bf16, torch's autocast to bfloat16 (matrix
    products and convolutions in bfloat16, norms and softmax in float32)."""
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def exact(device: str | torch.device):
    """Autocast off on `device` inside, where a caller's `inference` region turned it on: the exit heads'
    scores (entropy, confidence: what the exits are decided on) and training steps stay float32. Free where
    autocast is off."""
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=False) if torch.is_autocast_enabled(kind) else nullcontext()


def autocast_name(device: str | torch.device) -> str:
    """The precision the current region runs `device`'s models in ('fp32' or 'bf16'; another autocast dtype
    by its torch name), for the keys of cached features."""
    kind = torch.device(device).type
    if not torch.is_autocast_enabled(kind):
        return "fp32"
    dtype = torch.get_autocast_dtype(kind)
    return "bf16" if dtype == torch.bfloat16 else str(dtype).removeprefix("torch.")
