"""Composition of experts that share a substrate (paper v1, sections 3.1 and 4.1).

Experts trained separately on the same frozen substrate share their input and
output token spaces, so their next-token distributions can be combined with no
re-training. The guarantee is the substrate *fingerprint*: it hashes the
substrate kind, the vocabulary's content, d_model and the options. Experts may
differ in depth, heads and block style, but not in width (a different d_model
is a different substrate, hence a different fingerprint) and not in
vocabulary; composing such experts stops with a ``SubstrateMismatchError``
that names both sides.

Methods (``method=``), all of which give logits [B, T, V]:

- ``average``: sum_i w_i * logits_i (the paper; no parameters);
- ``prob``: log sum_i w_i * softmax(logits_i) (a mixture of distributions; no parameters);
- ``adapter``: gated fusion of the experts' logits, equal to ``average`` at step 0
  (see ``LogitAdapter`` for its parameter count);
- ``router``: per-token softmax gates from the experts' final hidden states
  (Branch-Train-MiX style), equal to ``average`` at step 0; (sum_i C_i + 1) * N parameters;
- ``posterior``: a mixture of distributions whose weights are each expert's posterior given the text so
  far (``window`` > 0: the last ``window`` tokens only); no parameters, nothing to train (``posterior_log_weights``).

Cost: ``average`` and ``router`` compute the loss without any [B, T, V] tensor
(the weighted heads are one linear over the concatenated hidden states, fed to
``chunked_cross_entropy``); so do ``prob`` and ``posterior`` when scored without a gradient
(``token_nll``: only each expert's log-probability of the target and of the text's next token is
needed, read chunk by chunk), and ``adapter``'s loss is taken a chunk of rows at a time, its
gradient included (``_RowChunkLoss``). Logits for generation, and ``prob`` trained with its heads,
hold N + 1 float32 logit tensors [B, T, V]; ``posterior`` adds one [B, N, V] log-probability row
and [B, N, T] float64 running sums in its generation cache.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from growlm.model import GrowLM
from growlm.model.losses import IGNORE_INDEX, chunked_cross_entropy, token_log_probs
from growlm.model.model import KVCache, generate
from growlm.model.saved import CheckpointError, load_model, register_kind
from growlm.substrate import Substrate, SubstrateMismatchError

METHODS = ("average", "prob", "adapter", "router", "posterior")
MIN_LOG_WEIGHT = -30.0  # trainable gates start at log w; a zero weight becomes exp(-30), not -inf


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    """Validate expert weights (finite, non-negative, not all zero) and scale them to sum 1; None = equal."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights {weights} for {n} experts; give one weight per expert")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"expert weights must be finite and non-negative, got {weights}")
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"expert weights {weights} sum to 0; at least one expert needs a positive weight")
    return [w / total for w in weights]


def _describe(e: GrowLM, name: str) -> str:
    spec = e.substrate_spec or {}
    return (f"{name} (substrate {e.substrate_fingerprint[:12] or '<none>'}: {spec.get('kind', '?')}, "
            f"vocab {spec.get('vocab', '?')} v{spec.get('vocab_version', '?')}, V {e.cfg.vocab_size}, "
            f"d_model {e.cfg.d_model})")


def check_compatible(experts: list[nn.Module], names: list[str] | None = None) -> None:
    """Raise ``SubstrateMismatchError`` unless all experts are GrowLMs on one vocabulary and one substrate."""
    if not experts:
        raise ValueError("compose needs at least one expert, got none")
    names = names or [f"expert {i}" for i in range(len(experts))]
    for e, name in zip(experts, names):
        if not isinstance(e, GrowLM):
            raise ValueError(f"{name} is a {type(e).__name__}, not a GrowLM; compose the experts of a composed "
                            "model directly instead of nesting compositions")
    first, fname = experts[0], names[0]
    vocab0 = (first.substrate_spec.get("vocab"), first.substrate_spec.get("vocab_version"), first.cfg.vocab_size)
    for e, name in zip(experts[1:], names[1:]):
        vocab = (e.substrate_spec.get("vocab"), e.substrate_spec.get("vocab_version"), e.cfg.vocab_size)
        if vocab != vocab0:
            raise SubstrateMismatchError(
                f"vocabulary mismatch: {_describe(first, fname)} vs {_describe(e, name)}; experts must share "
                "one vocabulary so that token ids mean the same thing in both")
        if e.substrate_fingerprint != first.substrate_fingerprint:
            why = ("; experts of different width (d_model) are on different substrates and cannot be composed"
                   if e.cfg.d_model != first.cfg.d_model else "")
            raise SubstrateMismatchError(
                f"substrate mismatch: {_describe(first, fname)} vs {_describe(e, name)}{why}; composition is "
                "only safe for experts trained on the same substrate fingerprint")


def posterior_log_weights(prefix: torch.Tensor, log_prior: torch.Tensor, positions: torch.Tensor,
                          window: int = 0) -> torch.Tensor:
    """Normalised log posterior weights [B, N, T] of N experts at ``positions`` [T] (float64).

    ``prefix[b, k, t]`` is expert k's summed log-probability of tokens 1..t of row b (the tokens before
    position t that it predicted: sum_{s<t} log p_k(x_{s+1} | x_{<=s})), so at position t
    log w_k = log prior_k + prefix[t] - prefix[max(0, t - window)] (window 0: prefix[t], the whole text), then
    normalised with logsumexp over the experts. Position 0 gets the prior.
    """
    cur = prefix[..., positions]
    if window > 0:
        cur = cur - prefix[..., (positions - window).clamp(min=0)]
    logw = log_prior.to(torch.float64)[None, :, None] + cur
    return logw - logw.logsumexp(1, keepdim=True)


def log_mix(terms: list[torch.Tensor]) -> torch.Tensor:
    """log sum_k exp(terms_k), elementwise over N tensors of one shape (several times faster on CPU than a
    logsumexp across a stacked dimension of [B, T, V] tensors)."""
    out = terms[0]
    for t in terms[1:]:
        out = torch.logaddexp(out, t)
    return out


class PosteriorState:
    """What ``posterior`` composition carries between incremental calls of one generation.

    ``prefix[b, k, t]``: expert k's summed log-probability of tokens 1..t (float64; written up to ``pos`` - 1);
    ``last`` [B, N, V]: the experts' log-probabilities at position ``pos`` - 1, which score the next token given.
    """

    def __init__(self, batch: int, n: int, max_len: int, device):
        self.prefix = torch.zeros(batch, n, max_len, dtype=torch.float64, device=device)
        self.last: torch.Tensor | None = None
        self.pos = 0  # positions seen


class ComposedCaches(list):
    """One list of KV caches per expert (``caches[i]``), plus the posterior's running state (None otherwise)."""

    def __init__(self, per_expert: list[list[KVCache]], posterior: PosteriorState | None = None):
        super().__init__(per_expert)
        self.posterior = posterior


class LogitAdapter(nn.Module):
    """Gated fusion of N experts' logits, equal to the weighted average at initialisation.

    fused[v] = sum_i g_i * (1 + s_i[v]) * logits_i[v] + b[v], with per-position gates
    g = softmax(G(concat_i(log_softmax(logits_i) @ P)) + log w). P [V, r] is shared by the experts,
    G is zero at init (so g = w), s and b start at zero. Parameters: V*r + N*(N*r + 1) + N*V + V
    (a dense N*V -> V map would be N*V^2, 8.6e9 at V = 65536, N = 2).
    """

    def __init__(self, n: int, vocab: int, weights: list[float], rank: int = 8):
        super().__init__()
        if rank < 1:
            raise ValueError(f"adapter rank must be >= 1, got {rank}")
        self.proj = nn.Parameter(torch.randn(vocab, rank) / math.sqrt(vocab))  # P, shared by the experts
        self.gate = nn.Linear(n * rank, n)
        nn.init.zeros_(self.gate.weight)
        with torch.no_grad():
            self.gate.bias.copy_(torch.tensor(weights).log().clamp(min=MIN_LOG_WEIGHT))
        self.scale = nn.Parameter(torch.zeros(n, vocab))  # s: per-expert, vocabulary-wise scale delta
        self.bias = nn.Parameter(torch.zeros(vocab))  # b

    @staticmethod
    def num_parameters(n: int, vocab: int, rank: int = 8) -> int:
        """V*r + N*(N*r + 1) + N*V + V."""
        return vocab * rank + n * (n * rank + 1) + n * vocab + vocab

    def forward(self, logits: list[torch.Tensor]) -> torch.Tensor:
        L = torch.stack(logits, dim=-2).float()  # [B, T, N, V]
        feats = L.log_softmax(-1) @ self.proj.float()  # [B, T, N, r]
        g = self.gate(feats.flatten(-2)).softmax(-1)  # [B, T, N]
        return (g[..., None] * (1 + self.scale) * L).sum(-2) + self.bias


class _RowChunkLoss(torch.autograd.Function):
    """sum_c loss_of_rows(rows of chunk c) whose parameters' gradients are taken chunk by chunk in the forward
    (the backward only scales them), so one chunk's tensors exist at a time. For losses whose inputs need no
    gradient (a fusion over frozen experts): only ``params`` get one."""

    @staticmethod
    def forward(ctx, loss_of_rows, n_rows: int, chunk: int, *params):
        total = torch.zeros((), dtype=torch.float32, device=params[0].device)
        grads = [torch.zeros_like(p) for p in params]
        for s in range(0, n_rows, chunk):
            with torch.enable_grad():
                loss = loss_of_rows(s, min(s + chunk, n_rows))
                got = torch.autograd.grad(loss, params, allow_unused=True)
            total += loss.detach().float()
            for g, d in zip(grads, got):
                if d is not None:
                    g.add_(d)
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        return (None, None, None, *(g * grad_out.to(g.dtype) for g in ctx.saved_tensors))


ADAPTER_CHUNK_ELEMENTS = 1 << 22  # [rows, N, V] elements of one chunk of the adapter's loss (16 MB in float32)


class ComposedLM(nn.Module):
    """N experts on one substrate, combined into one language model (same forward/generate as GrowLM)."""

    kind = "composed"  # how ``growlm.model.saved`` names this model class in model.json

    def __init__(self, experts: list[GrowLM], method: str = "average", weights: list[float] | None = None, *,
                 rank: int = 8, train_heads: bool = False, window: int = 0, names: list[str] | None = None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown composition method {method!r}; valid methods are {list(METHODS)}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"posterior window must be an integer >= 0 (0 = the whole text so far), got {window!r}")
        if window and method != "posterior":
            raise ValueError(f"window={window} applies to method 'posterior' only, not {method!r}")
        if method == "posterior" and train_heads:
            raise ValueError("method 'posterior' is training-free: its weights come from the experts' own "
                             "probabilities, so there are no heads to fine-tune with it; use train_heads with "
                             "'average', 'prob', 'adapter' or 'router'")
        check_compatible(list(experts), names)
        self.method, self.rank, self.train_heads, self.window = method, int(rank), bool(train_heads), window
        self.weights = normalise_weights(weights, len(experts))
        self.experts = nn.ModuleList(experts)
        first = experts[0]
        self.vocab_size = first.cfg.vocab_size
        self.substrate_fingerprint, self.substrate_spec = first.substrate_fingerprint, dict(first.substrate_spec)
        p = first.head.weight
        self.register_buffer("mix", torch.tensor(self.weights, dtype=torch.float32, device=p.device),
                             persistent=False)  # [N]; the weights live in the JSON meta
        self.adapter = self.router = None
        if method == "adapter":
            self.adapter = LogitAdapter(len(experts), self.vocab_size, self.weights, rank).to(p.device)
        elif method == "router":
            self.router = nn.Linear(sum(e.cfg.d_model for e in experts), len(experts)).to(p.device)
            nn.init.zeros_(self.router.weight)
            with torch.no_grad():
                self.router.bias.copy_(self.mix.log().clamp(min=MIN_LOG_WEIGHT))
        self.set_trainable(train_heads)
        self._shared = self._share_embeddings()

    # -- construction -----------------------------------------------------------------

    def _share_embeddings(self) -> list[int]:
        """Point equal frozen embeddings at expert 0's tensor (one copy of the substrate); returns who shares."""
        e0, shared = self.experts[0], []
        if "embedding" not in e0._buffers:
            return shared
        for i, e in enumerate(self.experts):
            if i == 0 or "embedding" not in e._buffers:
                continue
            a, b = e0.embedding, e.embedding
            same = a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            if same and (a.device.type == "meta" or torch.equal(a, b)):
                e.embedding = a
                shared.append(i)
        return shared

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for i in getattr(self, "_shared", []):  # .to()/.half() converts each buffer on its own: re-share
            self.experts[i].embedding = self.experts[0].embedding
        return self

    def set_trainable(self, train_heads: bool = False) -> None:
        """Freeze the experts (optionally leaving their LM heads trainable); the adapter/router stays trainable."""
        for e in self.experts:
            e.requires_grad_(False)
            e.head.requires_grad_(train_heads)
        for m in (self.adapter, self.router):
            if m is not None:
                m.requires_grad_(True)
        self.train_heads = bool(train_heads)

    def training_refusal(self) -> str | None:
        """Why fine-tuning this model makes no sense (None when it does): ``posterior`` has nothing to train."""
        if self.method == "posterior":
            return ("this composed model uses method 'posterior', which is training-free (each expert's weight is its "
                    "posterior given the text so far): it has no parameters to fine-tune; compose with 'adapter' or "
                    "'router' (or --train-heads with 'average') for a trainable fusion")
        return None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should see."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_counts(self) -> dict[str, int]:
        """Total, trainable, experts' and fusion (adapter/router) parameter counts."""
        fusion = sum(p.numel() for m in (self.adapter, self.router) if m is not None for p in m.parameters())
        return {"total": sum(p.numel() for p in self.parameters()),
                "trainable": sum(p.numel() for p in self.trainable_parameters()),
                "experts": sum(p.numel() for p in self.experts.parameters()), "fusion": fusion}

    # -- forward ------------------------------------------------------------------------

    def _gates(self, hs: list[torch.Tensor]) -> torch.Tensor:
        """Expert weights per position [B, T, N] (constant for ``average``)."""
        if self.router is None:
            return self.mix.to(hs[0].dtype).expand(*hs[0].shape[:2], -1)
        return self.router(torch.cat(hs, dim=-1)).softmax(-1)

    def _joint_head(self, hs: list[torch.Tensor], g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sum_i g_i (h_i W_i^T + b_i) as one linear: inputs [B*T, sum C_i + n_bias] and weight [V, same]."""
        feats = [g[..., i:i + 1] * h for i, h in enumerate(hs)]
        cols = [e.head.weight for e in self.experts]
        for i, e in enumerate(self.experts):
            if e.head.bias is not None:  # bias_i enters as an extra weight column driven by g_i
                feats.append(g[..., i:i + 1].to(hs[i].dtype))
                cols.append(e.head.bias[:, None])
        x = torch.cat(feats, dim=-1)  # [B, T, sum C_i + n_bias]
        w = torch.cat(cols, dim=1)  # [V, sum C_i + n_bias]; a copy of the heads, made once per call
        return x.reshape(-1, x.shape[-1]), w

    def _linear_loss(self, hs: list[torch.Tensor], g: torch.Tensor, targets: torch.Tensor,
                     loss_chunk: int) -> torch.Tensor:
        """CE of sum_i g_i (h_i W_i^T + b_i) (``_joint_head``): no [B, T, V] tensor."""
        x, w = self._joint_head(hs, g)
        return chunked_cross_entropy(x, w, None, targets.reshape(-1), chunk=loss_chunk)

    def _adapter_rows(self) -> int:
        """Rows per chunk of the adapter's [rows, N, V] tensors (``ADAPTER_CHUNK_ELEMENTS``)."""
        return max(16, ADAPTER_CHUNK_ELEMENTS // (len(self.experts) * self.experts[0].head.weight.shape[0]))

    def _adapter_fused(self, flat: list[torch.Tensor], s: int, e: int) -> torch.Tensor:
        """The adapter's fused logits [e - s, V] of rows s..e of the experts' flattened hidden states."""
        return self.adapter([ex.head(h[s:e]) for ex, h in zip(self.experts, flat)]).float()

    @torch.no_grad()
    def _adapter_nll(self, hs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """-log p(target) of the adapter's fusion at every flattened position (0 where ignored), a chunk of rows at
        a time; no gradient."""
        flat, y, rows = [h.reshape(-1, h.shape[-1]) for h in hs], targets.reshape(-1), self._adapter_rows()
        nll = torch.empty(y.numel(), dtype=torch.float32, device=y.device)
        for s in range(0, y.numel(), rows):
            nll[s:s + rows] = F.cross_entropy(self._adapter_fused(flat, s, s + rows), y[s:s + rows],
                                              ignore_index=IGNORE_INDEX, reduction="none")
        return nll

    def _adapter_loss(self, hs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the adapter's fused logits, a chunk of rows at a time: each chunk's expert logits,
        fusion and loss exist only while its gradient is taken (``_RowChunkLoss``; the experts below their heads
        are frozen, so only the fusion's and any trainable head's parameters need one). Without this, a demo-size
        step held ~2.3 GB of [B, T, N, V] tensors."""
        flat = [h.reshape(-1, h.shape[-1]) for h in hs]
        y = targets.reshape(-1)
        n_valid = (y != IGNORE_INDEX).sum().clamp(min=1)
        params = [p for p in self.parameters() if p.requires_grad] if torch.is_grad_enabled() else []
        if not params:
            return self._adapter_nll(hs, targets).sum() / n_valid

        def loss_of_rows(s: int, e: int) -> torch.Tensor:
            return F.cross_entropy(self._adapter_fused(flat, s, e), y[s:e], ignore_index=IGNORE_INDEX, reduction="sum")

        return _RowChunkLoss.apply(loss_of_rows, y.numel(), self._adapter_rows(), *params) / n_valid

    @torch.no_grad()
    def token_nll(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log p(targets) [B, T] at every position of idx [B, T] (float32, no gradient; 0 where ignored).

        No [B, T, V] tensor: ``average``, ``router``, ``prob`` and ``posterior`` need only the experts'
        log-probabilities of the target (and ``posterior`` of the text's next token), read chunk by chunk
        (``growlm.model.losses.token_log_probs``); ``adapter`` fuses a chunk of rows at a time."""
        hs = self._hidden_states(idx, None, 0)
        valid = targets != IGNORE_INDEX
        y = targets.clamp(min=0)
        B, T = idx.shape
        if self.method in ("average", "router"):
            x, w = self._joint_head(hs, self._gates(hs))
            return -token_log_probs(x, w, None, y.reshape(-1)).view(B, T) * valid
        if self.method == "adapter":  # fused a chunk of rows at a time, as in training
            return self._adapter_nll(hs, targets).view(B, T)
        # prob, posterior: log sum_k w_k p_k(y); the posterior's w_k from each expert's log p of the text so far
        ids = torch.stack([y, F.pad(idx[:, 1:], (0, 1))]).view(2, -1)  # targets, and the text's next tokens
        lp = torch.stack([token_log_probs(h.reshape(B * T, -1), e.head.weight, e.head.bias, ids).view(2, B, T)
                          for e, h in zip(self.experts, hs)], 2)  # [2, B, N, T]
        if self.method == "prob":
            logw = self.mix.log().to(lp)[None, :, None]
        else:
            prefix = F.pad(lp[1, ..., :-1].to(torch.float64).cumsum(-1), (1, 0))  # [B, N, T]
            logw = posterior_log_weights(prefix, self.mix.log(), torch.arange(T, device=idx.device), self.window)
        return -(lp[0] + logw.to(lp.dtype)).logsumexp(1) * valid

    def _hidden_states(self, idx: torch.Tensor, caches, pos: int) -> list[torch.Tensor]:
        """Each expert's final hidden states [B, T, C_i] of idx at position pos (its own KV caches, if given)."""
        return [e.hidden_states(idx, caches[i] if caches else None, pos) for i, e in enumerate(self.experts)]

    def _mix(self, hs: list[torch.Tensor], idx: torch.Tensor, caches, pos: int) -> torch.Tensor:
        """The composed logits [B, T, V] from the experts' hidden states hs (N x [B, T, C]) starting at position pos."""
        if self.method in ("average", "router"):
            g = self._gates(hs)  # [B, T, N]
            return sum(g[..., i:i + 1] * e.head(h) for i, (e, h) in enumerate(zip(self.experts, hs)))
        logits = [e.head(h) for e, h in zip(self.experts, hs)]  # N x [B, T, V]
        if self.method == "prob":
            logw = self.mix.log().to(logits[0].device)
            return log_mix([lg.float().log_softmax(-1) + logw[i] for i, lg in enumerate(logits)])
        if self.method == "posterior":
            return self._posterior(logits, idx, getattr(caches, "posterior", None), pos)
        return self.adapter(logits)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                caches: list[list[KVCache]] | None = None, pos: int = 0, loss_chunk: int = 4096):
        """Logits [B, T, V] when ``targets`` is None, else the mean cross-entropy; caches: one list per expert."""
        if targets is not None and caches is None and pos == 0 and self.method in ("prob", "posterior") and not (
                torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            return self.token_nll(idx, targets).sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)
        hs = self._hidden_states(idx, caches, pos)
        if targets is not None and self.method in ("average", "router"):
            return self._linear_loss(hs, self._gates(hs), targets, loss_chunk)
        if targets is not None and self.method == "adapter" and not any(h.requires_grad for h in hs):
            return self._adapter_loss(hs, targets)
        out = self._mix(hs, idx, caches, pos)
        if targets is None:
            return out
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def last_logits(self, idx: torch.Tensor, caches: list[list[KVCache]] | None = None, pos: int = 0) -> torch.Tensor:
        """Logits [B, V] of the token after idx [B, T] (what generation samples from): the heads run on the last
        position only, except for ``posterior``, whose weights need every position's probabilities."""
        hs = self._hidden_states(idx, caches, pos)
        if self.method != "posterior":
            hs, idx, pos = [h[:, -1:] for h in hs], idx[:, -1:], pos + idx.shape[1] - 1
        return self._mix(hs, idx, caches, pos)[:, -1]

    @torch.no_grad()
    def posterior_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """The ``posterior`` method's expert weights [B, T, N] at each position of idx [B, T] (float64, rows sum 1)."""
        if self.method != "posterior":
            raise ValueError(f"posterior_weights is for method 'posterior'; this model's method is {self.method!r}")
        logits = [e(idx) for e in self.experts]
        return self._posterior(logits, idx, None, 0, weights=True).exp().transpose(1, 2)

    def _posterior(self, logits: list[torch.Tensor], idx: torch.Tensor, state: PosteriorState | None,
                   pos: int, weights: bool = False) -> torch.Tensor:
        """log sum_k w_k(t) p_k(. | x_<=t), w = the experts' posteriors given the text (``posterior_log_weights``);
        ``weights``: log w [B, N, T] instead."""
        T = idx.shape[1]
        lp = torch.stack(logits, 1).float().log_softmax(-1)  # [B, N, T, V]
        ll = lp[:, :, :-1].gather(-1, idx[:, None, 1:, None].expand(-1, lp.shape[1], -1, -1))[..., 0]  # [B, N, T-1]
        ll = ll.to(torch.float64)  # ll[..., s]: log p_k of token pos+s+1 (s < T-1)
        if state is None:
            if pos:
                raise ValueError(f"posterior composition at pos={pos} needs the caches of new_caches() (its running "
                                 "sums live there); without caches, give the whole text from position 0")
            prefix = F.pad(ll.cumsum(-1), (1, 0))  # [B, N, T]
        else:
            if pos != state.pos or (pos and state.last is None):
                raise ValueError(f"posterior caches hold {state.pos} positions, but this call starts at pos={pos}; "
                                 "feed positions in order from 0")
            if pos + T > state.prefix.shape[-1]:
                raise ValueError(f"posterior caches hold {state.prefix.shape[-1]} positions; cannot write up to "
                                 f"{pos + T}")
            if pos:  # the token at pos, scored by the log-probabilities kept from position pos - 1
                first = state.last.gather(-1, idx[:, None, :1].expand(-1, lp.shape[1], -1))  # [B, N, 1]
                ll = torch.cat([first.to(torch.float64), ll], -1)  # log p of tokens pos..pos+T-1
                start = state.prefix[..., pos - 1:pos]
            else:
                ll = F.pad(ll, (1, 0))  # position 0: nothing before it
                start = torch.zeros_like(state.prefix[..., :1])
            state.prefix[..., pos:pos + T] = start + ll.cumsum(-1)
            state.last, state.pos = lp[:, :, -1].detach(), pos + T
            prefix = state.prefix
        positions = torch.arange(pos, pos + T, device=idx.device)  # pos = 0 without state
        logw = posterior_log_weights(prefix, self.mix.log(), positions, self.window)  # [B, N, T]
        if weights:
            return logw
        return log_mix(list((lp + logw.to(lp.dtype)[..., None]).unbind(1)))  # [B, T, V]

    # -- generation ---------------------------------------------------------------------

    def new_caches(self, batch: int, max_len: int) -> ComposedCaches:
        """Empty caches: one list (one KV cache per block) for each expert; ``posterior`` adds its running sums."""
        state = None
        if self.method == "posterior":
            state = PosteriorState(batch, len(self.experts), max_len, self.experts[0].head.weight.device)
        return ComposedCaches([e.new_caches(batch, max_len) for e in self.experts], state)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue idx [B, T] by up to ``max_new_tokens``; temperature 0 is greedy."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache, eos_id, generator)

    # -- save / load --------------------------------------------------------------------

    def save_meta(self) -> dict:
        """The JSON description written by ``growlm.model.saved.save_model``."""
        return {"kind": self.kind, "method": self.method, "weights": self.weights,
                "options": {"rank": self.rank, "train_heads": self.train_heads, "window": self.window},
                "experts": [e.save_meta() for e in self.experts], "vocab_size": self.vocab_size,
                "substrate": self.substrate_spec, "substrate_fingerprint": self.substrate_fingerprint,
                "substrate_content_sha256": getattr(self.experts[0], "substrate_content", "")}

    @classmethod
    def from_saved(cls, d, meta: dict, state: dict[str, torch.Tensor], substrate=None) -> ComposedLM:
        """Rebuild a composed model from its description and weights: one substrate, shared by all experts."""
        if meta.get("method") not in METHODS or not meta.get("experts"):
            raise CheckpointError(f"{d}: composed model description needs a method in {list(METHODS)} and a "
                                  f"non-empty expert list, got method {meta.get('method')!r}")
        if substrate is None:
            substrate = Substrate.from_spec(meta["substrate"])
        substrate.check_same(meta["substrate_fingerprint"], f"composed model at {d}",
                             meta.get("substrate_content_sha256"))
        experts = []
        for i, em in enumerate(meta["experts"]):
            prefix = f"experts.{i}."
            sub_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            experts.append(GrowLM.from_saved(f"{d} (expert {i})", em, sub_state, substrate))
        opts = meta.get("options", {})
        model = cls(experts, meta["method"], meta.get("weights"), rank=opts.get("rank", 8),
                    train_heads=opts.get("train_heads", False), window=opts.get("window", 0))
        rest = {k: v for k, v in state.items() if not k.startswith("experts.")}
        try:
            missing, unexpected = model.load_state_dict(rest, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"adapter/router weights in {d} do not fit the saved description: {e}") from None
        missing = [k for k in missing if not k.startswith("experts.")]
        if missing or unexpected:
            raise CheckpointError(f"weights in {d} do not fit the composed model: missing {missing}, "
                                  f"unexpected {unexpected}")
        return model


register_kind(ComposedLM)


def compose(experts: list[GrowLM], method: str = "average", weights: list[float] | None = None,
            **opts) -> ComposedLM:
    """Combine experts on one substrate into a ``ComposedLM`` (opts: rank, train_heads, window, names)."""
    return ComposedLM(list(experts), method, weights, **opts)


def compose_from_runs(paths: list[str | Path], method: str = "average", weights: list[float] | None = None,
                      map_location: str = "cpu", **opts) -> ComposedLM:
    """Load each model or run directory with ``growlm.model.saved.load_model`` and compose them."""
    experts = [load_model(p, map_location=map_location) for p in paths]
    opts.setdefault("names", [str(p) for p in paths])
    return compose(experts, method, weights, **opts)
