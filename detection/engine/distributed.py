"""Data-parallel helpers: the process group torchrun describes, rank-0 duties, gathering results."""

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: rank among world_size processes, local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Joins the process group that torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) describes:
    NCCL on CUDA, gloo on the CPU. A plain `python train.py` is a job of one.

    Returns:
        this process's context and its device (on CUDA, the GPU of its local rank).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(), device
    context = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return context, device


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_to_all(items: list[Any]) -> list[Any]:
    """Every rank's `items` (picklable), concatenated in rank order, on every rank."""
    if _world_size() == 1:
        return items
    gathered: list[list[Any]] = [None] * _world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def agreed(flags: torch.Tensor) -> list[bool]:
    """Each of `flags` (int32 [N] on this rank's device, 1 = true) true on every rank: one all-reduce on
    the device, then one read back to the host (a real copy, so that a dispatch counter sees it on the
    CPU as on CUDA)."""
    if _world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return [bool(value) for value in flags.to("cpu", copy=True).tolist()]
