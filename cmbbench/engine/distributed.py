"""Data-parallel training under ``torchrun`` (DDP) and evaluation sharded across ranks.

Started by ``torchrun`` (``python -m torch.distributed.run``), every process sees
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init_distributed`
joins the process group with ``env://`` (``nccl`` on CUDA, ``gloo`` on CPU). Without those
variables everything runs as a single process (world size 1) and no process group is made.
Nothing home-made: only ``torch.distributed`` collectives.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its device and backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that writes checkpoints and records)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one rank is active."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables announce more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the ``env://`` process group when launched by torchrun; otherwise a 1-rank context.

    On CUDA each process uses ``cuda:LOCAL_RANK``. Calling it again reuses the group.
    """
    if not launched_by_torchrun():
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
        logger.info("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistContext(rank, world, local, backend, device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world_size]``."""
    return list(items[ctx.rank :: ctx.world_size])


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` for a single process)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_by_case(items: dict[str, Any], order: Sequence[str], ctx: DistContext) -> list[Any]:
    """Merge every rank's ``{case_id: value}`` and return the values in ``order``."""
    merged: dict[str, Any] = {}
    for part in gather_objects(items, ctx):
        merged.update(part)
    return [merged[k] for k in order]


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64; a copy for a single process)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` unchanged."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ctx.device.type == "cuda":
        return DDP(model, device_ids=[ctx.device.index], output_device=ctx.device.index)
    return DDP(model)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (or ``model`` itself)."""
    return getattr(model, "module", model)
