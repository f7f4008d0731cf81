"""Data parallelism as the training loop sees it: the processes, the device, and the collectives.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process joins one process group (NCCL on CUDA, gloo
on the CPU) and takes the GPU of its ``LOCAL_RANK``; otherwise it is a single process on the
device asked for (``auto``: CUDA if available).  The loop needs three collectives, all no-ops for
one process: the mean of a scalar over the ranks (the logged loss, the elapsed time that decides
a time-budget stop, so every rank stops at the same step), a barrier after checkpoints, and
max |theta_rank - theta_0| over the parameters (0 when the replicas agree bit for bit).
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["Distributed"]


class Distributed:
    """torch.distributed set up from torchrun's environment (a single process otherwise).

    Raises ValueError for a device that cannot be used here.
    """

    def __init__(self, device_spec: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_spec in ("auto", "cuda") or \
            device_spec.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise ValueError(f"device {device_spec!r} asked for, but CUDA is not available here")
        if self.world > 1:
            self.device = torch.device("cuda", local) if cuda else torch.device("cpu")
        elif device_spec == "auto":
            self.device = torch.device("cuda" if cuda else "cpu")
        else:
            try:
                self.device = torch.device(device_spec)
            except (RuntimeError, ValueError):
                raise ValueError(f"unknown device {device_spec!r}; use auto, cpu or "
                                 "cuda[:N]") from None
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a scalar over the processes."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world

    def replica_difference(self, model: nn.Module) -> float:
        """max |theta_rank - theta_0| over all parameters and ranks (0 when replicas agree)."""
        if self.world == 1:
            return 0.0
        import torch.distributed as dist

        flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = (flat - ref).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
