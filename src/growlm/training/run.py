"""Growth runs: run a growth plan stage by stage, single process or under torchrun, and resume exactly.

``growlm.training.components.build_components`` builds a run's parts once from its recipe (device and process
group, substrate, data, precision, run directory, metrics, checkpointer, the model new or resumed); ``Run`` drives
the stages through ``growlm.training.loop`` (AdamW, warmup + cosine, accumulation, clipping, hooks), validating
(``growlm.training.validation``) and checkpointing (``growlm.training.trainstate``) as it goes. ``grow`` is the
entry point.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from growlm.model.saved import save_model
from growlm.training import flops, stages
from growlm.training.components import Components, build_components
from growlm.training.loop import (
    Hooks,
    Loop,
    RunState,
    StepLog,
    build_optimizer,
    compiled_blocks,
    lr_at,
    resolve_compile,
)
from growlm.training.plan import Recipe, Stage
from growlm.training.stages import head_lr_scale
from growlm.training.validation import validate, validate_to_log


class Run:
    """Drives one growth run's stages; its parts come built (``build_components``)."""

    def __init__(self, parts: Components, progress: bool = True):
        self.parts, self.progress = parts, progress
        self.recipe, self.out, self.train, self.dist = parts.recipe, parts.out, parts.recipe.train, parts.dist
        self.data, self.metrics, self.generator, self.log = parts.data, parts.metrics, parts.generator, parts.log
        self.model, self.state, self.opt_state = parts.model, parts.state, parts.opt_state

    @property
    def precision(self) -> str:
        return self.parts.precision

    def close(self) -> None:
        """Close the loggers and release the run directory's lock."""
        self.parts.close()

    def checkpoint(self, optimizer, trainee: torch.nn.Module | None = None) -> None:
        """Write the resumable state (rank 0), atomically replacing the previous checkpoint.

        ``trainee`` is the module training now (a sharded copy under FSDP); its full state is what is saved.
        """
        substrate = self.parts.substrate
        self.parts.checkpointer.save(self.state, optimizer, trainee or self.model, {
            "config": self.model.cfg.to_dict(), "substrate": substrate.spec.to_dict(),
            "substrate_fingerprint": substrate.fingerprint})

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> Path:
        """Run every remaining stage; returns the final model directory."""
        t0 = self.t0 = time.perf_counter()
        for si in range(self.state.stage, len(self.recipe.stages)):
            stage = self.recipe.stages[si]
            if not self.state.stage_started:
                budget = stages.begin_stage(self.model, stage)
                self.model.to(self.dist.device)
                self.state.stage_started, self.opt_state = True, None
                self.metrics.write({"type": "stage", "stage": si, "name": stage.name, "kind": stage.kind,
                                    "step": self.state.step, "tokens": self.state.tokens, **budget})
                self.log(f"stage {si} '{stage.name}' ({stage.kind}): depth {budget['depth']}, "
                         f"active trainable parameters {budget['active_params']:,} "
                         f"(LoRA {budget['lora_params']:,}) of {budget['total_params']:,}; "
                         f"{self.recipe.stage_steps(stage)} steps")
            self.train_stage(si, stage)
            stages.end_stage(self.model, stage)
            val = validate(self.model, self.data, self.train, self.dist.device, precision=self.precision,
                           dist=self.dist)
            depth = len(self.model.blocks)
            self.metrics.write({"type": "stage_end", "stage": si, "name": stage.name, "step": self.state.step,
                                "tokens": self.state.tokens, "depth": depth, **val})
            self.log(f"stage {si} done: depth {depth}, val loss {val['val_loss']:.4f}, bits/char {val['val_bpc']}")
            if self.dist.main:
                save_model(self.model, self.out / "stages" / f"stage-{si:02d}",
                           extra={"stage": si, "stage_name": stage.name, "depth": depth, **val})
            self.state = RunState(stage=si + 1, step=self.state.step, tokens=self.state.tokens,
                                  skipped=self.state.skipped)
            self.checkpoint(None)
        if self.dist.main:
            save_model(self.model, self.out / "model", extra={"depth": len(self.model.blocks)})
        self.log(f"run finished in {time.perf_counter() - t0:.0f}s: {self.out / 'model'}")
        return self.out / "model"

    def train_stage(self, si: int, stage: Stage) -> None:
        """One stage through ``growlm.training.loop``: wrap the model for this stage, then log, validate and
        checkpoint."""
        train, dist, model = self.train, self.dist, self.model
        total = self.recipe.stage_steps(stage)
        peak = stage.lr or train.lr
        warmup = train.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
        mixture = self.data.mixture(self.recipe.data.mixtures.get(stage.mixture) if stage.mixture != "all" else None)
        model.activation_checkpointing = train.activation_checkpointing
        ddp = dist.wrap(model, self.precision)
        trainee = dist.trainee(ddp)  # the model, or its sharded copy under FSDP
        split_head = bool(stage.head_freeze_steps or stage.head_warmup_steps)
        optimizer = build_optimizer(trainee, train, dist.device, split_head=split_head)
        if self.opt_state is not None:
            dist.load_optimizer_state(optimizer, self.opt_state)
            self.opt_state = None
        compiled = resolve_compile(train.compile, dist.device)
        # model FLOPs per token in this stage's setting, and the machine's peak for the precision in use
        loop = Loop(ddp, train, dist, self.precision, progress=self.progress, desc=f"stage {si} {stage.name}",
                    flops_per_token=flops.step_flops(model, train.seq_len).total,
                    peak_flops=flops.peak_flops(dist.device, self.precision) * dist.world)

        def log(state: RunState, s: StepLog) -> None:
            self.metrics.write({"type": "train", "step": state.step, "tokens": state.tokens, "stage": si,
                                "depth": len(model.blocks), "loss": round(s.loss, 5), "lr": s.lr, **head_lr(state, s),
                                "tok_per_s": round(s.tokens_per_s, 1), "flops_per_token": loop.flops_per_token,
                                "model_flops_per_s": round(s.tokens_per_s * loop.flops_per_token, 1),
                                "mfu": round(s.mfu, 4), "time": round(time.perf_counter() - self.t0, 3)})

        def head_lr(state: RunState, s: StepLog) -> dict:  # the rate of the step just taken, where the head has its own
            return {"head_lr": s.lr * head_lr_scale(stage, state.stage_step - 1)} if split_head else {}

        def validate_now(state: RunState) -> None:
            validate_to_log(trainee, self.data, train, dist, self.precision, self.metrics, state, compiled, stage=si,
                            depth=len(model.blocks))

        with compiled_blocks(trainee, compiled):  # this stage's blocks, compiled afresh (never an earlier graph)
            loop.run(optimizer, total, self.state,
                     batches=lambda: self.data.sample_batch(mixture, train.batch_size, train.seq_len, self.generator),
                     lr_of=lambda step: lr_at(step, total, peak, warmup, train.min_lr_ratio),
                     head_scale_of=(lambda step: head_lr_scale(stage, step)) if split_head else None,
                     hooks=Hooks(log=log, validate=validate_now, checkpoint=(
                         (lambda _: self.checkpoint(optimizer, trainee)) if train.ckpt_every else None)))
        dist.unwrap(ddp, model)



def grow(recipe: Recipe | str | Path, out: str | Path, resume: bool = False, device: str | None = None,
         progress: bool = True, log=print, loggers: list[str] | None = None) -> Path:
    """Run (or resume) a growth plan into the run directory ``out``; returns the final model directory.
    ``loggers`` (``tensorboard``, ``wandb``) replace the recipe's ``[train] loggers``."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    run = Run(build_components(recipe, out, resume=resume, device=device, log=log, loggers=loggers), progress)
    try:
        return run.run()
    finally:
        run.close()
