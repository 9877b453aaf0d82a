"""One optimisation loop for every model growlm trains: a growth stage, a composed model's fine-tune, a benchmark.

The loop knows nothing about growth: it takes the module to call (plain, DDP, compiled or a sharded copy), an
optimiser over what trains, a batch source and a learning-rate schedule, and runs optimiser steps until a step
count is reached. Each step splits the global batch over processes and ``grad_accum`` micro-batches (gradients
are reduced across processes only on the last one), clips, steps, and advances the counters that a checkpoint
saves. Every ``log_every``, ``val_every`` and ``ckpt_every`` steps it calls the caller's hooks, which write
metrics, validate and checkpoint; the caller keeps its own bookkeeping (stages, run directories).

    loop = Loop(wrapped, train, dist, precision)
    loop.run(optimizer, total, state, batches=lambda: data.sample_batch(...), lr_of=lambda s: ..., hooks=Hooks(...))
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from growlm.training import flops
from growlm.training.parallel import Distributed
from growlm.training.plan import TrainSpec


@dataclass
class RunState:
    """Where a run stands: what a checkpoint saves so that training resumes exactly."""

    stage: int = 0  # index of the stage in progress (a fine-tune is one stage)
    stage_started: bool = False  # its blocks were added / adapters attached
    stage_step: int = 0  # optimiser steps done in this stage
    step: int = 0  # optimiser steps done in the whole run
    tokens: int = 0
    skipped: int = 0  # batches skipped in the run for a non-finite loss or gradient norm ([train] skip_bad_batches)


class NonFiniteError(ValueError):
    """A training step met a non-finite loss, gradient norm or weight; nothing of it was kept."""


class NonFiniteWarning(UserWarning):
    """A batch was skipped for a non-finite loss or gradient norm ([train] skip_bad_batches)."""


RECOVER = ("the last checkpoint is kept and no model was written; resume from it (`growlm grow --resume RUN`, "
           "`growlm finetune ... --resume`) after lowering lr or fixing the data, or let [train] skip_bad_batches = N "
           "skip such batches")


@dataclass
class StepLog:
    """What a logging hook receives: the mean training loss since the last log (over processes) and the speed."""

    loss: float
    lr: float
    tokens_per_s: float
    mfu: float  # model FLOP/s over the peak the loop was given (0 without one)
    seconds: float  # since the loop started


@dataclass
class Hooks:
    """The caller's side of the loop; each is optional."""

    log: Callable[[RunState, StepLog], None] | None = None  # every log_every steps and at the last
    validate: Callable[[RunState], None] | None = None  # every val_every steps, not at the last (the caller does)
    checkpoint: Callable[[RunState], None] | None = None  # every ckpt_every steps, not at the last


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``peak * min_ratio`` at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision == "bf16"`` (an already resolved choice), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# devices where AdamW runs torch's fused kernel, one pass over each tensor; on CPU the per-tensor loop it replaces
# took 4.2 s against 0.64 s for a 33.6M-parameter step (d_model 512 x 8 layers, V 16,384; benchmarks/plain_gpt.py)
FUSED_ADAMW = ("cuda", "cpu")
HEAD = ("head.", "norm.")  # parameter names of the head a stage may schedule apart: the LM head and the final norm


def build_optimizer(model: torch.nn.Module, train: TrainSpec, device: torch.device,
                    split_head: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (matrices decay, vectors don't); fused on CUDA and CPU.

    ``split_head``: the head's parameters get groups of their own, marked ``"head": True`` (see ``set_lr``)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    parts = [(False, params)]
    if split_head:
        parts = [(False, [(n, p) for n, p in params if not n.startswith(HEAD)]),
                 (True, [(n, p) for n, p in params if n.startswith(HEAD)])]
    groups = []
    for head, ps in parts:
        for decay, keep in ((train.weight_decay, lambda p: p.dim() >= 2), (0.0, lambda p: p.dim() < 2)):
            group = {"params": [p for _, p in ps if keep(p)], "weight_decay": decay}
            if split_head:
                group["head"] = head
            if group["params"] or not split_head:  # the unsplit optimiser keeps its two groups as it always had
                groups.append(group)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=device.type in FUSED_ADAMW)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, head_scale: float = 1.0) -> None:
    """Every group's rate to ``lr``; the head's groups (``build_optimizer(split_head=True)``) to ``lr * head_scale``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * head_scale if g.get("head") else lr


# what ``[train] compile = "auto"`` does on each device type, measured (benchmarks/compile_speed.py)
COMPILE_AUTO = {"cuda": True, "cpu": False}


def cpp_compiler() -> str | None:
    """The C++ compiler inductor builds CPU kernels with ($CXX, else g++), or None where there is none."""
    return shutil.which(os.environ.get("CXX") or "g++")


def resolve_compile(setting: str | bool, device: torch.device) -> bool:
    """Whether ``[train] compile`` (auto | true | false) compiles on ``device``; auto follows ``COMPILE_AUTO``.

    Compiling on CPU needs a C++ compiler: ``true`` without one is refused, ``auto`` then stays eager."""
    value = str(setting).lower()
    if value not in ("auto", "true", "false"):
        raise ValueError(f"compile must be auto, true or false, got {setting!r}")
    on = COMPILE_AUTO.get(device.type, False) if value == "auto" else value == "true"
    if on and device.type == "cpu" and cpp_compiler() is None:
        if value == "auto":
            return False
        raise ValueError(f"[train] compile = true on CPU needs a C++ compiler for inductor "
                         f"({os.environ.get('CXX') or 'g++'} was not found): install one (or point $CXX at it), "
                         "or set compile = false")
    return on


def model_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of ``model``: its own ``blocks``, or every expert's in a composed model."""
    return [b for m in model.modules() if isinstance(getattr(m, "blocks", None), torch.nn.ModuleList)
            for b in m.blocks]


@contextlib.contextmanager
def compiled_blocks(model: torch.nn.Module, on: bool = True):
    """Run the blocks of ``model`` (``model_blocks``) under ``torch.compile`` (inductor) inside the ``with``,
    each block in place.

    Each block is compiled as a module (``nn.Module.compile``), so parameter names and the state dict do not
    change, one graph serves every block of the same shape whatever the depth, and the head's chunked loss
    stays eager (``growlm.model.losses``). Dynamo's caches are cleared on entry: a graph traced before the model
    grew, gained or merged LoRA adapters, or moved its frozen split is never reused. Blocks run eager again
    on exit.
    """
    if not on:
        yield
        return
    torch.compiler.reset()
    blocks = model_blocks(model)
    for b in blocks:
        b.compile()
    try:
        yield
    finally:
        for b in blocks:
            vars(b).pop("_compiled_call_impl", None)  # what nn.Module.compile set: back to the plain call


def micro_batch(batch_size: int, grad_accum: int, world: int) -> int:
    """Sequences per micro-batch: the global batch split over processes and accumulation steps (must divide)."""
    micro = batch_size // (grad_accum * world)
    if micro < 1 or micro * grad_accum * world != batch_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by grad_accum {grad_accum} x processes {world}")
    return micro


class Loop:
    """Optimiser steps on ``wrapped`` (what forward is called on); ``dist.trainee(wrapped)`` holds what trains."""

    def __init__(self, wrapped: torch.nn.Module, train: TrainSpec, dist: Distributed | None = None,
                 precision: str = "fp32", progress: bool = False, desc: str = "", flops_per_token: float = 0.0,
                 peak_flops: float = 0.0):
        self.wrapped, self.train, self.dist = wrapped, train, dist or Distributed()
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops  # for MFU in the logs
        self.precision, self.progress, self.desc = precision, progress, desc
        self.trainee = self.dist.trainee(wrapped)
        self.params = [p for p in self.trainee.parameters() if p.requires_grad]
        self.micro = micro_batch(train.batch_size, train.grad_accum, self.dist.world)
        self.kwargs = {"loss_chunk": train.loss_chunk} if train.loss_chunk else {}

    def step(self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
             head_scale: float = 1.0) -> float:
        """One optimiser step on the global batch x, y [batch_size, T]: this process takes its slice, accumulates
        over micro-batches (reducing gradients only on the last), clips and steps. Returns its mean loss.
        ``head_scale`` scales the rate of the head's own groups, where the optimiser has them."""
        train, dist, m = self.train, self.dist, self.micro
        set_lr(optimizer, lr, head_scale)
        n = m * train.grad_accum  # this process's slice of the global batch
        x, y = (t[dist.rank * n:(dist.rank + 1) * n].to(dist.device) for t in (x, y))
        loss_sum = 0.0
        for k in range(train.grad_accum):
            with dist.no_sync(self.wrapped, sync=k == train.grad_accum - 1), autocast(dist.device, self.precision):
                loss = self.wrapped(x[k * m:(k + 1) * m], y[k * m:(k + 1) * m], **self.kwargs) / train.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
        if train.grad_clip:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, train.grad_clip))
        else:
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
        # the norm is of the reduced gradients, the same on every process; the loss is this process's own, so it
        # decides alone only in a single process (a non-finite loss elsewhere shows in the reduced norm)
        if not math.isfinite(norm) or (self.dist.world == 1 and not math.isfinite(loss_sum)):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(f"the loss is {loss_sum:.6g} and the gradient norm {norm:.6g}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def check_weights(self, state: RunState, when: str) -> None:
        """Refuse trained weights that are no longer finite (a finite step can still overflow them)."""
        bad = [n for n, p in self.trainee.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteError(f"stage {state.stage}, step {state.stage_step} (global step {state.step}): the "
                                 f"weights {', '.join(bad[:3])} are no longer finite {when}; nothing was saved from "
                                 f"this point: {RECOVER}")

    def run(self, optimizer: torch.optim.Optimizer, total: int, state: RunState,
            batches: Callable[[], tuple[torch.Tensor, torch.Tensor]], lr_of: Callable[[int], float],
            hooks: Hooks | None = None, head_scale_of: Callable[[int], float] | None = None) -> None:
        """Step until ``state.stage_step == total`` (resumed runs start where ``state`` says), calling ``hooks``.
        ``lr_of(step)``: the rate of the loop's step; ``head_scale_of(step)``: a factor on the head's groups."""
        train, hooks = self.train, hooks or Hooks()
        self.trainee.train()
        bar = tqdm(total=total, initial=state.stage_step, desc=self.desc, dynamic_ncols=True, leave=True,
                   disable=not (self.progress and self.dist.main))
        t0 = t_last = time.perf_counter()
        tok_last, losses = state.tokens, []
        while state.stage_step < total:
            lr = lr_of(state.stage_step)
            x, y = batches()
            try:
                losses.append(self.step(optimizer, x, y, lr, head_scale_of(state.stage_step) if head_scale_of else 1.0))
            except NonFiniteError as e:
                where = f"stage {state.stage}, step {state.stage_step + 1} (global step {state.step + 1})"
                if state.skipped >= train.skip_bad_batches:
                    raise NonFiniteError(f"{where}: {e}; the weights were not updated and the run stops: "
                                         f"{RECOVER}") from None
                state.skipped += 1
                warnings.warn(f"{where}: {e}; batch skipped ({state.skipped} of [train] skip_bad_batches = "
                              f"{train.skip_bad_batches} in this run)", NonFiniteWarning, stacklevel=2)
                continue
            state.stage_step += 1
            state.step += 1
            state.tokens += train.batch_size * train.seq_len
            bar.update(1)
            last = state.stage_step == total
            if hooks.log and (state.step % train.log_every == 0 or last):
                now = time.perf_counter()
                tps = (state.tokens - tok_last) / max(1e-9, now - t_last)
                mfu = flops.mfu(tps * self.flops_per_token, self.peak_flops)
                log = StepLog(loss=self.dist.mean(sum(losses) / len(losses)), lr=lr, tokens_per_s=tps, mfu=mfu,
                              seconds=now - t0)
                t_last, tok_last, losses = now, state.tokens, []
                hooks.log(state, log)
                bar.set_postfix(loss=f"{log.loss:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{mfu:.0%}")
            if hooks.validate and train.val_every and state.step % train.val_every == 0 and not last:
                hooks.validate(state)
            if hooks.checkpoint and train.ckpt_every and state.step % train.ckpt_every == 0 and not last:
                self.check_weights(state, "before this checkpoint")  # the last good checkpoint stays
                hooks.checkpoint(state)
        bar.close()
        self.check_weights(state, "at the end of the loop")
