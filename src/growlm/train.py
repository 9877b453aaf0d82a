"""The training loop: run a growth plan stage by stage, single process or under torchrun.

Parts, each swappable: ``growlm.parallel.Distributed`` (process group, DDP or FSDP2),
``build_optimizer``/``lr_at`` (AdamW, warmup + cosine), ``validate`` (loss and
bits per character per language), ``growlm.checkpoint`` (atomic, exact
resume) and ``growlm.metrics`` (JSON lines). ``grow`` ties them together; the
inner loop is ``train_stage``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from growlm import flops, growth
from growlm.alloc import tune_allocator
from growlm.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint, save_model
from growlm.data import TokenData, default_tokens
from growlm.evaluate.bpc import score_split
from growlm.fileio import atomic_write_text
from growlm.growth import Recipe, Stage, TrainSpec
from growlm.metrics import MetricsLog
from growlm.model import Config, GrowLM
from growlm.parallel import Distributed
from growlm.rundir import RunDir
from growlm.substrate import Substrate, SubstrateSpec, Vocabulary

# --------------------------------------------------------------------------- optimisation


def build_optimizer(model: torch.nn.Module, train: TrainSpec, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (matrices decay, vectors don't); fused on CUDA."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    groups = [{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
              {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=device.type == "cuda")


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``peak * min_ratio`` at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def autocast(train: TrainSpec, device: torch.device, precision: str | None = None):
    """bf16 autocast when asked for, or with precision auto where bf16 matmul is measurably faster; else nothing.
    ``precision``: an already resolved choice (a distributed run resolves ``auto`` once, on rank 0)."""
    if (precision or flops.resolve_precision(train.precision, device)) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model: torch.nn.Module, data: TokenData, train: TrainSpec, device: torch.device,
             batch: int = 16, precision: str | None = None) -> dict:
    """Validation loss (nats/token, mean over languages) and bits per character per language, counted as
    ``growlm eval --tasks ppl`` counts them (``growlm.evaluate.bpc``): windows of seq_len, whole documents
    within val_tokens. A split (or cap) shorter than one full window is refused, as ``growth.preflight`` does."""
    bpc, losses = {}, []
    for lang in data.languages:
        n = data.tokens(lang, "val").size
        used = min(n, train.val_tokens) if train.val_tokens else n
        if used - 1 < train.seq_len:
            raise ValueError(f"{lang!r}: validation uses {used} of the split's {n} tokens (val_tokens = "
                             f"{train.val_tokens}), fewer than seq_len + 1 = {train.seq_len + 1}; lower seq_len or "
                             "raise val_tokens (--val-tokens)")
        s = score_split(model, data, lang, train.seq_len, train.val_tokens, batch, device,
                        lambda: autocast(train, device, precision))
        losses.append(s.nats_per_token)
        bpc[lang] = round(s.bits_per_char, 4)
    return {"val_loss": round(sum(losses) / len(losses), 4), "val_bpc": bpc,
            "val_bpc_mean": round(sum(bpc.values()) / len(bpc), 4)}


# --------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """Where a run is: which stage, how far into it, and totals."""

    stage: int = 0
    stage_step: int = 0
    stage_started: bool = False  # the stage's growth/LoRA has been applied to the model
    step: int = 0
    tokens: int = 0


def open_data(path: str | Path, vocab_name: str) -> TokenData:
    """Token files at ``path`` (``"default"``: the embedded corpus, tokenised once into the cache)."""
    root = default_tokens(vocab_name) if str(path) == "default" else path
    data = TokenData.open(root)
    data.check_vocab(vocab_name, Vocabulary.load(vocab_name).sha256)
    return data


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
                     "substrate_fingerprint": self.substrate.fingerprint, "metrics_offset": self.metrics.offset()}
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
            val = validate(self.model, self.data, self.train, self.dist.device, precision=self.precision)
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
        """The inner loop of one stage: sample, forward, backward, clip, step, log, validate, checkpoint."""
        train, dist, model = self.train, self.dist, self.model
        total = self.recipe.stage_steps(stage)
        peak = stage.lr or train.lr
        warmup = train.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
        mixture = self.data.mixture(self.recipe.data.mixtures.get(stage.mixture) if stage.mixture != "all" else None)
        micro = train.batch_size // (train.grad_accum * dist.world)
        if micro * train.grad_accum * dist.world != train.batch_size:
            raise ValueError(f"batch_size {train.batch_size} is not divisible by grad_accum {train.grad_accum} "
                             f"x processes {dist.world}")
        model.activation_checkpointing = train.activation_checkpointing
        ddp = dist.wrap(model, self.precision)
        trainee = dist.trainee(ddp)  # the model, or its sharded copy under FSDP
        optimizer = build_optimizer(trainee, train, dist.device)
        if self.opt_state is not None:
            dist.load_optimizer_state(optimizer, self.opt_state)
            self.opt_state = None
        wrapped = ddp
        if dist.device.type == "cuda" and str(train.compile).lower() in ("auto", "true"):
            wrapped = torch.compile(ddp)
        kwargs = {"loss_chunk": train.loss_chunk} if train.loss_chunk else {}
        trainee.train()
        params = [p for p in trainee.parameters() if p.requires_grad]
        bar = tqdm(total=total, initial=self.state.stage_step, desc=f"stage {si} {stage.name}",
                   disable=not (self.progress and dist.main), dynamic_ncols=True, leave=True)
        # model FLOPs per token in this stage's setting, and the machine's peak for the precision in use
        flops_tok = flops.step_flops(model, train.seq_len).total
        peak_flops = flops.peak_flops(dist.device, self.precision) * dist.world
        t_last, tok_last = time.perf_counter(), self.state.tokens
        while self.state.stage_step < total:
            lr = lr_at(self.state.stage_step, total, peak, warmup, train.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y = self.data.sample_batch(mixture, train.batch_size, train.seq_len, self.generator)
            lo, n = dist.rank * micro * train.grad_accum, micro * train.grad_accum  # this rank's slice
            x, y = x[lo:lo + n].to(dist.device), y[lo:lo + n].to(dist.device)
            loss_sum = 0.0
            for k in range(train.grad_accum):
                with dist.no_sync(ddp, sync=k == train.grad_accum - 1), \
                        autocast(train, dist.device, self.precision):
                    loss = wrapped(x[k * micro:(k + 1) * micro], y[k * micro:(k + 1) * micro], **kwargs)
                    loss = loss / train.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
            if train.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.state.stage_step += 1
            self.state.step += 1
            self.state.tokens += train.batch_size * train.seq_len
            bar.update(1)
            if self.state.step % train.log_every == 0 or self.state.stage_step == total:
                loss_avg = dist.mean(loss_sum)
                now = time.perf_counter()
                tps = (self.state.tokens - tok_last) / max(1e-9, now - t_last)
                t_last, tok_last = now, self.state.tokens
                mfu = flops.mfu(tps * flops_tok, peak_flops)
                bar.set_postfix(loss=f"{loss_avg:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{mfu:.0%}")
                self.metrics.write({"type": "train", "step": self.state.step, "tokens": self.state.tokens,
                                    "stage": si, "depth": len(model.blocks), "loss": round(loss_avg, 5),
                                    "lr": lr, "tok_per_s": round(tps, 1), "flops_per_token": flops_tok,
                                    "model_flops_per_s": round(tps * flops_tok, 1), "mfu": round(mfu, 4),
                                    "time": round(now - self.t0, 3)})
            if train.val_every and self.state.step % train.val_every == 0 and self.state.stage_step < total:
                val = validate(trainee, self.data, train, dist.device, precision=self.precision)
                self.metrics.write({"type": "val", "step": self.state.step, "tokens": self.state.tokens,
                                    "stage": si, "depth": len(model.blocks), **val})
            if train.ckpt_every and self.state.step % train.ckpt_every == 0 and self.state.stage_step < total:
                self.checkpoint(optimizer, trainee)
        bar.close()
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


def finetune(model: torch.nn.Module, data: TokenData, out: str | Path, steps: int, train: TrainSpec,
             lr: float | None = None, mixture: dict[str, float] | None = None, progress: bool = True,
             log=print) -> dict:
    """Fine-tune the trainable parameters of any growlm language model (e.g. a composed one).

    The model only needs ``forward(idx, targets) -> loss``. Validation runs before the
    first step (so the composed model's starting loss is on record) and after the last;
    metrics go to ``out/metrics.jsonl`` and the result to ``out/model``.
    """
    out = Path(out)
    tune_allocator()
    rundir = RunDir(out, "finetune")  # claimed (empty or an earlier fine-tune's) and locked
    device = next(model.parameters()).device
    metrics = MetricsLog(out / "metrics.jsonl")
    metrics.truncate(0)  # a fine-tune starts over
    generator = torch.Generator().manual_seed(train.seed)
    mix = data.mixture(mixture)
    optimizer = build_optimizer(model, train, device)
    params = [p for p in model.parameters() if p.requires_grad]
    before = validate(model, data, train, device)
    metrics.write({"type": "val", "step": 0, "tokens": 0, **before})
    log(f"fine-tuning {sum(p.numel() for p in params):,} parameters for {steps} steps; "
        f"step-0 val loss {before['val_loss']:.4f}, bits/char {before['val_bpc']}")
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, steps, lr or train.lr, min(train.warmup_steps, steps // 10), train.min_lr_ratio)
        x, y = data.sample_batch(mix, train.batch_size, train.seq_len, generator)
        with autocast(train, device):
            loss = model(x.to(device), y.to(device))
        loss.backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0 or (step + 1) % train.log_every == 0:
            metrics.write({"type": "train", "step": step + 1, "tokens": (step + 1) * train.batch_size * train.seq_len,
                           "loss": round(float(loss.detach()), 5), "time": round(time.perf_counter() - t0, 3)})
        if progress and (step + 1) % max(1, steps // 5) == 0:
            log(f"  step {step + 1}/{steps}: loss {float(loss.detach()):.4f}")
    after = validate(model, data, train, device)
    metrics.write({"type": "val", "step": steps, "tokens": steps * train.batch_size * train.seq_len, **after})
    save_model(model, out / "model")
    rundir.close()
    return {"before": before, "after": after, "model": str(out / "model")}
