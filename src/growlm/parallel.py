"""Parallelism, kept out of the model and the loop: process group, model wrapping, gradient sync, metric reduction.

The training loop sees only ``Distributed``: ``wrap`` the model (DDP when there is more
than one process), ``no_sync`` around the micro-batches that must not all-reduce yet,
``mean``/``mean_dict`` for logged metrics, ``barrier``. torchrun sets the environment.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class Distributed:
    """Rank, world size and device of this process."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def setup(cls, device: str | None = None) -> Distributed:
        """Read torchrun's environment, pick the device and start the process group once."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if world > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, dev)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as the loop should call it: DistributedDataParallel when there is more than one process."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def no_sync(self, wrapped: torch.nn.Module, sync: bool):
        """Context for one micro-batch's backward: gradients all-reduce only when ``sync`` (the last one)."""
        if sync or not hasattr(wrapped, "no_sync"):
            return contextlib.nullcontext()
        return wrapped.no_sync()

    def mean(self, value: float) -> float:
        """Average a scalar over processes (for logging)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return t.item() / self.world

    def mean_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Average several scalars over processes in one all-reduce."""
        if self.world == 1 or not values:
            return dict(values)
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return {k: v / self.world for k, v in zip(values, t.tolist())}

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()
