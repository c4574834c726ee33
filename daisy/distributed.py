"""Several processes under `torchrun`: which rank this is, the device it runs on, and what ranks exchange.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without it a run is rank 0 of 1 and nothing here communicates.
The process group's backend is nccl where the ranks run on CUDA, gloo otherwise. Objects that live on the CPU
(extracted features) travel over gloo in either case: a second, gloo group where the first is nccl, so they
are not copied through a GPU to be sent.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

_cpu_group = None  # the gloo group objects travel over, where the world's is nccl


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) in a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_device(device: str) -> str:
    """The device this rank runs on: under torchrun with several processes a bare 'cuda' becomes
    cuda:LOCAL_RANK (one GPU per process on each machine); any other device, indexed ones included, as given."""
    if device != "cuda" or rank_and_world()[1] == 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "start at most that many processes per machine (torchrun --nproc_per_node)"
        )
    return f"cuda:{local}"


def init(device: str | torch.device = "cpu") -> None:
    """Join the process group of a torchrun with several processes (nccl where `device` is CUDA, else gloo);
    nothing in a plain run or where the group is up already."""
    if rank_and_world()[1] == 1 or dist.is_initialized():
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl's collectives use the current device: this rank's own
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shard(items: list, rank: int, world: int) -> list:
    """Rank `rank`'s share of `items`: every `world`-th one from its own index (strided, so lengths sorted
    ascending spread evenly over the ranks)."""
    return items[rank::world]


def _objects_group():
    global _cpu_group
    if dist.get_backend() == "gloo":
        return None  # the world's own group
    if _cpu_group is None:
        _cpu_group = dist.new_group(backend="gloo")  # collective: every rank comes here in the same order
    return _cpu_group


def gather_to_first(obj) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others); [obj] in a plain run. Picklable
    objects from this run's own ranks only (CPU tensors, lists, dicts)."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0, group=_objects_group())
    return gathered


def from_first(obj):
    """Rank 0's `obj` on every rank (what rank 0 decided, e.g. that a cache holds what is asked for)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_objects_group())
    return box[0]
