"""Growth runs and fine-tunes: run a growth plan stage by stage, single process or under torchrun.

Parts, each swappable: ``growlm.loop`` (the optimisation loop: AdamW, warmup + cosine,
accumulation, clipping, hooks), ``growlm.parallel.Distributed`` (process group, DDP or FSDP2),
``validate`` (loss and bits per character per language), ``growlm.checkpoint`` (atomic, exact
resume) and ``growlm.metrics`` (JSON lines). ``Run`` keeps the stage bookkeeping and hands each
stage to the loop (``train_stage``); ``finetune`` does the same for any model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from growlm import flops, growth
from growlm.alloc import tune_allocator
from growlm.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, load_model, save_checkpoint, save_model
from growlm.data import TokenData, default_tokens
from growlm.evaluate.bpc import score_split
from growlm.fileio import atomic_write_text
from growlm.growth import Recipe, Stage, TrainSpec
from growlm.loop import Hooks, Loop, RunState, StepLog, build_optimizer, compiled_blocks, lr_at, resolve_compile
from growlm.loop import autocast as loop_autocast
from growlm.metrics import MetricsLog
from growlm.model import Config, GrowLM
from growlm.parallel import Distributed, gathered_root, is_sharded
from growlm.rundir import RunDir
from growlm.substrate import Substrate, SubstrateSpec, Vocabulary


def head_lr_scale(stage: Stage, step: int) -> float:
    """The factor on the stage's learning rate the head trains at in ``step`` (0-based): 0 for its first
    ``head_freeze_steps``, then a linear ramp to 1 over ``head_warmup_steps``."""
    s = step - stage.head_freeze_steps
    if s < 0:
        return 0.0
    if s < stage.head_warmup_steps:
        return (s + 1) / stage.head_warmup_steps
    return 1.0


def autocast(train: TrainSpec, device: torch.device, precision: str | None = None):
    """bf16 autocast when asked for, or with precision auto where bf16 matmul is measurably faster; else nothing.
    ``precision``: an already resolved choice (a distributed run resolves ``auto`` once, on rank 0)."""
    return loop_autocast(device, precision or flops.resolve_precision(train.precision, device))


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model: torch.nn.Module, data: TokenData, train: TrainSpec, device: torch.device,
             batch: int = 16, precision: str | None = None, dist: Distributed | None = None) -> dict:
    """Validation loss (nats/token, mean over languages) and bits per character per language, counted as
    ``growlm eval --tasks ppl`` counts them (``growlm.evaluate.bpc``): windows of seq_len, whole documents
    within val_tokens. A split (or cap) shorter than one full window is refused, as ``growth.preflight`` does.

    Under torchrun (``dist``, called on every rank) each process scores every world-th batch of windows and the
    per-window losses are summed over processes: every rank returns one process's numbers. A sharded (FSDP) model
    runs its forwards in lockstep, so there every rank scores every window."""
    share = (dist.rank, dist.world) if dist is not None and dist.world > 1 and not is_sharded(model) else (0, 1)
    bpc, losses = {}, []
    for lang in data.languages:
        n = data.tokens(lang, "val").size
        used = min(n, train.val_tokens) if train.val_tokens else n
        if used - 1 < train.seq_len:
            raise ValueError(f"{lang!r}: validation uses {used} of the split's {n} tokens (val_tokens = "
                             f"{train.val_tokens}), fewer than seq_len + 1 = {train.seq_len + 1}; lower seq_len or "
                             "raise val_tokens (--val-tokens)")
    with gathered_root(model):  # a sharded copy's head and final norm, whole for scoring
        for lang in data.languages:
            s = score_split(model, data, lang, train.seq_len, train.val_tokens, batch, device,
                            lambda: autocast(train, device, precision), share=share)
            if share[1] > 1:  # each window's nats from the one rank that scored it, 0 from the others: exact sums
                s = replace(s, window_nats=dist.all_sum(s.window_nats))
            losses.append(s.nats_per_token)
            bpc[lang] = round(s.bits_per_char, 4)
    return {"val_loss": round(sum(losses) / len(losses), 4), "val_bpc": bpc,
            "val_bpc_mean": round(sum(bpc.values()) / len(bpc), 4)}


def validate_to_log(model: torch.nn.Module, data: TokenData, train: TrainSpec, dist: Distributed, precision: str,
                    metrics: MetricsLog, state: RunState, compiled: bool = False, **fields) -> dict:
    """``validate`` during a run, written to ``metrics`` as a ``val`` row at the state's step and tokens (then
    ``fields``); returns the result. ``compiled``: the blocks are compiled for training's shapes, and validation's
    shapes run them eager rather than compile more graphs."""
    with torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext():
        val = validate(model, data, train, dist.device, precision=precision, dist=dist)
    metrics.write({"type": "val", "step": state.step, "tokens": state.tokens, **fields, **val})
    return val


# --------------------------------------------------------------------------- the run


def open_data(path: str | Path, vocab_name: str) -> TokenData:
    """Token files at ``path`` (``"default"``: the embedded corpus, tokenised once into the cache)."""
    root = default_tokens(vocab_name) if str(path) == "default" else path
    data = TokenData.open(root)
    data.check_vocab(vocab_name, Vocabulary.load(vocab_name).sha256)
    return data


def resumed_precision(setting: str, saved: dict, now: str, log) -> str:
    """The precision a resumed run goes on in: with ``auto``, the one it trained in (``saved["precision"]``), not
    this process's measurement, which a busy or other machine can flip (exact resume)."""
    was = saved.get("precision")
    if setting != "auto" or was is None or was == now:
        return now
    log(f"precision auto: going on in {was}, as the run trained so far (this machine would now choose {now})")
    return was


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _restore_rng(rng: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["data"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


class Run:
    """One growth run: its directory, model, data, state and logs."""

    def __init__(self, recipe: Recipe, out: str | Path, resume: bool = False, device: str | None = None,
                 progress: bool = True, log=print):
        self.recipe, self.out, self.progress = recipe, Path(out), progress
        tune_allocator()
        self.train = recipe.train
        self.dist = Distributed.setup(device, self.train.parallel)
        self.log = log if self.dist.main else (lambda *a, **k: None)
        cfg = recipe.config()
        sub_opts = {k: v for k, v in recipe.substrate.items() if k not in ("kind", "vocab")}
        kind, vocab = recipe.substrate.get("kind", "glyph"), recipe.substrate.get("vocab", "compact")
        self.substrate = Substrate.build(kind, vocab, cfg.d_model, **sub_opts)
        if self.dist.main:  # the first use of the default corpus tokenises it: once, on rank 0
            open_data(recipe.data.path, self.substrate.spec.vocab)
            if self.dist.device.type == "cpu":
                flops.cpu_peak()  # measured once (alone, not raced by the other ranks) and cached for them
        self.dist.barrier()
        # "auto" is a measurement: every rank must take rank 0's decision, or replicas would train differently
        self.precision = self.dist.agree(flops.resolve_precision(self.train.precision, self.dist.device))
        self.data = open_data(recipe.data.path, self.substrate.spec.vocab)
        growth.preflight(recipe, self.data, self.dist.world)  # before the run directory is created
        self.rundir = RunDir(self.out, "grow", resume=resume, enabled=self.dist.main)  # claimed and locked
        try:
            self.generator = torch.Generator().manual_seed(self.train.seed)
            self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.dist.main)
            self.state = RunState()
            self.opt_state = None
            if resume:
                self._resume(cfg)
            else:
                self._start(cfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory's lock."""
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

    def _check_plan(self, fingerprint: str | None) -> None:
        if fingerprint != self.recipe.fingerprint():
            saved = self.out / "plan.json"
            diff = self.recipe.diff(Recipe.load(saved)) if saved.exists() else ["(saved plan missing)"]
            raise ValueError(f"cannot resume {self.out} with a different plan: it differs in {diff}; "
                             f"resume with the run's own plan ({saved}) or start a new run")

    def _resume(self, cfg) -> None:
        ckpt = find_checkpoint(self.out)
        if ckpt is None:  # it stopped before its first checkpoint: nothing to keep, start it over
            self._check_plan(Recipe.load(self.out / "plan.json").fingerprint())
            self.log(f"{self.out} stopped before its first checkpoint: starting it from the beginning")
            return self._start(cfg)
        state, weights, opt, rng = load_checkpoint(ckpt)
        self._check_plan(state.get("recipe_fingerprint"))
        self.substrate.check_same(state.get("substrate_fingerprint", ""), f"checkpoint {ckpt}")
        if SubstrateSpec.from_dict(state["substrate"]) != self.substrate.spec:
            raise ValueError(f"checkpoint {ckpt} was made on substrate {state['substrate']}, "
                             f"the plan gives {self.substrate.spec.to_dict()}")
        self.state = RunState(**state["run"])
        self.precision = resumed_precision(self.train.precision, state, self.precision, self.log)
        meta = {"config": state["config"], "substrate": state["substrate"],
                "substrate_fingerprint": state["substrate_fingerprint"]}
        stage = self.recipe.stages[self.state.stage] if self.state.stage < len(self.recipe.stages) else None
        if stage is not None and self.state.stage_started:
            # mid-stage: freeze and attach adapters as the stage did, then load (adapters included)
            model = GrowLM(Config.from_dict(state["config"]), self.substrate)
            growth.apply_stage(model, stage)
            try:
                model.load_state_dict(weights, strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"checkpoint {ckpt} does not fit its plan: {e}") from None
        else:
            model = GrowLM.from_saved(ckpt, meta, weights, self.substrate)
        self.model = model.to(self.dist.device)
        self.opt_state = opt if self.state.stage_started else None
        _restore_rng(rng, self.generator, self.dist.device)
        self.metrics.truncate(int(state.get("metrics_offset", self.metrics.offset())))
        self.log(f"resuming {self.out} at stage {self.state.stage} step {self.state.stage_step} "
                 f"(global step {self.state.step}, {self.state.tokens:,} tokens)")

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, optimizer, trainee: torch.nn.Module | None = None) -> None:
        """Write the resumable state (rank 0), atomically replacing the previous checkpoint.

        ``trainee`` is the module training now (a sharded copy under FSDP); its full state is what is saved.
        """
        self.dist.barrier()
        weights, opt = self.dist.full_state(trainee or self.model, optimizer)  # every rank: gathering is collective
        if self.dist.main:
            state = {"run": asdict(self.state), "recipe_fingerprint": self.recipe.fingerprint(),
                     "config": self.model.cfg.to_dict(), "substrate": self.substrate.spec.to_dict(),
                     "substrate_fingerprint": self.substrate.fingerprint, "metrics_offset": self.metrics.offset(),
                     "precision": self.precision}
            save_checkpoint(self.out / "checkpoints" / "latest", weights, opt, state,
                            _rng_state(self.generator, self.dist.device))
        self.dist.barrier()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> Path:
        """Run every remaining stage; returns the final model directory."""
        t0 = self.t0 = time.perf_counter()
        for si in range(self.state.stage, len(self.recipe.stages)):
            stage = self.recipe.stages[si]
            if not self.state.stage_started:
                budget = growth.begin_stage(self.model, stage)
                self.model.to(self.dist.device)
                self.state.stage_started, self.opt_state = True, None
                self.metrics.write({"type": "stage", "stage": si, "name": stage.name, "kind": stage.kind,
                                    "step": self.state.step, "tokens": self.state.tokens, **budget})
                self.log(f"stage {si} '{stage.name}' ({stage.kind}): depth {budget['depth']}, "
                         f"active trainable parameters {budget['active_params']:,} "
                         f"(LoRA {budget['lora_params']:,}) of {budget['total_params']:,}; "
                         f"{self.recipe.stage_steps(stage)} steps")
            self.train_stage(si, stage)
            growth.end_stage(self.model, stage)
            val = validate(self.model, self.data, self.train, self.dist.device, precision=self.precision,
                           dist=self.dist)
            depth = len(self.model.blocks)
            self.metrics.write({"type": "stage_end", "stage": si, "name": stage.name, "step": self.state.step,
                                "tokens": self.state.tokens, "depth": depth, **val})
            self.log(f"stage {si} done: depth {depth}, val loss {val['val_loss']:.4f}, bits/char {val['val_bpc']}")
            if self.dist.main:
                save_model(self.model, self.out / "stages" / f"stage-{si:02d}",
                           extra={"stage": si, "stage_name": stage.name, "depth": depth, **val})
            self.state = RunState(stage=si + 1, step=self.state.step, tokens=self.state.tokens)
            self.checkpoint(None)
        if self.dist.main:
            save_model(self.model, self.out / "model", extra={"depth": len(self.model.blocks)})
        self.close()
        self.log(f"run finished in {time.perf_counter() - t0:.0f}s: {self.out / 'model'}")
        return self.out / "model"

    def train_stage(self, si: int, stage: Stage) -> None:
        """One stage through ``growlm.loop``: wrap the model for this stage, then log, validate and checkpoint."""
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
         progress: bool = True, log=print) -> Path:
    """Run (or resume) a growth plan into the run directory ``out``; returns the final model directory."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    run = Run(recipe, out, resume=resume, device=device, progress=progress, log=log)
    try:
        return run.run()
    finally:
        run.close()


# --------------------------------------------------------------------------- fine-tuning any model


def _weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes, dtypes and bytes): which model a fine-tune started from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def finetune(model: torch.nn.Module, data: TokenData, out: str | Path, steps: int, train: TrainSpec,
             lr: float | None = None, mixture: dict[str, float] | None = None, progress: bool = True,
             log=print, resume: bool = False, validation: bool = True) -> dict:
    """Fine-tune the trainable parameters of any growlm language model (e.g. a composed one).

    The model only needs ``forward(idx, targets) -> loss``; the steps run through ``growlm.loop`` like a growth
    stage, with its blocks compiled as a stage's are when ``train.compile`` says so. Validation (eager) runs before
    the first step (so the starting loss is on record), every ``train.val_every`` steps and after the last; metrics
    go to ``out/metrics.jsonl``, the plan to ``out/plan.json``, a checkpoint (the trainable parameters, optimiser
    and RNG states) every ``train.ckpt_every`` steps, and the result to ``out/model``. ``resume`` continues from the
    checkpoint bit-identically; it must be given the same starting model and settings. ``validation=False`` skips
    every validation, for callers that score the model themselves (before and after are then None).
    """
    refusal = getattr(model, "training_refusal", lambda: None)()
    if refusal:
        raise ValueError(f"cannot fine-tune: {refusal}")
    out = Path(out)
    tune_allocator()
    device = next(model.parameters()).device
    dist = Distributed.setup(device.type, train.parallel)  # one process, or every rank of a torchrun
    if dist.world > 1 and train.parallel != "ddp":
        raise ValueError(f"fine-tuning runs under DDP across processes; parallel = {train.parallel!r} is for growth "
                         "runs (it shards a model's blocks)")
    model.to(dist.device)
    device, log = dist.device, log if dist.main else (lambda *a, **k: None)
    compiled = resolve_compile(train.compile, device)  # refused (compile = true, no C++ compiler) before any file
    plan = {"tool": "finetune", "steps": steps, "lr": lr or train.lr, "mixture": mixture, "train": asdict(train),
            "start_weights": _weights_digest(model)}
    fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()
    rundir = RunDir(out, "finetune", resume=resume, enabled=dist.main)  # claimed and locked by the writing rank
    try:
        dist.barrier()
        metrics = MetricsLog(out / "metrics.jsonl", enabled=dist.main)
        generator = torch.Generator().manual_seed(train.seed)
        optimizer = build_optimizer(model, train, device)
        # "auto" is a measurement: every rank takes rank 0's decision
        precision = dist.agree(flops.resolve_precision(train.precision, device))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state, ckpt = RunState(stage_started=True), find_checkpoint(out) if resume else None
        if ckpt is not None:
            saved, weights, opt, rng = load_checkpoint(ckpt)
            if saved.get("plan_fingerprint") != fingerprint:
                raise ValueError(f"cannot resume {out}: it fine-tunes another model or with other settings "
                                 f"(its plan is {out / 'plan.json'}); start a new --out")
            if set(weights) != trainable:
                raise CheckpointError(f"checkpoint {ckpt} holds {sorted(set(weights) ^ trainable)[:4]}... that do "
                                      "not match the model's trainable parameters")
            model.load_state_dict(weights, strict=False)
            optimizer.load_state_dict(opt)
            _restore_rng(rng, generator, device)
            metrics.truncate(int(saved["metrics_offset"]))
            state, before = RunState(**saved["run"]), saved["before"]
            precision = resumed_precision(train.precision, saved, precision, log)
            log(f"resuming the fine-tune in {out} at step {state.stage_step} of {steps}")
        else:
            if resume:
                log(f"{out} stopped before its first checkpoint: starting it from the beginning")
            metrics.truncate(0)
            if dist.main:
                atomic_write_text(out / "plan.json", json.dumps(plan, indent=1, default=str))
            before = validate_to_log(model, data, train, dist, precision, metrics, state) if validation else None
            log(f"fine-tuning {sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters for "
                f"{steps} steps" + (f"; step-0 val loss {before['val_loss']:.4f}, bits/char {before['val_bpc']}"
                                    if before else "") + (f" on {dist.world} processes" if dist.world > 1 else ""))

        def write_log(st: RunState, s: StepLog) -> None:
            metrics.write({"type": "train", "step": st.step, "tokens": st.tokens, "loss": round(s.loss, 5),
                           "lr": s.lr, "tok_per_s": round(s.tokens_per_s, 1), "time": round(s.seconds, 3)})

        def checkpoint(st: RunState) -> None:
            dist.barrier()
            if dist.main:  # the replicas hold the same weights and optimiser state: rank 0 writes them
                weights = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
                save_checkpoint(out / "checkpoints" / "latest", weights, optimizer,
                                {"run": asdict(st), "plan_fingerprint": fingerprint, "before": before,
                                 "metrics_offset": metrics.offset(), "precision": precision,
                                 "substrate_fingerprint": getattr(model, "substrate_fingerprint", "")},
                                _rng_state(generator, device))
            dist.barrier()

        def validate_now(st: RunState) -> None:  # every val_every steps, the blocks eager (as a stage's)
            validate_to_log(model, data, train, dist, precision, metrics, st, compiled)

        mix = data.mixture(mixture)
        peak, warmup = lr or train.lr, min(train.warmup_steps, steps // 10)
        wrapped = dist.wrap(model, precision)  # DDP across processes, the model itself in one
        # the blocks (each expert's, in a composed model) compile afresh; validation before and after, outside, eager
        with compiled_blocks(model, compiled):
            Loop(wrapped, train, dist, precision, progress=progress, desc="fine-tune").run(
                optimizer, steps, state,
                batches=lambda: data.sample_batch(mix, train.batch_size, train.seq_len, generator),
                lr_of=lambda step: lr_at(step, steps, peak, warmup, train.min_lr_ratio),
                hooks=Hooks(log=write_log, validate=validate_now if validation else None,
                            checkpoint=checkpoint if train.ckpt_every else None))
        after = validate_to_log(model, data, train, dist, precision, metrics, state) if validation else None
        if dist.main:
            save_model(model, out / "model")
        dist.barrier()
    finally:
        rundir.close()
    return {"before": before, "after": after, "model": str(out / "model")}
