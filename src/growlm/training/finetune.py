"""Fine-tuning a model or a composed model on token data, with checkpoints and an exact resume.

The composition's fine-tune (paper section 4.1) and ``growlm finetune``: the trainable parameters of the given
model (a composition's adapter or router, its experts' heads if asked) train through the one loop
(``growlm.training.loop``), validate every ``val_every`` steps and checkpoint every ``ckpt_every``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from growlm.data.tokens import TokenData
from growlm.model.saved import save_model
from growlm.training import flops
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
from growlm.training.plan import TrainSpec
from growlm.training.rundir import RunDir
from growlm.training.trainstate import Checkpointer
from growlm.training.validation import validate_to_log
from growlm.util.alloc import tune_allocator
from growlm.util.fileio import atomic_write_text

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

    The model only needs ``forward(idx, targets) -> loss``; the steps run through ``growlm.training.loop`` like a growth
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
        refusal = ValueError(f"cannot resume {out}: it fine-tunes another model or with other settings "
                             f"(its plan is {out / 'plan.json'}); start a new --out")
        checkpointer = Checkpointer(out, dist, metrics, generator, ("plan_fingerprint", fingerprint),
                                    lambda: refusal, train.precision, precision, log)
        state, resumed = RunState(stage_started=True), None
        if resume:
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            resumed = checkpointer.resume(lambda r: model.load_state_dict(r.weights, strict=False), optimizer,
                                          trainable)
        if resumed is not None:
            state, before, precision = resumed.state, resumed.saved["before"], checkpointer.precision
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

        def checkpoint(st: RunState) -> None:  # the replicas hold the same weights and optimiser state
            checkpointer.save(st, optimizer, model, {"before": before, "substrate_fingerprint": getattr(
                model, "substrate_fingerprint", "")}, trainable_only=True)

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
