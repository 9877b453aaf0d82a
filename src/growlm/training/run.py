"""Growth runs: run a growth plan stage by stage, single process or under torchrun, and resume exactly.

Parts, each swappable: ``growlm.training.loop`` (the optimisation loop: AdamW, warmup + cosine,
accumulation, clipping, hooks), ``growlm.training.parallel.Distributed`` (process group, DDP or FSDP2),
``growlm.training.validation`` (loss and bits per character per language), ``growlm.training.checkpoint``
(atomic, hashed, exact resume), ``growlm.training.metrics`` (JSON lines) and ``growlm.training.rundir``
(the run directory and its lock). ``Run`` wires them for one recipe; ``grow`` is the entry point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from growlm.data.tokens import open_data
from growlm.model import Config, GrowLM
from growlm.model.saved import CheckpointError, load_model, save_model
from growlm.substrate import SubstrateSpec
from growlm.training import flops, plan, stages
from growlm.training.loggers import open_loggers
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
from growlm.training.metrics import MetricsLog
from growlm.training.parallel import Distributed
from growlm.training.plan import Recipe, Stage
from growlm.training.rundir import RunDir
from growlm.training.stages import head_lr_scale
from growlm.training.trainstate import Checkpointer, Resumed
from growlm.training.validation import validate, validate_to_log
from growlm.util.alloc import tune_allocator
from growlm.util.fileio import atomic_write_text


class Run:
    """One growth run: its directory, model, data, state and logs."""

    def __init__(self, recipe: Recipe, out: str | Path, resume: bool = False, device: str | None = None,
                 progress: bool = True, log=print, loggers: list[str] | None = None):
        self.recipe, self.out, self.progress = recipe, Path(out), progress
        tune_allocator()
        self.train = recipe.train
        self.dist = Distributed.setup(device, self.train.parallel)
        self.log = log if self.dist.main else (lambda *a, **k: None)
        cfg = recipe.config()
        self.substrate = recipe.substrate.build(cfg.d_model)
        if self.dist.main:  # the first use of the default corpus tokenises it: once, on rank 0
            open_data(recipe.data.path, self.substrate.spec.vocab)
            if self.dist.device.type == "cpu":
                flops.cpu_peak()  # measured once (alone, not raced by the other ranks) and cached for them
        self.dist.barrier()
        # "auto" is a measurement: every rank must take rank 0's decision, or replicas would train differently
        self.precision = self.dist.agree(flops.resolve_precision(self.train.precision, self.dist.device))
        self.data = open_data(recipe.data.path, self.substrate.spec.vocab)
        plan.preflight(recipe, self.data, self.dist.world)  # before the run directory is created
        self.rundir = RunDir(self.out, "grow", resume=resume, enabled=self.dist.main)  # claimed and locked
        try:
            self.generator = torch.Generator().manual_seed(self.train.seed)
            self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.dist.main)
            self.state = RunState()
            self.opt_state = None
            self.checkpointer = Checkpointer(self.out, self.dist, self.metrics, self.generator,
                                             ("recipe_fingerprint", recipe.fingerprint()), self._plan_refusal,
                                             self.train.precision, self.precision, self.log)
            if resume:
                self._resume(cfg)
            else:
                self._start(cfg)
            names = self.train.loggers if loggers is None else loggers
            if names and self.dist.main:
                self.metrics.loggers = open_loggers(names, self.out, self.recipe.raw,
                                                    resume_step=self.state.step if resume else None)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the loggers and release the run directory's lock."""
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.close()
        self.rundir.close()

    # -- set-up -------------------------------------------------------------------------

    def _start(self, cfg) -> None:
        if self.rundir.started():
            raise ValueError(f"{self.out} already holds a run; continue it with --resume, or choose a new --out")
        torch.manual_seed(self.train.seed)
        source = self.recipe.model.get("init_from")
        if source:  # the plan grows a saved model further (load_model checks it sits on the plan's substrate)
            self.model = load_model(source, substrate=self.substrate).to(self.dist.device)
            self.log(f"starting from {source}: depth {len(self.model.blocks)}")
        else:
            self.model = GrowLM(cfg, self.substrate).to(self.dist.device)
        if self.dist.main:
            self.metrics.truncate(0)  # a run that died before its first checkpoint starts over
            atomic_write_text(self.out / "plan.json", json.dumps(self.recipe.raw, indent=1, ensure_ascii=False))
            if self.recipe.source:
                atomic_write_text(self.out / "plan.toml", self.recipe.source)
        self.dist.barrier()

    def _plan_refusal(self) -> ValueError:
        saved = self.out / "plan.json"
        diff = self.recipe.diff(Recipe.load(saved)) if saved.exists() else ["(saved plan missing)"]
        return ValueError(f"cannot resume {self.out} with a different plan: it differs in {diff}; "
                          f"resume with the run's own plan ({saved}) or start a new run")

    def _resume(self, cfg) -> None:
        resumed = self.checkpointer.resume(self._fit)
        if resumed is None:  # it stopped before its first checkpoint: nothing to keep, start it over
            if Recipe.load(self.out / "plan.json").fingerprint() != self.recipe.fingerprint():
                raise self._plan_refusal()
            self.log(f"{self.out} stopped before its first checkpoint: starting it from the beginning")
            return self._start(cfg)
        self.state, self.precision = resumed.state, self.checkpointer.precision
        self.opt_state = resumed.optimizer if self.state.stage_started else None
        self.log(f"resuming {self.out} at stage {self.state.stage} step {self.state.stage_step} "
                 f"(global step {self.state.step}, {self.state.tokens:,} tokens)")

    def _fit(self, resumed: Resumed) -> None:
        """The model a checkpoint holds, on this plan's substrate: mid-stage, frozen and adapted as the stage was."""
        ckpt, state, run = resumed.path, resumed.saved, resumed.state
        self.substrate.check_same(state.get("substrate_fingerprint", ""), f"checkpoint {ckpt}")
        if SubstrateSpec.from_dict(state["substrate"]) != self.substrate.spec:
            raise ValueError(f"checkpoint {ckpt} was made on substrate {state['substrate']}, "
                             f"the plan gives {self.substrate.spec.to_dict()}")
        meta = {"config": state["config"], "substrate": state["substrate"],
                "substrate_fingerprint": state["substrate_fingerprint"]}
        stage = self.recipe.stages[run.stage] if run.stage < len(self.recipe.stages) else None
        if stage is not None and run.stage_started:
            # mid-stage: freeze and attach adapters as the stage did, then load (adapters included)
            model = GrowLM(Config.from_dict(state["config"]), self.substrate)
            stages.apply_stage(model, stage)
            try:
                model.load_state_dict(resumed.weights, strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"checkpoint {ckpt} does not fit its plan: {e}") from None
        else:
            model = GrowLM.from_saved(ckpt, meta, resumed.weights, self.substrate)
        self.model = model.to(self.dist.device)

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, optimizer, trainee: torch.nn.Module | None = None) -> None:
        """Write the resumable state (rank 0), atomically replacing the previous checkpoint.

        ``trainee`` is the module training now (a sharded copy under FSDP); its full state is what is saved.
        """
        self.checkpointer.save(self.state, optimizer, trainee or self.model, {
            "config": self.model.cfg.to_dict(), "substrate": self.substrate.spec.to_dict(),
            "substrate_fingerprint": self.substrate.fingerprint})

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
        self.close()
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
    run = Run(recipe, out, resume=resume, device=device, progress=progress, log=log, loggers=loggers)
    try:
        return run.run()
    finally:
        run.close()
