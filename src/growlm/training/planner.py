"""Plan a recipe on a GPU cluster before one is at hand: memory per GPU, the largest micro-batch, FLOPs and time.

Every stage's model is built as the trainer builds it (``growlm.training.stages`` on the meta device), copied onto
fake tensors, and one training step of the trainer's own loop (``growlm.training.loop.Loop.step``: micro-batches,
autocast, the chunked loss, clipping, AdamW) runs on them under ``growlm.training.memtrack.LiveBytes``. Fake
tensors have shapes and no data: a paper-sized step is "run" on a laptop in a second. What is counted:

* ``weights``: the model's parameters in float32 (sharded under FSDP: each rank's padded slice);
* ``substrate``: the frozen embedding and the RoPE tables (buffers, on every rank);
* ``gradients`` and ``optimizer``: of what trains (AdamW: two float32 moments), sharded under FSDP; DDP adds its
  gradient buckets (one more copy of the gradients);
* ``activations``: the peak a micro-batch's forward and backward adds above the weights and the gradients,
  measured (the head's chunked loss included; ``head_loss`` is that loss's own peak, measured alone);
* ``fsdp_gathered``: under FSDP, the parameters all-gathered at once (the root's, kept gathered, and two blocks',
  one computing and one prefetched) in the compute dtype, and one block's unsharded gradients before the
  reduce-scatter;
* ``reserve``: what the allocator does not hand out (CUDA context, cuBLAS and NCCL workspaces, fragmentation).

The kernels are CPU kernels run on fake CPU tensors (bf16 by CPU autocast): their saved tensors are those of the
CUDA kernels for the same operators (SDPA keeps its output and log-sum-exp), not their scratch space. On CPU, the
same measurement agrees with torch's own allocator reports within a few percent (tests/training/test_planner.py).
Time comes from model FLOPs at a stated MFU, training steps only (validation and checkpoints are not counted).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

from growlm.model import GrowLM, lora
from growlm.model.losses import chunked_cross_entropy
from growlm.training import flops, stages
from growlm.training.loop import Loop, autocast, build_optimizer, micro_batch
from growlm.training.memtrack import LiveBytes, tensor_bytes
from growlm.training.plan import Recipe, TrainSpec

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    """One accelerator model: memory as nvidia-smi reports it, and dense peaks (``flops.ACCELERATORS``)."""

    name: str
    memory_mib: int
    peaks: str  # key into flops.ACCELERATORS: (bf16, fp32) TFLOP/s

    @property
    def memory(self) -> int:
        return self.memory_mib * 2**20

    def peak(self, precision: str) -> float:
        """Dense peak FLOP/s in ``precision`` ("bf16" or "fp32")."""
        bf16, fp32 = flops.ACCELERATORS[self.peaks]
        return (bf16 if precision == "bf16" else fp32) * 1e12


GPUS: dict[str, GPU] = {
    "h100-80gb": GPU("NVIDIA H100 80GB HBM3 (SXM)", 81559, "H100 SXM"),
    "a100-80gb": GPU("NVIDIA A100 80GB", 81920, "A100"),
    "a100-40gb": GPU("NVIDIA A100 40GB", 40960, "A100"),
    "l4-24gb": GPU("NVIDIA L4", 23034, "L4"),
}
RESERVE = 1.5 * GIB  # CUDA context, cuBLAS and NCCL workspaces: never handed to tensors
FRAGMENTATION = 0.05  # of the rest: what the caching allocator loses to fragmentation
MAX_MICRO_BATCH = 4096


def gpu_spec(name: str) -> GPU:
    """The registry entry ``name`` (h100-80gb, a100-80gb, a100-40gb, l4-24gb)."""
    if name not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known GPUs are {sorted(GPUS)}")
    return GPUS[name]


# --------------------------------------------------------------------------- measuring one step


@dataclass
class StepMemory:
    """Bytes of one training step of a model at one micro-batch, measured on fake (or real) tensors."""

    weights: int
    substrate: int  # buffers: the frozen embedding and the RoPE tables
    gradients: int
    optimizer: int
    activations: int  # peak above weights, gradients and optimizer state during a micro-batch's forward+backward
    head_loss: int  # peak of the chunked loss alone (forward and its gradients), within ``activations``
    step_peak: int  # peak of a whole optimiser step (all micro-batches, clipping, AdamW), everything included


def fake_copy(model: nn.Module, mode) -> nn.Module:
    """``model`` (on the meta device) as fake CPU tensors of ``mode``: shapes, no memory."""
    twin = copy.deepcopy(model)
    with mode:
        return twin.to_empty(device="cpu")


def measure_step(model: GrowLM, train: TrainSpec, micro: int, precision: str = "fp32",
                 fake: bool = True) -> StepMemory:
    """Memory of a training step of ``model`` as it stands (what trains is set) at ``micro`` sequences per
    micro-batch and ``train.grad_accum`` micro-batches (at most 2 are run: a third adds nothing new).

    ``fake``: ``model`` is on the meta device and is measured on a fake copy; else it is measured as it is (real
    CPU tensors, for checking the fake measurement). AdamW is the trainer's (``build_optimizer``: fused).
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    m = fake_copy(model, mode) if fake else model
    m.activation_checkpointing = model.activation_checkpointing
    trainable = [p for p in m.parameters() if p.requires_grad]
    accum = min(train.grad_accum, 2)
    spec = replace(train, batch_size=micro * accum, grad_accum=accum)
    with mode if fake else contextlib.nullcontext(), LiveBytes(fake=fake) as live:
        opt = build_optimizer(m, spec, torch.device("cpu"))
        for p in trainable:  # AdamW's state as after a first step
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loop = Loop(m, spec, precision=precision)
        x, y = _inputs(micro, spec.seq_len, accum)
        live.reset_peak()
        start = live.live
        loop.step(opt, x, y, lr=1e-4)
        step_peak = live.peak - start
        opt_bytes = tensor_bytes(t for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
        for p in trainable:  # gradients present, as from the second micro-batch on
            p.grad = torch.zeros_like(p)
        activations = _activation_peak(m, micro, spec.seq_len, precision, loop.kwargs, live)
        head_loss = _head_loss_peak(m, micro * spec.seq_len, precision, loop.kwargs.get("loss_chunk"), live)
    weights = tensor_bytes(m.parameters())
    substrate = tensor_bytes(m.buffers())
    grads = tensor_bytes(trainable)
    persistent = weights + substrate + opt_bytes
    return StepMemory(weights, substrate, grads, opt_bytes, activations, head_loss, persistent + step_peak)


def measure_activations(model: GrowLM, train: TrainSpec, micro: int, precision: str = "fp32") -> int:
    """``StepMemory.activations`` alone (one forward and backward on fake tensors), for another micro-batch."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    m = fake_copy(model, mode)
    m.activation_checkpointing = model.activation_checkpointing
    kw = {"loss_chunk": train.loss_chunk} if train.loss_chunk else {}
    with mode, LiveBytes(fake=True) as live:
        for p in m.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        return _activation_peak(m, micro, train.seq_len, precision, kw, live)


def _inputs(micro: int, seq_len: int, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(n * micro, seq_len + 1, dtype=torch.long)
    return ids[:, :-1], ids[:, 1:]


def _activation_peak(m: GrowLM, micro: int, seq_len: int, precision: str, kw: dict, live: LiveBytes) -> int:
    """Peak bytes a micro-batch's forward and backward add (gradients already allocated)."""
    x, y = _inputs(micro, seq_len)
    live.reset_peak()
    start = live.live
    with autocast(torch.device("cpu"), precision):
        loss = m(x, y, **kw)
    loss.backward()
    del loss
    return live.peak - start


def _head_loss_peak(m: GrowLM, rows: int, precision: str, chunk: int | None, live: LiveBytes) -> int:
    """Peak bytes of the chunked loss over ``rows`` positions (its forward computes every gradient)."""
    needs_h = m.first_trainable_block() < len(m.blocks) or m.norm.weight.requires_grad
    h = torch.zeros(rows, m.cfg.d_model, requires_grad=needs_h)
    targets = torch.zeros(rows, dtype=torch.long)
    live.reset_peak()
    start = live.live
    with autocast(torch.device("cpu"), precision):
        loss = chunked_cross_entropy(h, m.head.weight, m.head.bias, targets, chunk=chunk)
    if loss.requires_grad:
        loss.backward()
    del loss
    return live.peak - start - (h.numel() * h.element_size() if needs_h else 0)  # h's own gradient is not the loss's


# --------------------------------------------------------------------------- per GPU


def _shard_bytes(params, world: int) -> int:
    """Bytes of one rank's FSDP2 shards of ``params``: dim 0 split in ``ceil(dim0 / world)`` rows (padded)."""
    total = 0
    for p in params:
        rows = p.shape[0] if p.dim() else 1
        per_row = p.numel() // max(rows, 1)
        total += math.ceil(rows / world) * per_row * p.element_size()
    return total


def _param_bytes(params, dtype_bytes: int) -> int:
    return sum(p.numel() for p in params) * dtype_bytes


def per_gpu(model: GrowLM, mem: StepMemory, world: int, parallel: str, precision: str) -> dict[str, int]:
    """Bytes per GPU by part, for ``world`` GPUs sharing the model by ``parallel`` (ddp | fsdp)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    out = {"weights": mem.weights, "substrate": mem.substrate, "gradients": mem.gradients,
           "optimizer": mem.optimizer, "activations": mem.activations, "fsdp_gathered": 0, "ddp_buckets": 0}
    if world == 1:
        return out
    if parallel == "fsdp":
        out["weights"] = _shard_bytes(params, world)
        out["gradients"] = _shard_bytes(trainable, world)
        out["optimizer"] = 2 * out["gradients"]
        compute = 2 if precision == "bf16" else 4
        root = [p for n, p in model.named_parameters() if not n.startswith("blocks.")]
        blocks = sorted((list(b.parameters()) for b in model.blocks), key=lambda ps: -sum(p.numel() for p in ps))
        gathered = _param_bytes(root, compute) + sum(_param_bytes(ps, compute) for ps in blocks[:2])
        trained = [[p for p in b.parameters() if p.requires_grad] for b in model.blocks]
        grads = max((_param_bytes(ps, 4) for ps in trained), default=0)
        out["fsdp_gathered"] = gathered + grads
    else:
        out["ddp_buckets"] = mem.gradients
    return out


def usable(gpu: GPU) -> int:
    """Bytes a training process can hold in tensors on ``gpu``."""
    return int((gpu.memory - RESERVE) * (1 - FRAGMENTATION))


def total(parts: dict[str, int], world: int, mem: StepMemory) -> int:
    """Peak bytes per GPU: one process's measured step peak, or the sum of the parts when sharded or replicated."""
    if world == 1:
        return mem.step_peak
    return sum(parts.values())


# --------------------------------------------------------------------------- the plan


def stage_models(recipe: Recipe) -> list[tuple]:
    """(stage, model after ``begin_stage``) for every stage, on the meta device (LoRA merged between stages)."""
    out = []
    with torch.device("meta"):
        model = GrowLM(recipe.config())
        for st in recipe.stages:
            stages.begin_stage(model, st)
            out.append((st, copy.deepcopy(model)))
            if st.lora:
                lora.merge_all(model, safe=False)  # meta tensors hold no values to check
    return out


def plan_cluster(recipe: Recipe, gpus: int, gpu: str = "h100-80gb", parallel: str = "fsdp",
                 activation_checkpointing: bool | None = None, mfu: float = 0.4) -> dict:
    """Per stage: memory per GPU by part, whether it fits, the largest micro-batch that fits, the step's FLOPs, its
    time at ``mfu`` and the stage's GPU-hours; the run's GPU-hours."""
    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"--parallel must be ddp or fsdp, got {parallel!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
    spec = gpu_spec(gpu)
    train = recipe.train
    ckpt = train.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    precision = "bf16" if train.precision == "auto" else train.precision  # auto is bf16 on CUDA
    micro = micro_batch(train.batch_size, train.grad_accum, gpus)
    room = usable(spec)
    rows, hours = [], 0.0
    for si, (st, model) in enumerate(stage_models(recipe)):
        model.activation_checkpointing = ckpt
        mem = measure_step(model, train, micro, precision)
        parts = per_gpu(model, mem, gpus, parallel, precision)
        need = total(parts, gpus, mem)
        largest = largest_micro_batch(model, train, precision, gpus, parallel, room, (micro, mem))
        per_token = flops.step_flops(model, train.seq_len).total
        step = per_token * train.batch_size * train.seq_len
        step_s = step / (gpus * spec.peak(precision) * mfu)
        steps = recipe.stage_steps(st)
        gpu_h = steps * step_s * gpus / 3600
        hours += gpu_h
        rows.append({"stage": si, "name": st.name, "depth": len(model.blocks), "steps": steps,
                     "micro_batch": micro, "memory_gib": {k: v / GIB for k, v in parts.items()},
                     "head_loss_gib": mem.head_loss / GIB, "total_gib": need / GIB, "fits": need <= room,
                     "largest_micro_batch": largest, "step_flops": step, "flops_per_token": per_token,
                     "step_s": step_s, "stage_s": steps * step_s, "gpu_hours": gpu_h})
    return {"recipe": recipe.name, "gpu": gpu, "gpu_name": spec.name, "gpus": gpus, "parallel": parallel,
            "precision": precision, "activation_checkpointing": ckpt, "mfu": mfu,
            "peak_tflops": spec.peak(precision) / 1e12, "usable_gib": room / GIB, "memory_gib": spec.memory / GIB,
            "batch_size": train.batch_size, "grad_accum": train.grad_accum, "seq_len": train.seq_len,
            "stages": rows, "gpu_hours": hours}


def largest_micro_batch(model: GrowLM, train: TrainSpec, precision: str, world: int, parallel: str, room: int,
                        known: tuple[int, StepMemory]) -> int:
    """The largest micro-batch (sequences per GPU) whose step fits in ``room`` bytes; 0 when none does.

    Only the activations grow with the micro-batch, linearly: the line through the activations measured at
    ``b`` and ``2 b`` (``known`` gives ``b`` and its step) predicts the answer."""
    b0, m0 = known
    n0 = total(per_gpu(model, m0, world, parallel, precision), world, m0)
    slope = max(1.0, (measure_activations(model, train, 2 * b0, precision) - m0.activations) / b0)
    return int(min(MAX_MICRO_BATCH, max(0, b0 + (room - n0) // slope)))


def plan_table(plan: dict) -> list[str]:
    """Markdown rows of a ``plan_cluster`` result."""
    rows = [f"{plan['recipe']} on {plan['gpus']} x {plan['gpu_name']} ({plan['parallel']}, {plan['precision']}, "
            f"activation checkpointing {'on' if plan['activation_checkpointing'] else 'off'}; "
            f"{plan['usable_gib']:.1f} GiB usable of {plan['memory_gib']:.1f}; time at {plan['mfu']:.0%} MFU "
            f"of {plan['peak_tflops']:.0f} TFLOP/s)", "",
            "| stage | depth | micro-batch | weights | grads | optim | activations | other | total GiB | fits | "
            "largest micro-batch | step TFLOP | step s | GPU-hours |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in plan["stages"]:
        g = s["memory_gib"]
        other = g["substrate"] + g["fsdp_gathered"] + g["ddp_buckets"]
        rows.append(f"| {s['name']} | {s['depth']} | {s['micro_batch']} | {g['weights']:.2f} | {g['gradients']:.2f} | "
                    f"{g['optimizer']:.2f} | {g['activations']:.2f} | {other:.2f} | {s['total_gib']:.2f} | "
                    f"{'yes' if s['fits'] else 'NO'} | {s['largest_micro_batch']} | {s['step_flops'] / 1e12:.1f} | "
                    f"{s['step_s']:.2f} | {s['gpu_hours']:.1f} |")
    rows.append(f"\nrun: {plan['gpu_hours']:.1f} GPU-hours (training steps only)")
    return rows
