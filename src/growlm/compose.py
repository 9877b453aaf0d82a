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
  (Branch-Train-MiX style), equal to ``average`` at step 0; (sum_i C_i + 1) * N parameters.

Cost: ``average`` and ``router`` compute the loss without any [B, T, V] tensor
(the weighted heads are one linear over the concatenated hidden states, fed to
``chunked_cross_entropy``); ``prob`` and ``adapter`` hold N + 1 float32 logit
tensors [B, T, V] (``adapter`` a few more for its features), fine at demo sizes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from growlm.checkpoint import CheckpointError, load_model, register_kind
from growlm.losses import IGNORE_INDEX, chunked_cross_entropy
from growlm.model import GrowLM, KVCache, generate
from growlm.substrate import Substrate, SubstrateMismatchError

METHODS = ("average", "prob", "adapter", "router")
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


class ComposedLM(nn.Module):
    """N experts on one substrate, combined into one language model (same forward/generate as GrowLM)."""

    kind = "composed"  # how ``growlm.checkpoint`` names this model class in model.json

    def __init__(self, experts: list[GrowLM], method: str = "average", weights: list[float] | None = None, *,
                 rank: int = 8, train_heads: bool = False, names: list[str] | None = None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown composition method {method!r}; valid methods are {list(METHODS)}")
        check_compatible(list(experts), names)
        self.method, self.rank, self.train_heads = method, int(rank), bool(train_heads)
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

    def _linear_loss(self, hs: list[torch.Tensor], g: torch.Tensor, targets: torch.Tensor,
                     loss_chunk: int) -> torch.Tensor:
        """CE of sum_i g_i (h_i W_i^T + b_i) as one linear over [g_i h_i ..., g_i ...]: no [B, T, V] tensor."""
        feats = [g[..., i:i + 1] * h for i, h in enumerate(hs)]
        cols = [e.head.weight for e in self.experts]
        for i, e in enumerate(self.experts):
            if e.head.bias is not None:  # bias_i enters as an extra weight column driven by g_i
                feats.append(g[..., i:i + 1].to(hs[i].dtype))
                cols.append(e.head.bias[:, None])
        x = torch.cat(feats, dim=-1)  # [B, T, sum C_i + n_bias]
        w = torch.cat(cols, dim=1)  # [V, sum C_i + n_bias]; a copy of the heads, made once per call
        return chunked_cross_entropy(x.reshape(-1, x.shape[-1]), w, None, targets.reshape(-1), chunk=loss_chunk)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                caches: list[list[KVCache]] | None = None, pos: int = 0, loss_chunk: int = 4096):
        """Logits [B, T, V] when ``targets`` is None, else the mean cross-entropy; caches: one list per expert."""
        hs = [e.hidden_states(idx, caches[i] if caches else None, pos) for i, e in enumerate(self.experts)]
        if self.method in ("average", "router"):
            g = self._gates(hs)  # [B, T, N]
            if targets is not None:
                return self._linear_loss(hs, g, targets, loss_chunk)
            out = sum(g[..., i:i + 1] * e.head(h) for i, (e, h) in enumerate(zip(self.experts, hs)))
        else:
            logits = [e.head(h) for e, h in zip(self.experts, hs)]  # N x [B, T, V]
            if self.method == "prob":
                logw = self.mix.log().to(logits[0].device)
                out = torch.stack([lg.float().log_softmax(-1) + logw[i] for i, lg in enumerate(logits)]).logsumexp(0)
            else:
                out = self.adapter(logits)
        if targets is None:
            return out
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    # -- generation ---------------------------------------------------------------------

    def new_caches(self, batch: int, max_len: int) -> list[list[KVCache]]:
        """Empty KV caches: one list (one cache per block) for each expert."""
        return [e.new_caches(batch, max_len) for e in self.experts]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue idx [B, T] by up to ``max_new_tokens``; temperature 0 is greedy."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache, eos_id, generator)

    # -- save / load --------------------------------------------------------------------

    def save_meta(self) -> dict:
        """The JSON description written by ``growlm.checkpoint.save_model``."""
        return {"kind": self.kind, "method": self.method, "weights": self.weights,
                "options": {"rank": self.rank, "train_heads": self.train_heads},
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
                    train_heads=opts.get("train_heads", False))
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
    """Combine experts on one substrate into a ``ComposedLM`` (opts: rank, train_heads, names)."""
    return ComposedLM(list(experts), method, weights, **opts)


def compose_from_runs(paths: list[str | Path], method: str = "average", weights: list[float] | None = None,
                      map_location: str = "cpu", **opts) -> ComposedLM:
    """Load each model or run directory with ``growlm.checkpoint.load_model`` and compose them."""
    experts = [load_model(p, map_location=map_location) for p in paths]
    opts.setdefault("names", [str(p) for p in paths])
    return compose(experts, method, weights, **opts)
