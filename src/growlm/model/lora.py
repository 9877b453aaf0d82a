"""LoRA on the frozen blocks, with PEFT's semantics and growlm's stable parameter names.

The adapter lives on the ``nn.Linear`` it adapts (``blocks.3.attn.qkv.lora_A``,
``.lora_B``) and is added by a forward hook, so the base weight keeps its name
(``blocks.3.attn.qkv.weight``) and checkpoints of grown models never change
shape or naming. As in PEFT: ``scaling = alpha / r``, A is Kaiming-uniform, B
starts at zero (an attached adapter changes nothing), merge adds
``B @ A * scaling`` to the weight and refuses non-finite results, unmerge
subtracts it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

# short target names -> attribute paths inside a Block
TARGETS = {"qkv": "attn.qkv", "attn_proj": "attn.proj", "fc": "mlp.fc", "gate": "mlp.gate", "up": "mlp.up",
           "mlp_proj": "mlp.proj"}


@dataclass
class LoRASpec:
    """Rank, alpha and which projections of which blocks get adapters."""

    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["qkv", "attn_proj", "fc", "mlp_proj"])
    blocks: str = "frozen"  # "frozen": every block the stage does not train fully; "all": every block

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        bad = set(self.targets) - set(TARGETS)
        if bad:
            raise ValueError(f"unknown LoRA targets {sorted(bad)}; valid targets are {sorted(TARGETS)}")
        if self.blocks not in ("frozen", "all"):
            raise ValueError(f"LoRA 'blocks' must be 'frozen' or 'all', got {self.blocks!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def _lora_hook(module: nn.Linear, inputs, output):
    # scaled on the narrow [.., r] side, and added by the second matmul itself (addmm): no extra full-width passes
    xa = inputs[0] @ module.lora_A.t().to(inputs[0].dtype) * module.lora_scaling
    b = module.lora_B.t().to(xa.dtype)
    out = torch.addmm(output.reshape(-1, output.shape[-1]), xa.reshape(-1, xa.shape[-1]), b)
    return out.view(output.shape)


def attach(linear: nn.Linear, rank: int, alpha: float) -> None:
    """Give ``linear`` a LoRA adapter (B = 0, so its output is unchanged)."""
    if hasattr(linear, "lora_A"):
        raise ValueError("this linear already has a LoRA adapter; merge or detach it first")
    w = linear.weight
    linear.lora_A = nn.Parameter(torch.empty(rank, w.shape[1], device=w.device, dtype=w.dtype))
    linear.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device, dtype=w.dtype))
    nn.init.kaiming_uniform_(linear.lora_A, a=math.sqrt(5))
    linear.lora_scaling = alpha / rank
    linear._lora_handle = linear.register_forward_hook(_lora_hook)


def delta(linear: nn.Linear) -> torch.Tensor:
    """The weight update ``B @ A * scaling`` of an adapted linear."""
    return (linear.lora_B @ linear.lora_A) * linear.lora_scaling


def merge(linear: nn.Linear, safe: bool = True) -> None:
    """Fold the adapter into the weight and remove it; ``safe`` refuses non-finite results."""
    with torch.no_grad():
        merged = linear.weight + delta(linear).to(linear.weight.dtype)
        if safe and not torch.isfinite(merged).all():
            raise ValueError("LoRA merge would produce non-finite weights; the adapter was kept unmerged")
        linear.weight.copy_(merged)
    detach(linear)


def unmerge(linear: nn.Linear, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> None:
    """Subtract a previously merged adapter (given its A, B and scaling) from the weight."""
    with torch.no_grad():
        linear.weight.sub_((lora_B @ lora_A * scaling).to(linear.weight.dtype))


def detach(linear: nn.Linear) -> None:
    """Remove the adapter without merging it."""
    linear._lora_handle.remove()
    del linear.lora_A, linear.lora_B, linear.lora_scaling, linear._lora_handle


def adapted_linears(model: nn.Module) -> list[nn.Linear]:
    """Every linear in ``model`` that currently carries an adapter."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and hasattr(m, "lora_A")]


def _resolve(block: nn.Module, path: str) -> nn.Linear | None:
    obj = block
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Linear) else None


def attach_to_blocks(model: nn.Module, spec: LoRASpec, block_ids: list[int]) -> int:
    """Attach adapters to the spec's targets in ``model.blocks[i]``, i in block_ids; returns their size."""
    n = 0
    for i in block_ids:
        for t in spec.targets:
            lin = _resolve(model.blocks[i], TARGETS[t])
            if lin is None:
                continue  # e.g. "fc" on a SwiGLU block
            attach(lin, spec.rank, spec.alpha)
            n += lin.lora_A.numel() + lin.lora_B.numel()
    if n == 0:
        raise ValueError(f"LoRA targets {spec.targets} matched no projection in blocks {block_ids}")
    return n


def merge_all(model: nn.Module, safe: bool = True) -> int:
    """Merge every adapter in ``model``; returns how many were merged."""
    linears = adapted_linears(model)
    if safe:
        with torch.no_grad():
            for lin in linears:
                if not torch.isfinite(lin.weight + delta(lin)).all():
                    raise ValueError("LoRA merge would produce non-finite weights; nothing was merged")
    for lin in linears:
        merge(lin, safe=False)
    return len(linears)
