"""Parallelism, kept out of the model and the loop: process group, model wrapping, gradient sync, metric reduction.

The training loop sees only ``Distributed``: ``wrap`` the model, ``no_sync`` around the
micro-batches that must not reduce gradients yet, ``mean``/``mean_dict`` for logged metrics,
``all_sum`` for validation's per-window losses, ``barrier``, ``full_state`` for checkpoints and
``unwrap`` at a stage end; ``shutdown`` ends a process's part of the job. torchrun sets the
environment; ``parallel`` (the recipe's ``[train] parallel``) picks how processes share the model:

* ``ddp``: DistributedDataParallel, every process holds the whole model;
* ``fsdp``: FSDP2. A stage trains a *sharded copy* of the model (``shard``): ``fully_shard`` on
  every block, then on the root (final norm, head, a trainable embedding). The whole model waits
  on CPU and takes the copy's weights back at the stage end, so growth, LoRA merges, stage-end
  validation and saved models never see a sharded tensor. Checkpoints hold full tensors: an FSDP
  run's checkpoint is an ordinary growlm checkpoint and resumes under FSDP, DDP or one process.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class Distributed:
    """Rank, world size and device of this process, and how processes share the model."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    parallel: str = "ddp"  # "ddp" (replicas) or "fsdp" (FSDP2 shards); only matters when world > 1

    @classmethod
    def setup(cls, device: str | None = None, parallel: str = "ddp") -> Distributed:
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
            # FSDP's import chain (torch.distributed.nn) binds the default group into functions' default arguments:
            # imported after init, it keeps the group alive past destroy_process_group, and the group's threads
            # then die with the interpreter (gloo: an abort at exit). Imported first, it binds nothing.
            from torch.distributed.fsdp import FSDPModule  # noqa: F401

            torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, dev, parallel)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, precision: str = "fp32") -> nn.Module:
        """The model as the loop should call it: itself (one process), DDP around it, or a sharded copy (FSDP2).

        A sharded copy trains in the model's place until ``unwrap``; the whole model waits on CPU meanwhile.
        ``precision`` ("fp32" or "bf16") sets FSDP2's mixed-precision policy.
        """
        if self.world == 1:
            return model
        if self.parallel == "fsdp":
            trainee = shard(model, precision)
            model.to("cpu")
            return trainee
        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @staticmethod
    def trainee(wrapped: nn.Module) -> nn.Module:
        """The module whose parameters train: what the optimiser, clipping and checkpoints see."""
        return wrapped.module if isinstance(wrapped, DDP) else wrapped

    def unwrap(self, wrapped: nn.Module, model: nn.Module) -> None:
        """After a stage: a sharded copy's weights go back into the whole model (a collective)."""
        if is_sharded(wrapped):
            model.load_state_dict(gather_state(wrapped))
            model.to(self.device)

    def no_sync(self, wrapped: nn.Module, sync: bool):
        """Context for one micro-batch: gradients are reduced across processes only when ``sync`` (the last one)."""
        if is_sharded(wrapped):
            set_gradient_sync(wrapped, sync)
            return contextlib.nullcontext()
        if sync or not hasattr(wrapped, "no_sync"):
            return contextlib.nullcontext()
        return wrapped.no_sync()

    def full_state(self, trainee: nn.Module, optimizer) -> tuple[dict, dict | None]:
        """Model and optimiser state as one process would save them (gathered from shards: a collective)."""
        if is_sharded(trainee):
            return gather_state(trainee), gather_optimizer_state(optimizer) if optimizer is not None else None
        return trainee.state_dict(), optimizer.state_dict() if optimizer is not None else None

    @staticmethod
    def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
        """A saved (full) optimiser state into this run's optimiser; sharded under FSDP."""
        load_optimizer_state(optimizer, state)

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

    def all_sum(self, values: list[float]) -> list[float]:
        """Elementwise sum of ``values`` over processes, in float64 (every rank gets it); ``values`` in one process."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return t.tolist()

    def agree(self, value):
        """Rank 0's ``value`` on every rank (a decision that must not differ between processes, e.g. a measured
        precision choice); ``value`` itself in one process."""
        if self.world == 1:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every process gets here (nothing in one process)."""
        if self.world > 1:
            torch_dist.barrier()


def shutdown() -> None:
    """End this process's part of a torchrun job: wait for every rank, destroy the process group, and let go of
    what still held it.

    Call it once on every rank after the last collective (``growlm.cli`` does after a command; a script calling
    ``grow`` or ``finetune`` under torchrun should too); without a process group it does nothing. A group that lives
    on until the interpreter exits (DTensor's caches hold an FSDP run's meshes, the meshes the group) is torn down
    with it, threads and all, and gloo can then abort the finished process (SIGABRT).
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    torch_dist.barrier()
    _forget_device_meshes()
    torch_dist.destroy_process_group()
    gc.collect()  # what held the group (an FSDP run's meshes) goes now, while the interpreter is whole


def _forget_device_meshes() -> None:
    """Empty DTensor's caches (sharding decisions, redistribution plans, mesh topologies): their entries keep the
    device meshes of every FSDP stage alive, and the meshes the process group, which would then outlive
    ``destroy_process_group`` with its threads. Caches only: emptying them changes no result."""
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor was ever made
        return
    try:  # private API, where a torch has it: the sharding caches, the C++ fast path's included
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache
    except ImportError:
        _clear_sharding_prop_cache = None
    planner = sys.modules.get("torch.distributed.tensor._redistribute")  # its plan cache is a plain dict
    for clear in (_clear_sharding_prop_cache, getattr(planner, "clear_redistribute_planner_cache", None)):
        if clear is not None:
            clear()
    for name, module in list(sys.modules.items()):  # every functools cache of the package, in functions and classes
        if module is None or not (name == "torch.distributed.tensor" or name.startswith("torch.distributed.tensor.")):
            continue
        for value in list(vars(module).values()):
            for f in (value, *(vars(value).values() if isinstance(value, type) else ())):
                f = getattr(f, "__func__", f)  # a staticmethod's or classmethod's function
                if not isinstance(f, type) and callable(getattr(f, "cache_clear", None)) and hasattr(f, "cache_info"):
                    f.cache_clear()


# --------------------------------------------------------------------------- FSDP2


def mixed_precision(precision: str):
    """FSDP2's policy for ``precision``: bf16 compute and all-gathers, fp32 gradient reduction; None for fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy  # deferred: ~0.9 s to import, sharded runs only

    if precision != "bf16":
        return None
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """A sharded training copy of ``model`` (a GrowLM-style model with ``blocks``): one FSDP unit per block.

    Each rank keeps its slice of every parameter (of rank 0's ``model``, broadcast first). Frozen blocks are
    sharded too (gathered for their no-grad forward, never reduced); LoRA adapters shard with their block,
    and only parameters that require grad are reduced.
    """
    from torch.distributed.fsdp import fully_shard  # deferred: ~0.9 s to import, sharded runs only

    for t in model.state_dict().values():  # every rank starts from rank 0's weights, as under DDP
        torch_dist.broadcast(t, 0)
    trainee = copy.deepcopy(model)  # a LoRA hook's handle keeps a weak reference to the original: never used
    mp = mixed_precision(precision)
    kw = {"mp_policy": mp} if mp is not None else {}
    for block in trainee.blocks:
        fully_shard(block, **kw)
    # the root's parameters (head, final norm) are the first backward needs: keep them gathered after forward
    fully_shard(trainee, reshard_after_forward=False, **kw)
    return trainee


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule  # deferred: ~0.9 s to import, sharded runs only

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered_root(model: nn.Module):
    """Inside: a sharded model's own parameters (final norm, head, a trainable embedding) gathered as its forward
    would have them, for calls other than forward (validation scores through ``hidden_states`` and the head, and
    FSDP2 gathers a module's parameters around ``forward`` only); resharded on exit. The blocks gather their own
    in their forwards. Nothing happens to a model that is not sharded; with one that is, every rank enters it."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Whether the next backward reduce-scatters gradients (False: accumulate locally, as DDP's no_sync).

    FSDP2 reads it during backward, so it is set before the micro-batch, not scoped around its forward.
    """
    model.set_requires_gradient_sync(sync)


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor  # deferred: ~0.9 s to import, sharded runs only

    return t.full_tensor() if isinstance(t, DTensor) else t


def gather_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on CPU. A collective under FSDP: every rank calls it."""
    return {k: _full(v).detach().cpu() for k, v in model.state_dict().items()}


def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded tensor gathered, on CPU: the format a one-process run saves."""
    sd = optimizer.state_dict()
    state = {i: {k: _full(v).cpu() if torch.is_tensor(v) else v for k, v in st.items()}
             for i, st in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load a full optimiser state (as saved) into an optimiser over sharded parameters: each rank keeps its slice."""
    from torch.distributed.tensor import DTensor, distribute_tensor  # deferred: ~0.9 s to import, sharded runs only

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)
                    if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                    for k, v in st.items()}
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
