"""The composition methods: how a ``ComposedLM`` turns its experts' hidden states into one distribution.

One class per method, registered by name in ``METHODS`` (``@register_method``): its logits, its loss and its
per-token log-probabilities, what it adds that trains, what it refuses, and the FLOPs its fusion adds to the
experts'. ``ComposedLM`` (``growlm.model.composition``) holds one and never tests a method's name; the CLI's
``--method`` choices and the composition recipe's checks read the registry. A method keeps no state of its own:
its parameters (the adapter's, the router's) are modules of the composed model, so saved models keep their keys.

- ``average``: sum_i w_i * logits_i (the paper; no parameters);
- ``prob``: log sum_i w_i * softmax(logits_i) (a mixture of distributions; no parameters);
- ``adapter``: gated fusion of the experts' logits, equal to ``average`` at step 0 (``LogitAdapter``);
- ``router``: per-token softmax gates from the experts' final hidden states (Branch-Train-MiX style), equal to
  ``average`` at step 0; (sum_i C_i + 1) * N parameters;
- ``posterior``: a mixture of distributions whose weights are each expert's posterior given the text so far
  (``window`` > 0: the last ``window`` tokens only); no parameters, nothing to train (``posterior_log_weights``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from growlm.model.losses import IGNORE_INDEX, chunked_cross_entropy, token_log_probs

if TYPE_CHECKING:  # annotations only: growlm.model.composition imports this module
    from growlm.model.composition import ComposedLM

MIN_LOG_WEIGHT = -30.0  # trainable gates start at log w; a zero weight becomes exp(-30), not -inf
ADAPTER_CHUNK_ELEMENTS = 1 << 22  # [rows, N, V] elements of one chunk of the adapter's loss (16 MB in float32)


class CompositionMethod:
    """One way to combine N experts' next-token distributions; a subclass per method, ``@register_method``.

    Every hook takes the composed model ``m`` and the experts' final hidden states ``hs`` (N x [B, T, C_i]).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line, for ``growlm compose --help``
    trainable: ClassVar[bool] = True  # False: nothing to fine-tune (and no trainable heads)
    windowed: ClassVar[bool] = False  # takes ``window``: how many tokens of the text its weights read
    whole_text: ClassVar[bool] = False  # the next token's logits need every position, not only the last

    def build(self, m: ComposedLM) -> None:
        """Attach the method's own trainable modules to ``m`` (none by default)."""

    def logits(self, m: ComposedLM, hs: list[torch.Tensor], idx: torch.Tensor, caches, pos: int) -> torch.Tensor:
        """The composed logits (or log-probabilities) [B, T, V] of idx [B, T] starting at position ``pos``."""
        raise NotImplementedError

    def loss(self, m: ComposedLM, hs: list[torch.Tensor], idx: torch.Tensor, targets: torch.Tensor, *,
             incremental: bool, loss_chunk: int) -> torch.Tensor | None:
        """The mean cross-entropy without a [B, T, V] tensor, or None: the cross-entropy of ``logits``."""
        return None

    def token_nll(self, m: ComposedLM, hs: list[torch.Tensor], idx: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
        """-log p(targets) [B, T] (0 where ignored), without a [B, T, V] tensor; called without a gradient."""
        raise NotImplementedError

    def new_state(self, m: ComposedLM, batch: int, max_len: int):
        """What one generation carries between incremental calls besides the experts' KV caches (None: nothing)."""
        return None

    def training_refusal(self) -> str | None:
        """Why a model composed this way cannot be fine-tuned (None when it can)."""
        if self.trainable:
            return None
        return (f"this composed model uses method {self.name!r}, which is training-free: it has no parameters to "
                f"fine-tune; compose with {either(names_where('trainable'))} for a trainable fusion")

    def forward_flops(self, m: ComposedLM) -> float:
        """Per-token forward FLOPs the fusion adds to its experts' (their heads are counted with them)."""
        return 0.0

    def backward_flops(self, m: ComposedLM, heads: bool) -> float:
        """Per-token backward FLOPs of a fine-tuning step (experts frozen below their heads; ``heads``: those
        train)."""
        return 0.0


METHODS: dict[str, type[CompositionMethod]] = {}  # name -> class, in the order ``growlm compose --help`` lists them


def register_method(cls: type[CompositionMethod]) -> type[CompositionMethod]:
    """Class decorator: make ``cls`` a composition method under ``cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"composition method {cls.__name__} needs a new name, got {cls.name!r} "
                         f"(registered: {list(METHODS)})")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[CompositionMethod]:
    """The registered class of method ``name``; a clear error naming the valid ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown composition method {name!r}; valid methods are {list(METHODS)}")
    return METHODS[name]


def names_where(flag: str, value: bool = True) -> list[str]:
    """The registered methods whose class attribute ``flag`` is ``value`` (e.g. ``windowed``, ``trainable``)."""
    return [n for n, c in METHODS.items() if getattr(c, flag) is value]


def either(names: list[str]) -> str:
    """['a', 'b', 'c'] -> "'a', 'b' or 'c'"."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_options(method: str, window: int = 0, train_heads: bool = False) -> type[CompositionMethod]:
    """The class of ``method``, after checking that ``window`` and ``train_heads`` apply to it."""
    cls = method_class(method)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"posterior window must be an integer >= 0 (0 = the whole text so far), got {window!r}")
    if window and not cls.windowed:
        raise ValueError(f"window={window} applies to method {either(names_where('windowed'))} only, not {method!r}")
    if train_heads and not cls.trainable:
        raise ValueError(f"method {method!r} is training-free: its weights come from the experts' own "
                         "probabilities, so there are no heads to fine-tune with it; use train_heads with "
                         f"{either(names_where('trainable'))}")
    return cls


# --------------------------------------------------------------------------- the methods, in the order listed


@register_method
class Average(CompositionMethod):
    """sum_i w_i * logits_i (the paper). Its loss is one linear over the gated, concatenated hidden states."""

    name = "average"
    summary = "weighted logits (the paper)"

    def gates(self, m: ComposedLM, hs: list[torch.Tensor]) -> torch.Tensor:
        """Expert weights per position [B, T, N] (constant here)."""
        return m.mix.to(hs[0].dtype).expand(*hs[0].shape[:2], -1)

    def logits(self, m, hs, idx, caches, pos):
        g = self.gates(m, hs)  # [B, T, N]
        return sum(g[..., i:i + 1] * e.head(h) for i, (e, h) in enumerate(zip(m.experts, hs)))

    def loss(self, m, hs, idx, targets, *, incremental, loss_chunk):
        """CE of sum_i g_i (h_i W_i^T + b_i) (``joint_head``): no [B, T, V] tensor."""
        x, w = joint_head(m, hs, self.gates(m, hs))
        return chunked_cross_entropy(x, w, None, targets.reshape(-1), chunk=loss_chunk)

    def token_nll(self, m, hs, idx, targets):
        x, w = joint_head(m, hs, self.gates(m, hs))
        B, T = idx.shape
        return -token_log_probs(x, w, None, targets.clamp(min=0).reshape(-1)).view(B, T) * (targets != IGNORE_INDEX)

    def forward_flops(self, m):
        # the loss runs one linear over [g_i h_i, g_i]: the bias columns
        return 2.0 * m.vocab_size * sum(1 for e in m.experts if e.head.bias is not None)

    def backward_flops(self, m, heads):
        return 2.0 * m.vocab_size * _joint_columns(m) * int(heads)


@register_method
class Prob(CompositionMethod):
    """log sum_i w_i * softmax(logits_i): a mixture of the experts' distributions."""

    name = "prob"
    summary = "mixture of distributions"

    def log_weights(self, m: ComposedLM, lp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """log w [.., N, T] (broadcast) from lp [2, B, N, T]: each expert's log p of the target and of the text's
        next token."""
        return m.mix.log().to(lp)[None, :, None]

    def logits(self, m, hs, idx, caches, pos):
        logits = [e.head(h) for e, h in zip(m.experts, hs)]  # N x [B, T, V]
        logw = m.mix.log().to(logits[0].device)
        return log_mix([lg.float().log_softmax(-1) + logw[i] for i, lg in enumerate(logits)])

    def loss(self, m, hs, idx, targets, *, incremental, loss_chunk):
        """Without a gradient to take, log sum_k w_k p_k(y) from each expert's log p of the target only."""
        if incremental or (torch.is_grad_enabled() and any(p.requires_grad for p in m.parameters())):
            return None
        with torch.no_grad():
            return self.token_nll(m, hs, idx, targets).sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def token_nll(self, m, hs, idx, targets):
        B, T = idx.shape
        y = targets.clamp(min=0)
        ids = torch.stack([y, F.pad(idx[:, 1:], (0, 1))]).view(2, -1)  # targets, and the text's next tokens
        lp = torch.stack([token_log_probs(h.reshape(B * T, -1), e.head.weight, e.head.bias, ids).view(2, B, T)
                          for e, h in zip(m.experts, hs)], 2)  # [2, B, N, T]
        logw = self.log_weights(m, lp, idx)
        return -(lp[0] + logw.to(lp.dtype)).logsumexp(1) * (targets != IGNORE_INDEX)

    def backward_flops(self, m, heads):
        return 2.0 * m.vocab_size * sum(e.cfg.d_model for e in m.experts) if heads else 0.0


@register_method
class Adapter(CompositionMethod):
    """Gated fusion of the experts' logits (``LogitAdapter``), equal to ``average`` until fine-tuned."""

    name = "adapter"
    summary = "trainable gated fusion of the logits, equal to average until fine-tuned"

    def build(self, m):
        m.adapter = LogitAdapter(len(m.experts), m.vocab_size, m.weights, m.rank).to(m.experts[0].head.weight.device)

    def logits(self, m, hs, idx, caches, pos):
        return m.adapter([e.head(h) for e, h in zip(m.experts, hs)])

    def loss(self, m, hs, idx, targets, *, incremental, loss_chunk):
        """Mean cross-entropy of the fused logits, a chunk of rows at a time: each chunk's expert logits, fusion and
        loss exist only while its gradient is taken (``_RowChunkLoss``; the experts below their heads are frozen,
        so only the fusion's and any trainable head's parameters need one). Without this, a demo-size step held
        ~2.3 GB of [B, T, N, V] tensors. None when the hidden states need a gradient."""
        if any(h.requires_grad for h in hs):
            return None
        flat = [h.reshape(-1, h.shape[-1]) for h in hs]
        y = targets.reshape(-1)
        n_valid = (y != IGNORE_INDEX).sum().clamp(min=1)
        params = [p for p in m.parameters() if p.requires_grad] if torch.is_grad_enabled() else []
        if not params:
            return self.token_nll(m, hs, idx, targets).sum() / n_valid

        def loss_of_rows(s: int, e: int) -> torch.Tensor:
            return F.cross_entropy(self.fused(m, flat, s, e), y[s:e], ignore_index=IGNORE_INDEX, reduction="sum")

        return _RowChunkLoss.apply(loss_of_rows, y.numel(), self.rows(m), *params) / n_valid

    @torch.no_grad()
    def token_nll(self, m, hs, idx, targets):
        """Fused a chunk of rows at a time, as in training."""
        flat, y, rows = [h.reshape(-1, h.shape[-1]) for h in hs], targets.reshape(-1), self.rows(m)
        nll = torch.empty(y.numel(), dtype=torch.float32, device=y.device)
        for s in range(0, y.numel(), rows):
            nll[s:s + rows] = F.cross_entropy(self.fused(m, flat, s, s + rows), y[s:s + rows],
                                              ignore_index=IGNORE_INDEX, reduction="none")
        return nll.view(targets.shape)

    def rows(self, m: ComposedLM) -> int:
        """Rows per chunk of the fusion's [rows, N, V] tensors (``ADAPTER_CHUNK_ELEMENTS``)."""
        return max(16, ADAPTER_CHUNK_ELEMENTS // (len(m.experts) * m.experts[0].head.weight.shape[0]))

    def fused(self, m: ComposedLM, flat: list[torch.Tensor], s: int, e: int) -> torch.Tensor:
        """The fused logits [e - s, V] of rows s..e of the experts' flattened hidden states."""
        return m.adapter([ex.head(h[s:e]) for ex, h in zip(m.experts, flat)]).float()

    def forward_flops(self, m):
        n, r = len(m.experts), m.rank
        return 2.0 * n * m.vocab_size * r + 2.0 * n * r * n  # features log_softmax(L) @ P, then the gate

    def backward_flops(self, m, heads):
        n, r, V = len(m.experts), m.rank, m.vocab_size
        bwd = 2.0 * n * V * r * (1 + int(heads))  # grad P (and grad of the log-probs when the heads train)
        bwd += 2.0 * 2 * n * r * n  # the gate: weight and input gradients
        return bwd + (2.0 * V * sum(e.cfg.d_model for e in m.experts) if heads else 0.0)


@register_method
class Router(Average):
    """Per-token softmax gates from the experts' concatenated final hidden states, equal to ``average`` at init."""

    name = "router"
    summary = "trainable per-token gates from the experts' hidden states, equal to average until fine-tuned"

    def build(self, m):
        m.router = nn.Linear(sum(e.cfg.d_model for e in m.experts), len(m.experts)).to(m.experts[0].head.weight.device)
        nn.init.zeros_(m.router.weight)
        with torch.no_grad():
            m.router.bias.copy_(m.mix.log().clamp(min=MIN_LOG_WEIGHT))

    def gates(self, m, hs):
        return m.router(torch.cat(hs, dim=-1)).softmax(-1)

    def forward_flops(self, m):
        return super().forward_flops(m) + 2.0 * sum(e.cfg.d_model for e in m.experts) * len(m.experts)

    def backward_flops(self, m, heads):
        widths = sum(e.cfg.d_model for e in m.experts)
        # the gates make the concatenated features need their gradient; then the router's weight gradient
        return 2.0 * m.vocab_size * _joint_columns(m) * (1 + int(heads)) + 2.0 * widths * len(m.experts)


@register_method
class Posterior(Prob):
    """A mixture whose weights are each expert's posterior given the text so far (the last ``window`` tokens)."""

    name = "posterior"
    summary = "mixture weighted by each expert's posterior given the text so far (training-free)"
    trainable = False
    windowed = True
    whole_text = True

    def log_weights(self, m, lp, idx):
        prefix = F.pad(lp[1, ..., :-1].to(torch.float64).cumsum(-1), (1, 0))  # [B, N, T]
        return posterior_log_weights(prefix, m.mix.log(), torch.arange(idx.shape[1], device=idx.device), m.window)

    def logits(self, m, hs, idx, caches, pos):
        logits = [e.head(h) for e, h in zip(m.experts, hs)]
        return self.mixture(m, logits, idx, getattr(caches, "posterior", None), pos)

    def new_state(self, m, batch, max_len):
        return PosteriorState(batch, len(m.experts), max_len, m.experts[0].head.weight.device)

    def training_refusal(self):
        return ("this composed model uses method 'posterior', which is training-free (each expert's weight is its "
                "posterior given the text so far): it has no parameters to fine-tune; compose with 'adapter' or "
                "'router' (or --train-heads with 'average') for a trainable fusion")

    def mixture(self, m: ComposedLM, logits: list[torch.Tensor], idx: torch.Tensor, state: PosteriorState | None,
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
        logw = posterior_log_weights(prefix, m.mix.log(), positions, m.window)  # [B, N, T]
        if weights:
            return logw
        return log_mix(list((lp + logw.to(lp.dtype)[..., None]).unbind(1)))  # [B, T, V]


# --------------------------------------------------------------------------- shared pieces


def joint_head(m: ComposedLM, hs: list[torch.Tensor], g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i g_i (h_i W_i^T + b_i) as one linear: inputs [B*T, sum C_i + n_bias] and weight [V, same]."""
    feats = [g[..., i:i + 1] * h for i, h in enumerate(hs)]
    cols = [e.head.weight for e in m.experts]
    for i, e in enumerate(m.experts):
        if e.head.bias is not None:  # bias_i enters as an extra weight column driven by g_i
            feats.append(g[..., i:i + 1].to(hs[i].dtype))
            cols.append(e.head.bias[:, None])
    x = torch.cat(feats, dim=-1)  # [B, T, sum C_i + n_bias]
    w = torch.cat(cols, dim=1)  # [V, sum C_i + n_bias]; a copy of the heads, made once per call
    return x.reshape(-1, x.shape[-1]), w


def _joint_columns(m: ComposedLM) -> int:
    """Columns of ``joint_head``'s weight: the experts' widths plus one per head bias."""
    return sum(e.cfg.d_model for e in m.experts) + sum(1 for e in m.experts if e.head.bias is not None)


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
