"""Data-parallel plumbing for ``aprx pretrain`` under ``torchrun`` (see ``docs/distributed.md``).

:func:`context_from_env` reads ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (set by ``torchrun``);
with ``WORLD_SIZE`` unset or 1 it returns a single-process context whose helpers are no-ops, so
a plain run is unchanged. Otherwise it initialises ``torch.distributed`` (``nccl`` on
``cuda:LOCAL_RANK``, ``gloo`` on the CPU) unless the caller already did.

Every collective here is called by all ranks at the same point of the loop. Per-rank state
travels as bytes (JSON / safetensors) in uint8 tensors, never pickled.

Error codes: ``APRX-R404`` the rank's GPU is missing, ``APRX-R405`` inconsistent launcher
environment, ``APRX-R407`` another rank failed (its own message says why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch

from .errors import TrainingError

__all__ = ["DistContext", "context_from_env", "env_world_size", "env_rank"]


def env_world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    """This process's rank according to the launcher (0 when not launched by one)."""
    if env_world_size() <= 1:
        return 0
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None  # None: single process, resolved by the caller
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" and self.device else torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks (in place when it already lives on the communication device)."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        c = t.to(self._comm_device())
        dist.all_reduce(c, op=dist.ReduceOp.SUM)
        return c.to(t.device)

    def any_failed(self, failed: bool) -> bool:
        """True on every rank when ``failed`` is true on at least one (a collective)."""
        if not self.enabled:
            return failed
        flag = torch.tensor([1.0 if failed else 0.0])
        return bool(self.all_reduce_sum(flag).item() > 0)

    def agreed(self, what: str) -> _Agreed:
        """``with ctx.agreed("setup"):`` -- if the block raises on any rank, it raises on all:
        the failing rank re-raises its own error, the others ``APRX-R407``."""
        return _Agreed(self, what)

    def gather_bytes(self, data: bytes) -> List[bytes]:
        """Every rank's ``data``, in rank order, on every rank."""
        if not self.enabled:
            return [data]
        import torch.distributed as dist

        dev = self._comm_device()
        n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        lengths = [int(s.item()) for s in sizes]
        buf = torch.zeros(max(lengths), dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(dev)
        outs = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(outs, buf)
        return [bytes(o[:k].cpu().numpy().tobytes()) for o, k in zip(outs, lengths)]

    def close(self) -> None:
        if self.enabled and self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                # Every rank's outstanding collectives (FSDP's reduce-scatters included) finish
                # before the group goes: tearing gloo down under pending work aborts the process.
                try:
                    dist.barrier()
                finally:
                    dist.destroy_process_group()
            self.owns_group = False


class _Agreed:
    def __init__(self, ctx: DistContext, what: str) -> None:
        self.ctx = ctx
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.ctx.enabled:
            return
        if exc_type is not None and not issubclass(exc_type, Exception):
            return  # KeyboardInterrupt etc.: the launcher tears the group down
        if self.ctx.any_failed(exc_type is not None) and exc_type is None:
            raise TrainingError(
                f"another rank failed during {self.what} (its message says why); rank "
                f"{self.ctx.rank} stops too",
                "APRX-R407",
            )


def context_from_env(device_name: str = "auto") -> DistContext:
    """The process group described by the launcher's environment (see the module doc)."""
    world = env_world_size()
    if world <= 1:
        return DistContext()
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except (KeyError, ValueError) as exc:
        raise TrainingError(
            f"WORLD_SIZE={world} but RANK/LOCAL_RANK are missing or invalid ({exc}): launch "
            "with torchrun (see docs/distributed.md)",
            "APRX-R405",
        ) from exc
    if not 0 <= rank < world:
        raise TrainingError(f"RANK {rank} outside WORLD_SIZE {world}", "APRX-R405")
    use_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda requested but CUDA is not available", "APRX-R404")
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible",
                "APRX-R404",
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_name in ("auto", "cpu"):
        device, backend = torch.device("cpu"), "gloo"
    else:
        raise TrainingError(f"unknown device {device_name!r} for a distributed run", "APRX-R404")
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise TrainingError(
            f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the "
            f"environment says {rank} of {world}",
            "APRX-R405",
        )
    return DistContext(rank, world, local_rank, device, backend, owns)
