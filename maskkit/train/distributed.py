"""Distributed helpers: rank and world size under torchrun, the process group, broadcast and gather."""

from __future__ import annotations

import os

import numpy as np
import torch


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def broadcast(obj, rank: int, world: int):
    if world == 1:
        return obj
    import torch.distributed as dist

    holder = [obj if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(arrays: list[np.ndarray], world: int) -> list[np.ndarray]:
    if world == 1:
        return arrays
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, arrays)
    return [np.concatenate([g[i] for g in gathered]) for i in range(len(arrays))]
