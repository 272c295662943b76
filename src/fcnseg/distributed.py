"""Data-parallel runs across processes (``torchrun``): set-up, rank queries and reductions.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` reads
them. Without them everything here is a no-op, so training and evaluation have one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fcnseg.devices import resolve_device

__all__ = [
    "Context",
    "all_gather_objects",
    "all_reduce_sum",
    "any_true",
    "barrier",
    "init_from_env",
    "shutdown",
]


@dataclass(frozen=True)
class Context:
    """Where this process sits: its global rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0


PROCESS_GROUP_BACKENDS = {"cuda": "nccl", "xpu": "xccl"}
"""The collective backend of each device type; gloo for the others (the CPU)."""


def init_from_env(device: str | torch.device | None = None, backend: str | None = None) -> Context:
    """Join the process group ``torchrun`` describes, or return a one-process context.

    ``device`` is any torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``xpu``), or ``auto`` or
    None: CUDA when available (:func:`fcnseg.devices.resolve_device`, which refuses one this machine
    lacks). Under ``torchrun`` a device named without an index, ``cuda`` say, is each process's
    ``cuda:LOCAL_RANK``. The backend defaults to NCCL on CUDA, XCCL on XPU and gloo otherwise.
    """
    where = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if where.type in PROCESS_GROUP_BACKENDS:  # CUDA, XPU: one of several, named by index for DDP
        runtime = getattr(torch, where.type)
        if where.index is None:
            index = local_rank if world_size > 1 else runtime.current_device()
            where = resolve_device(f"{where.type}:{index}")
        runtime.set_device(where)
    if world_size > 1 and not dist.is_initialized():
        default = PROCESS_GROUP_BACKENDS.get(where.type, "gloo")
        dist.init_process_group(backend or default, rank=rank, world_size=world_size)
    return Context(rank, world_size, local_rank, where)


def shutdown(context: Context) -> None:
    """Leave the process group, if this process joined one."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returned for chaining."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_true(flag: bool, context: Context) -> bool:
    """True on every process if ``flag`` is true on any, so that all stop together."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_objects(obj: Any, context: Context) -> list[Any]:
    """Every process's ``obj``, indexed by rank (a one-element list without a process group)."""
    if not context.enabled:
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
