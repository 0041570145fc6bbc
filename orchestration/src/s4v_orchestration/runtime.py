"""Where and how a run computes: device, mixed precision, seeding and DDP through ``torchrun``.

``torchrun --nproc_per_node=N -m s4v_orchestration run recognition ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them (it never writes the
environment) and joins the process group: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from s4v_orchestration.config import ConfigError


@dataclass(frozen=True, kw_only=True, slots=True)
class DistEnv:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process joined the group here (and leaves it at the end)
    # In a process group (launched by torchrun), even of one process: collectives and DDP then
    # run, so `torchrun --nproc_per_node=1` exercises the NCCL path on a single GPU.
    in_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.in_group

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over ranks (every rank gets the same result)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's GPU under torchrun), else MPS, else the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device: {requested!r} was asked for but CUDA is not available on this machine "
                "(`s4v doctor` shows what torch sees); use --device cpu or auto"
            )
        if requested == "cuda":
            requested = f"cuda:{local_rank}"
    return torch.device(requested)


def init_distributed(device: torch.device) -> DistEnv:
    """Join the ``torchrun`` process group when launched by it; a single process otherwise.

    ``torchrun`` sets ``RANK`` and ``WORLD_SIZE`` (1 with ``--nproc_per_node=1``); a plain
    ``s4v run`` sets neither and runs without a process group.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    owns_group = not dist.is_initialized()  # e.g. Ray Train has already set it up
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistEnv(
        rank=rank,
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        owns_group=owns_group,
        in_group=True,
    )


def close_distributed(env: DistEnv) -> None:
    """Leave the process group if :func:`init_distributed` joined it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA that supports it, fp16 on other CUDA, fp32 elsewhere."""
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError(
            f"solver.precision=fp16 needs CUDA (with a gradient scaler); on {device.type} use "
            "fp32 or bf16"
        )
    return requested


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed-precision forward for bf16/fp16; plain fp32 otherwise."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run so far: allocated CUDA memory, or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
