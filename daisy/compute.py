"""How much of the full model an exit depth costs, counting the conv front-end (multiply-adds)."""

from __future__ import annotations

from transformers import HubertConfig


def macs_per_frame(config: HubertConfig, frames: int = 250) -> tuple[float, float]:
    """(front-end MACs, MACs of one transformer layer) per output frame, for utterances of `frames`."""
    samples = (frames - 1) * 320 + 400
    front, length, c_in = 0.0, samples, 1
    for c_out, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
        front += length * c_in * c_out * kernel
        c_in = c_out
    d, f = config.hidden_size, config.intermediate_size
    front += frames * (c_in * d + d * d * config.num_conv_pos_embeddings / config.num_conv_pos_embedding_groups)
    layer = frames * (4 * d * d + 2 * d * f + 2 * frames * d)
    return front / frames, layer / frames


def compute_share(config: HubertConfig, mean_depth: float, frames: int = 250) -> float:
    """Fraction of full-model compute spent when utterances exit at `mean_depth` layers on average."""
    front, layer = macs_per_frame(config, frames)
    return (front + mean_depth * layer) / (front + config.num_hidden_layers * layer)


def depth_for_share(config: HubertConfig, share: float, frames: int = 250) -> float:
    """The mean exit depth that spends `share` of full-model compute."""
    front, layer = macs_per_frame(config, frames)
    depth = (share * (front + config.num_hidden_layers * layer) - front) / layer
    if not 1 <= depth <= config.num_hidden_layers:
        raise ValueError(f"a compute share of {share:.2f} needs a mean depth of {depth:.2f} layers, outside 1..L")
    return depth


def exit_branch_share(config: HubertConfig, outputs: int, attention: bool = False, frames: int = 250) -> float:
    """Multiply-adds of one exit branch read at one layer, as a share of one transformer layer's: a linear map
    to `outputs` classes (DAISY's heads, Wright et al.'s CTC branches), after a self-attention block where
    `attention` (HuBERT-EE's branches: projections and the T x T products; norms not counted)."""
    d = config.hidden_size
    branch = frames * d * outputs + (frames * (4 * d * d + 2 * frames * d) if attention else 0)
    return branch / frames / macs_per_frame(config, frames)[1]
