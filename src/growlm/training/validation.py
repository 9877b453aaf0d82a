"""Validation during training: loss and bits per character per language, as ``growlm eval --tasks ppl``.

``validate`` scores the validation split of every language in windows of seq_len (``growlm.evaluate.bpc``),
split across processes under torchrun; ``validate_to_log`` writes it as a ``val`` metrics row; ``autocast``
is the precision a run validates and trains in.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from growlm.data.tokens import TokenData
from growlm.evaluate.bpc import score_split
from growlm.training import flops
from growlm.training.loop import (
    RunState,
)
from growlm.training.loop import autocast as loop_autocast
from growlm.training.metrics import MetricsLog
from growlm.training.parallel import Distributed, gathered_root, is_sharded
from growlm.training.plan import TrainSpec


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
