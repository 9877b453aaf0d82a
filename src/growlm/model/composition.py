"""Composition of experts that share a substrate (paper v1, sections 3.1 and 4.1).

Experts trained separately on the same frozen substrate share their input and
output token spaces, so their next-token distributions can be combined with no
re-training. The guarantee is the substrate *fingerprint*: it hashes the
substrate kind, the vocabulary's content, d_model and the options. Experts may
differ in depth, heads and block style, but not in width (a different d_model
is a different substrate, hence a different fingerprint) and not in
vocabulary; composing such experts stops with a ``SubstrateMismatchError``
that names both sides. Experts that trained their own token embedding (the
baselines' ``trainable_embedding``) keep the fingerprint of the substrate they
started from, yet no longer share their input space: they are refused too,
unless ``own_embeddings=True`` says that each expert is to embed its input with
its own table (the composition study's learned-embedding control).

How the experts are combined is the method (``method=``: ``average``, ``prob``, ``adapter``, ``router``,
``posterior``), one class each in ``growlm.model.composition_methods``, looked up by name in its registry
``METHODS``; every method gives logits [B, T, V].

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
from growlm.model.composition_methods import (
    METHODS,
    LogitAdapter,
    Posterior,
    PosteriorState,
    check_options,
    log_mix,
    posterior_log_weights,
)
from growlm.model.losses import IGNORE_INDEX
from growlm.model.model import KVCache, generate
from growlm.model.saved import CheckpointError, load_model, register_kind
from growlm.substrate import Substrate, SubstrateMismatchError

__all__ = ["METHODS", "ComposedCaches", "ComposedLM", "LogitAdapter", "check_compatible", "compose",
           "compose_from_runs", "log_mix", "normalise_weights", "posterior_log_weights"]


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


def check_compatible(experts: list[nn.Module], names: list[str] | None = None, own_embeddings: bool = False) -> None:
    """Raise ``SubstrateMismatchError`` unless all experts are GrowLMs on one vocabulary and one substrate, with one
    token embedding (``own_embeddings``: trained embeddings may differ, each expert embedding its own input)."""
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
    if own_embeddings:
        return
    for e, name in zip(experts[1:], names[1:]):
        if _trained(first) or _trained(e):
            a, b = first.embedding, e.embedding
            if a.shape != b.shape or a.device.type == "meta" or not torch.equal(a.detach(), b.detach()):
                who = fname if _trained(first) else name
                raise SubstrateMismatchError(
                    f"embedding mismatch: {who} trained its own token embedding, so {fname} and {name} no longer share "
                    "the frozen substrate their fingerprint names; merging relies on that one shared input space. "
                    "Compose experts grown on a frozen substrate, or pass own_embeddings=True (growlm compose "
                    "--own-embeddings) to let each expert embed its input with its own table")


def _trained(e: GrowLM) -> bool:
    """Whether ``e``'s token embedding is a parameter (trained) rather than the frozen substrate."""
    return isinstance(e.embedding, nn.Parameter)


class ComposedCaches(list):
    """One list of KV caches per expert (``caches[i]``), plus the posterior's running state (None otherwise)."""

    def __init__(self, per_expert: list[list[KVCache]], posterior: PosteriorState | None = None):
        super().__init__(per_expert)
        self.posterior = posterior


class ComposedLM(nn.Module):
    """N experts on one substrate, combined into one language model (same forward/generate as GrowLM).

    ``method`` names a registered ``CompositionMethod`` (``growlm.model.composition_methods.METHODS``), held as
    ``combiner``: it computes the logits, the loss and the log-probabilities, and adds any modules that train.
    """

    kind = "composed"  # how ``growlm.model.saved`` names this model class in model.json

    def __init__(self, experts: list[GrowLM], method: str = "average", weights: list[float] | None = None, *,
                 rank: int = 8, train_heads: bool = False, window: int = 0, names: list[str] | None = None,
                 own_embeddings: bool = False):
        super().__init__()
        self.combiner = check_options(method, window, train_heads)()
        check_compatible(list(experts), names, own_embeddings)
        self.own_embeddings = bool(own_embeddings)  # experts may embed their input with their own trained tables
        self.method, self.rank, self.train_heads, self.window = method, int(rank), bool(train_heads), window
        self.weights = normalise_weights(weights, len(experts))
        self.experts = nn.ModuleList(experts)
        first = experts[0]
        self.vocab_size = first.cfg.vocab_size
        self.substrate_fingerprint, self.substrate_spec = first.substrate_fingerprint, dict(first.substrate_spec)
        p = first.head.weight
        self.register_buffer("mix", torch.tensor(self.weights, dtype=torch.float32, device=p.device),
                             persistent=False)  # [N]; the weights live in the JSON meta
        self.adapter = self.router = None  # the trainable methods' modules (``CompositionMethod.build``)
        self.combiner.build(self)
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

    def fusion_modules(self) -> list[nn.Module]:
        """The method's own modules (the adapter, the router): everything but the experts."""
        return [m for name, m in self.named_children() if name != "experts"]

    def set_trainable(self, train_heads: bool = False) -> None:
        """Freeze the experts (optionally leaving their LM heads trainable); the method's own modules stay
        trainable."""
        for e in self.experts:
            e.requires_grad_(False)
            e.head.requires_grad_(train_heads)
        for m in self.fusion_modules():
            m.requires_grad_(True)
        self.train_heads = bool(train_heads)

    def training_refusal(self) -> str | None:
        """Why fine-tuning this model makes no sense (None when it does), e.g. ``posterior`` has nothing to train."""
        return self.combiner.training_refusal()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should see."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_counts(self) -> dict[str, int]:
        """Total, trainable, experts' and fusion (adapter/router) parameter counts."""
        fusion = sum(p.numel() for m in self.fusion_modules() for p in m.parameters())
        return {"total": sum(p.numel() for p in self.parameters()),
                "trainable": sum(p.numel() for p in self.trainable_parameters()),
                "experts": sum(p.numel() for p in self.experts.parameters()), "fusion": fusion}

    # -- forward ------------------------------------------------------------------------

    @torch.no_grad()
    def token_nll(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log p(targets) [B, T] at every position of idx [B, T] (float32, no gradient; 0 where ignored).

        No [B, T, V] tensor: ``average``, ``router``, ``prob`` and ``posterior`` need only the experts'
        log-probabilities of the target (and ``posterior`` of the text's next token), read chunk by chunk
        (``growlm.model.losses.token_log_probs``); ``adapter`` fuses a chunk of rows at a time."""
        return self.combiner.token_nll(self, self._hidden_states(idx, None, 0), idx, targets)

    def _hidden_states(self, idx: torch.Tensor, caches, pos: int) -> list[torch.Tensor]:
        """Each expert's final hidden states [B, T, C_i] of idx at position pos (its own KV caches, if given)."""
        return [e.hidden_states(idx, caches[i] if caches else None, pos) for i, e in enumerate(self.experts)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                caches: list[list[KVCache]] | None = None, pos: int = 0, loss_chunk: int = 4096):
        """Logits [B, T, V] when ``targets`` is None, else the mean cross-entropy; caches: one list per expert."""
        hs = self._hidden_states(idx, caches, pos)
        if targets is not None:
            loss = self.combiner.loss(self, hs, idx, targets, incremental=caches is not None or pos != 0,
                                      loss_chunk=loss_chunk)
            if loss is not None:
                return loss
        out = self.combiner.logits(self, hs, idx, caches, pos)
        if targets is None:
            return out
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def last_logits(self, idx: torch.Tensor, caches: list[list[KVCache]] | None = None, pos: int = 0) -> torch.Tensor:
        """Logits [B, V] of the token after idx [B, T] (what generation samples from): the heads run on the last
        position only, except for methods whose weights need every position's probabilities (``posterior``)."""
        hs = self._hidden_states(idx, caches, pos)
        if not self.combiner.whole_text:
            hs, idx, pos = [h[:, -1:] for h in hs], idx[:, -1:], pos + idx.shape[1] - 1
        return self.combiner.logits(self, hs, idx, caches, pos)[:, -1]

    @torch.no_grad()
    def posterior_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """The ``posterior`` method's expert weights [B, T, N] at each position of idx [B, T] (float64, rows sum 1)."""
        if not isinstance(self.combiner, Posterior):
            raise ValueError(f"posterior_weights is for method 'posterior'; this model's method is {self.method!r}")
        logits = [e(idx) for e in self.experts]
        return self.combiner.mixture(self, logits, idx, None, 0, weights=True).exp().transpose(1, 2)

    # -- generation ---------------------------------------------------------------------

    def new_caches(self, batch: int, max_len: int) -> ComposedCaches:
        """Empty caches: one list (one KV cache per block) for each expert; ``posterior`` adds its running sums."""
        state = self.combiner.new_state(self, batch, max_len)
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
        opts = {"rank": self.rank, "train_heads": self.train_heads, "window": self.window}
        if self.own_embeddings:  # written only when set: earlier descriptions stay as they were
            opts["own_embeddings"] = True
        return {"kind": self.kind, "method": self.method, "weights": self.weights, "options": opts,
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
                    train_heads=opts.get("train_heads", False), window=opts.get("window", 0),
                    own_embeddings=opts.get("own_embeddings", False))
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
    """Combine experts on one substrate into a ``ComposedLM`` (opts: rank, train_heads, window, names,
    own_embeddings)."""
    return ComposedLM(list(experts), method, weights, **opts)


def compose_from_runs(paths: list[str | Path], method: str = "average", weights: list[float] | None = None,
                      map_location: str = "cpu", **opts) -> ComposedLM:
    """Load each model or run directory with ``growlm.model.saved.load_model`` and compose them."""
    experts = [load_model(p, map_location=map_location) for p in paths]
    opts.setdefault("names", [str(p) for p in paths])
    return compose(experts, method, weights, **opts)
