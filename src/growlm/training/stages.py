"""What a growth stage does to a model: add and freeze blocks, attach and merge LoRA, count what trains.

``begin_stage`` applies a ``Stage`` of the plan (``growlm.training.plan``) to a ``GrowLM``; ``end_stage``
merges its LoRA adapters back. ``active_budget`` counts the parameters a stage trains, ``plan_budgets`` does
it for every stage of a recipe before anything trains, and ``head_lr_scale`` is a stage's head schedule.
"""

from __future__ import annotations

import torch

from growlm.model import GrowLM, lora
from growlm.training.plan import Recipe, Stage


def begin_stage(model: GrowLM, stage: Stage) -> dict:
    """Apply a stage to the model: grow, attach LoRA, set what trains. Returns the stage's budget."""
    model.grow(stage.add, stage.init)
    apply_stage(model, stage)
    return active_budget(model)


def apply_stage(model: GrowLM, stage: Stage) -> None:
    """Set what the stage trains and attach its LoRA adapters (everything but growing)."""
    configure_trainable(model, stage)
    if stage.lora:
        attach_lora(model, stage)


def trained_blocks(model: GrowLM, stage: Stage) -> list[int]:
    """Indices of the blocks a stage trains fully (the newest ``train_newest``)."""
    n = len(model.blocks)
    return list(range(max(0, n - stage.train_newest), n))


def configure_trainable(model: GrowLM, stage: Stage) -> None:
    """Freeze everything except the stage's newest blocks and (optionally) the head."""
    model.set_trainable(trained_blocks(model, stage), head=stage.train_head)
    if isinstance(model.embedding, torch.nn.Parameter):
        model.embedding.requires_grad_(stage.train_embedding)


def attach_lora(model: GrowLM, stage: Stage) -> int:
    """Put the stage's LoRA adapters on its blocks (the frozen ones, or all)."""
    spec = stage.lora
    full = set(trained_blocks(model, stage))
    ids = [i for i in range(len(model.blocks)) if spec.blocks == "all" or i not in full]
    if not ids:
        raise ValueError(f"stage {stage.name}: LoRA on the frozen blocks, but every block trains fully")
    return lora.attach_to_blocks(model, spec, ids)


def end_stage(model: GrowLM, stage: Stage) -> None:
    """Finish a stage: merge its LoRA adapters into the weights."""
    if stage.lora:
        lora.merge_all(model, safe=True)


def active_budget(model: GrowLM) -> dict[str, int]:
    """Trainable parameters of the model as it stands, split by part."""
    lora_n = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"active_params": total, "lora_params": lora_n, "depth": len(model.blocks),
            "total_params": sum(p.numel() for p in model.parameters())}


def head_lr_scale(stage: Stage, step: int) -> float:
    """The factor on the stage's learning rate the head trains at in ``step`` (0-based): 0 for its first
    ``head_freeze_steps``, then a linear ramp to 1 over ``head_warmup_steps``."""
    s = step - stage.head_freeze_steps
    if s < 0:
        return 0.0
    if s < stage.head_warmup_steps:
        return (s + 1) / stage.head_warmup_steps
    return 1.0


def plan_budgets(recipe: Recipe) -> list[dict]:
    """The active-parameter budget of every stage, computed on the meta device (no memory, no training)."""
    cfg = recipe.config()
    with torch.device("meta"):
        model = GrowLM(cfg)
        out = []
        for st in recipe.stages:
            b = begin_stage(model, st)
            out.append({"stage": st.name, "kind": st.kind, "steps": recipe.stage_steps(st), **b})
            lora.merge_all(model, safe=False)  # meta tensors cannot be checked for finiteness
    return out
