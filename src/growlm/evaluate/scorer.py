"""Batched log-likelihood and short generation for any growlm-like model.

The model interface is duck-typed, tried in this order:

1. ``model.score_positions(idx [B, T], rows [N], cols [N]) -> logits [N, V]``: logits only where asked;
2. ``model.hidden_states(idx [B, T]) -> [B, T, C]`` plus ``model.head`` (C -> V): the head runs only on the
   gathered positions (the head is most of a small model's forward time);
3. ``model(idx [B, T]) -> logits [B, T, V]``: full logits (e.g. composed models), then gathered.

Generation runs ``growlm.model.model.decode`` (the package's one decode loop), stepping ``model(idx, caches=, pos=)``
with ``model.new_caches(B, max_len)`` when present, else recomputing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from growlm.model.model import decode, model_logits


@dataclass
class Request:
    """Score ``targets`` at ``positions`` (indices into the row's input) of one row."""

    key: int
    positions: list[int]
    targets: list[int]


class Scorer:
    """Wraps a model and tokenizer: batched, length-sorted, right-padded scoring with a token budget."""

    def __init__(self, model: nn.Module, tokenizer, batch_size: int = 64, max_length: int | None = None,
                 progress: bool = True):
        for name, v in (("batch_size", batch_size), ("max_length", max_length)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size
        cfg = getattr(model, "cfg", None)
        if cfg is None and hasattr(model, "experts"):
            cfg = getattr(model.experts[0], "cfg", None)
        block = int(getattr(cfg, "block_size", 0) or 0)
        if max_length and block and max_length > block:
            raise ValueError(f"max_length {max_length} is longer than the model's block_size {block}, the longest "
                             "context it was built for; give at most that")
        self.max_length = max_length or block or 1024
        self.progress = progress
        if hasattr(model, "score_positions"):
            self.mode = "positions"
        elif hasattr(model, "hidden_states") and isinstance(getattr(model, "head", None), nn.Module):
            self.mode = "hidden"
        else:
            self.mode = "logits"
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")

    # -- core -----------------------------------------------------------------------------

    @torch.no_grad()
    def logits_at(self, idx: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Float logits [N, V] at (rows, cols) of the batch idx [B, T]."""
        if self.mode == "positions":
            return self.model.score_positions(idx, rows, cols).float()
        if self.mode == "hidden":
            h = self.model.hidden_states(idx)  # [B, T, C]
            return self.model.head(h[rows, cols]).float()
        return self.model(idx)[rows, cols].float()

    def _batches(self, lengths: list[int], desc: str) -> Iterator[list[int]]:
        """Row indices grouped into batches, longest first, at most batch_size rows and batch_size*max_length tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        budget = self.batch_size * self.max_length
        batches, cur = [], []
        for i in order:
            if cur and (len(cur) >= self.batch_size or (len(cur) + 1) * lengths[cur[0]] > budget):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        bar = None
        if self.progress and len(batches) > 1:
            bar = tqdm(total=len(lengths), desc=desc, unit="seq", leave=False)
        for b in batches:
            yield b
            if bar is not None:
                bar.update(len(b))
        if bar is not None:
            bar.close()

    def _pad(self, seqs: list[list[int]]) -> torch.Tensor:
        T = max(len(s) for s in seqs)
        pad = self.tok.pad_id if self.tok.pad_id is not None else 0
        idx = torch.full((len(seqs), T), pad, dtype=torch.long)
        for r, s in enumerate(seqs):
            idx[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        return idx.to(self.device)

    def run_rows(self, rows: list[tuple[list[int], list[Request]]], desc: str = "scoring"
                 ) -> dict[int, tuple[float, bool, int]]:
        """Sum of target log-probs, all-greedy flag and count for every request key; right padding never leaks
        into earlier positions because attention is causal."""
        out: dict[int, tuple[float, bool, int]] = {}
        for batch in self._batches([len(r[0]) for r in rows], desc):
            idx = self._pad([rows[i][0] for i in batch])
            rr, cc, tt, owner = [], [], [], []
            for b, i in enumerate(batch):
                for req in rows[i][1]:
                    rr += [b] * len(req.positions)
                    cc += req.positions
                    tt += req.targets
                    owner += [req.key] * len(req.positions)
            rows_t = torch.tensor(rr, device=self.device)
            cols_t = torch.tensor(cc, device=self.device)
            logits = self.logits_at(idx, rows_t, cols_t)  # [N, V]
            tgt = torch.tensor(tt, device=self.device)
            lp = logits.log_softmax(-1).gather(1, tgt[:, None])[:, 0]
            greedy = logits.argmax(-1) == tgt
            for k, v, g in zip(owner, lp.tolist(), greedy.tolist()):
                s, a, n = out.get(k, (0.0, True, 0))
                out[k] = (s + v, a and g, n + 1)
        return out

    # -- log-likelihood -------------------------------------------------------------------

    def loglikelihood(self, pairs: list[tuple[list[int], list[int]]], desc: str = "loglik"
                      ) -> list[tuple[float, bool]]:
        """log P(continuation | context) and whether greedy decoding would produce it, for token-id pairs.

        Inputs are left-truncated to ``max_length``; requests whose input is a prefix of another's (e.g. the
        four one-token answers " A".." D" after one prompt) share one row."""
        bos = self.tok.eos_id  # documents are joined by <|eos|>, so it is the natural "start of text"
        by_ctx: dict[tuple, list[int]] = {}
        inps: list[list[int]] = []
        conts: list[list[int]] = []
        for k, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"request {k} has an empty continuation; nothing to score")
            ctx = list(ctx) or [bos]
            full = (ctx + list(cont))[-(self.max_length + 1):]
            inps.append(full[:-1])
            conts.append(list(cont)[-len(full) + 1:])
            by_ctx.setdefault(tuple(ctx), []).append(k)
        rows: list[tuple[list[int], list[Request]]] = []
        for keys in by_ctx.values():
            kept: list[int] = []  # rows of this group, longest first
            for k in sorted(keys, key=lambda k: -len(inps[k])):
                inp, cont = inps[k], conts[k]
                req = Request(k, list(range(len(inp) - len(cont), len(inp))), cont)
                for r in kept:
                    if len(rows[r][0]) >= len(inp) and rows[r][0][: len(inp)] == inp:
                        rows[r][1].append(req)
                        break
                else:
                    rows.append((inp, [req]))
                    kept.append(len(rows) - 1)
        res = self.run_rows(rows, desc)
        return [(res[k][0], res[k][1]) for k in range(len(pairs))]

    def rolling_nll(self, tokens: list[int], desc: str = "perplexity") -> list[tuple[float, int]]:
        """(nats, count) per non-overlapping window of ``max_length`` predicted tokens over ``tokens``."""
        L = self.max_length
        rows = []
        for w, start in enumerate(range(0, len(tokens) - 1, L)):
            seg = tokens[start:start + L + 1]
            rows.append((seg[:-1], [Request(w, list(range(len(seg) - 1)), seg[1:])]))
        res = self.run_rows(rows, desc)
        return [(-res[w][0], res[w][2]) for w in range(len(rows))]

    # -- generation (``growlm.model.model.decode``: the one decode loop, sampling on the CPU generators) ------

    def generate_short(self, prompts: list[list[int]], n_new: int, temperature: float = 0.0, runs: int = 1,
                       seed: int = 0, desc: str = "generating") -> list[list[list[int]]]:
        """``n_new`` tokens after each prompt, for each of ``runs`` seeded runs: [run][prompt] -> ids.

        Batched by recomputing each step (cheap for a few tokens); the first step's logits are shared by runs."""
        gens = [torch.Generator(device="cpu").manual_seed(seed + r) for r in range(runs)]
        keep = max(1, self.max_length - n_new + 1)
        prompts = [(list(p) or [self.tok.eos_id])[-keep:] for p in prompts]
        out: list[list[list[int]]] = [[[] for _ in prompts] for _ in range(runs)]
        for batch in self._batches([len(p) for p in prompts], desc):
            seqs = [prompts[i] for i in batch]
            first = self._last_logits(seqs)

            def logits_of(new: torch.Tensor, seqs=seqs, first=first) -> torch.Tensor:  # the runs share step 1
                return self._last_logits([s + new[j].tolist() for j, s in enumerate(seqs)]) if new.shape[1] else first

            for r in range(runs):
                new = torch.cat([torch.empty(len(seqs), 0, dtype=torch.long),
                                 *decode(logits_of, len(seqs), n_new, temperature, generator=gens[r], device="cpu")],
                                dim=1)
                for j, i in enumerate(batch):
                    out[r][i] = new[j].tolist()
        return out

    def _last_logits(self, seqs: list[list[int]]) -> torch.Tensor:
        idx = self._pad(seqs)
        rows = torch.arange(len(seqs), device=self.device)
        cols = torch.tensor([len(s) - 1 for s in seqs], device=self.device)
        return self.logits_at(idx, rows, cols)

    def _step_logits(self, model: nn.Module, idx: torch.Tensor, caches, pos: int) -> torch.Tensor:
        """Float logits [1, V] after idx at ``pos`` with the model's KV caches (``model_logits``' ``last``)."""
        if self.mode == "hidden":
            return model.head(model.hidden_states(idx, caches, pos)[:, -1]).float()
        return model(idx, caches=caches, pos=pos)[:, -1].float()

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, stop: Callable[[list[int]], bool] | None = None
                 ) -> list[int]:
        """Up to ``max_new`` tokens after one prompt (KV-cached when the model has caches); ``stop(new)`` ends early."""
        prompt = (list(prompt) or [self.tok.eos_id])[-max(1, self.max_length - max_new):]
        if hasattr(self.model, "new_caches"):
            logits_of = model_logits(self.model, torch.tensor([prompt], device=self.device), max_new,
                                     last=self._step_logits)
        else:
            def logits_of(new: torch.Tensor) -> torch.Tensor:
                return self._last_logits([prompt + new[0].tolist()])
        new: list[int] = []
        # sampled on the CPU, with or without a generator (as the evaluation always has)
        for t in decode(lambda so_far: logits_of(so_far).cpu(), 1, max_new, temperature, generator=generator,
                        device=self.device):
            new.append(int(t))
            if stop and stop(new):
                break
        return new
