"""The growlm language model, top to bottom.

A decoder-only Transformer whose token embedding is a frozen buffer taken from
a ``Substrate`` (never a parameter, never trained). Blocks live in a
``ModuleList`` whose names (``blocks.0``, ``blocks.1``, ...) never change when
the model grows. Two block styles: ``paper`` (pre-norm LayerNorm, GELU MLP,
biases, RoPE; the block of arXiv 2507.07129) and ``llama`` (RMSNorm, SwiGLU,
no biases, RoPE), so a grown model can be exported to a standard architecture.

Shapes: B batch, T time, C d_model, H heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from growlm.model.losses import chunked_cross_entropy
from growlm.model.saved import CheckpointError, register_kind
from growlm.substrate import Substrate
from growlm.util.fields import AT_LEAST_0, AT_LEAST_1, POSITIVE, check_fields

# --------------------------------------------------------------------------- config


@dataclass
class Config:
    """Every architectural choice of a growlm model."""

    vocab_size: int = 16384  # V; must equal the substrate's row count
    d_model: int = 256  # C; must equal the substrate's column count
    n_layer: int = 4  # current depth (grows with ``GrowLM.grow``)
    n_head: int = 4  # H; d_model must be divisible by it
    block_size: int = 256  # longest context the RoPE tables are built for (grown on demand)
    block: str = "paper"  # "paper" or "llama": which Block class
    mlp_hidden: int = 0  # MLP hidden width; 0 = 4*C for paper, ~8/3*C (multiple of 64) for llama
    bias: bool = True  # biases in attention/MLP linears and norms
    norm_bias: bool = True  # the LayerNorms' additive bias (only when ``bias``); the paper preset has none
    head_bias: bool = True  # bias on the LM head (the paper's head has one)
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    dropout: float = 0.0
    init_std: float = 0.02
    trainable_embedding: bool = False  # baselines only: the embedding becomes a trainable parameter
    embedding_init: str = "substrate"  # where a trainable embedding starts: "substrate" rows or "random" N(0, init_std)
    init_depth: int = 0  # depth the residual writes' init is scaled for, 1/sqrt(2*depth); 0 = depth after insertion

    def __post_init__(self) -> None:
        if self.block not in BLOCK_STYLES:
            raise ValueError(f"unknown block style {self.block!r}; valid styles are {sorted(BLOCK_STYLES)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                             f"pick n_head from {[h for h in range(1, 65) if self.d_model % h == 0]}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_head} must be even for RoPE")
        if self.n_layer < 0:
            raise ValueError(f"n_layer must be >= 0, got {self.n_layer}")
        if self.init_depth < 0:
            raise ValueError(f"init_depth must be >= 0 (0 = the depth after insertion), got {self.init_depth}")
        if self.embedding_init not in ("substrate", "random"):
            raise ValueError(f"embedding_init must be 'substrate' or 'random', got {self.embedding_init!r}")
        if self.embedding_init == "random" and not self.trainable_embedding:
            raise ValueError("embedding_init = 'random' needs trainable_embedding = true; for a frozen random "
                             "embedding use the substrate kind 'random'")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def hidden(self) -> int:
        """MLP hidden width actually used."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.block == "paper":
            return 4 * self.d_model
        return 64 * math.ceil(8 * self.d_model / 3 / 64)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Config:
        """A named preset (``paper``, ``llama``, ``demo``, ...) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets are {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> Config:
        """Build from a dict (a recipe's [model], a saved config), checking keys, types and ranges."""
        valid = {f.name for f in fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ValueError(f"unknown config key(s) {sorted(unknown)}; valid keys are {sorted(valid)}")
        return cls(**check_fields(cls, d, where, CONFIG_RANGES))

    def to_dict(self) -> dict:
        return asdict(self)


CONFIG_RANGES = {"vocab_size": AT_LEAST_1, "d_model": AT_LEAST_1, "n_layer": AT_LEAST_0, "n_head": AT_LEAST_1,
                 "block_size": AT_LEAST_1, "mlp_hidden": AT_LEAST_0, "norm_eps": POSITIVE, "rope_base": POSITIVE,
                 "dropout": (0, 1, True), "init_std": POSITIVE, "init_depth": AT_LEAST_0}

PRESETS: dict[str, dict] = {
    # The paper's block (arXiv 2507.07129): LayerNorm, GELU MLP 4x, biases, untied head with bias.
    # LayerNorms without bias: the only layout under which all five of the author's published counts
    # (105.0M, 180.5M, 247.6M, 181.6M, 269.7M) come out at their printed precision.
    "paper": dict(block="paper", bias=True, norm_bias=False, head_bias=True, vocab_size=65536, d_model=1024,
                  n_layer=9, n_head=16, block_size=1024),
    # Llama-style block, exportable as LlamaForCausalLM.
    "llama": dict(block="llama", bias=False, head_bias=False, vocab_size=65536, d_model=1024, n_layer=9,
                  n_head=16, block_size=1024),
    # CPU-sized models on the compact vocabulary.
    "demo": dict(block="paper", bias=True, head_bias=True, vocab_size=16384, d_model=256, n_layer=1,
                 n_head=4, block_size=256),
    "tiny": dict(block="paper", bias=True, head_bias=True, vocab_size=16384, d_model=64, n_layer=2,
                 n_head=2, block_size=64),
}

# --------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: Config) -> nn.Module:
    if cfg.block == "llama":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias and cfg.norm_bias)


def rope_tables(head_dim: int, length: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [length, D] for rotate-half RoPE (the GPT-NeoX / HF Llama layout)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # [L, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [L, D]
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1], written half by half (no concatenated copy).

    The tables repeat each frequency in both halves, so the first half's columns serve both. Each half is a
    product, then one subtraction or addition: the same roundings as the formula, bit for bit."""
    h = x.shape[-1] // 2
    x1, x2, c, s = x[..., :h], x[..., h:], cos[..., :h], sin[..., :h]
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, cos.dtype), device=x.device)
    torch.mul(x1, c, out=out[..., :h]).sub_(x2 * s)
    torch.mul(x2, c, out=out[..., h:]).add_(x1 * s)
    return out.to(x.dtype)


class _Rope(torch.autograd.Function):
    """RoPE as one autograd node: a rotation's gradient is the inverse rotation (sin negated), so nothing but the
    tables is saved for the backward (``benchmarks/plain_gpt.py`` measures the step)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by position tables cos/sin [T, D] (rotate-half layout)."""
    if torch.compiler.is_compiling():  # the compiler fuses the formula itself (and cannot trace ``out=`` views)
        x1, x2 = x.chunk(2, dim=-1)
        return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)
    return _Rope.apply(x, cos, sin)


class KVCache:
    """Keys and values of one block for incremental decoding: [B, H, T_max, D] each."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.zeros(batch, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, T, D] at positions pos..pos+T; return all keys/values so far."""
        end = pos + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; cannot write up to {end}")
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, cache: KVCache | None = None, pos: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            k, v = cache.update(pos, k, v)  # [B, H, pos+T, D]
            if pos > 0:  # queries at pos..pos+T-1 see keys 0..their own position
                causal = False
                q_pos = torch.arange(pos, pos + T, device=x.device)[:, None]
                mask = torch.arange(pos + T, device=x.device)[None, :] <= q_pos  # [T, pos+T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GeluMLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class SwiGLU(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.hidden, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.proj(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = GeluMLP(cfg) if cfg.block == "paper" else SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache: KVCache | None = None, pos: int = 0):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, cache, pos))
        return x + self.drop(self.mlp(self.norm2(x)))

    def output_projections(self) -> list[nn.Linear]:
        """The linears that write into the residual stream (zeroed for identity insertion)."""
        return [self.attn.proj, self.mlp.proj]


BLOCK_STYLES = {"paper", "llama"}

# --------------------------------------------------------------------------- model


class GrowLM(nn.Module):
    """Frozen substrate embedding -> blocks -> final norm -> untied LM head."""

    kind = "growlm"  # how ``growlm.model.saved`` names this model class in model.json
    # Recompute each trained block's activations in the backward pass instead of keeping them (a training
    # setting, like torchtitan's activation_checkpoint: set by the trainer from [train], never saved).
    activation_checkpointing: bool = False

    def __init__(self, cfg: Config, substrate=None):
        super().__init__()
        if substrate is not None:
            if tuple(substrate.matrix.shape) != (cfg.vocab_size, cfg.d_model):
                raise ValueError(f"substrate is {tuple(substrate.matrix.shape)} but the config wants "
                                 f"[vocab_size={cfg.vocab_size}, d_model={cfg.d_model}]")
            emb, self.substrate_fingerprint = substrate.matrix, substrate.fingerprint
            self.substrate_spec = substrate.spec.to_dict()
            self.substrate_content = getattr(substrate, "content_sha256", "")  # golden hash, checked on load
        else:  # shape-only model (parameter counting, or weights loaded later)
            emb, self.substrate_fingerprint, self.substrate_spec = torch.zeros(cfg.vocab_size, cfg.d_model), "", {}
            self.substrate_content = ""
        # The architecture without its depth: depth is len(self.blocks), never stored twice.
        self._arch = replace(cfg, n_layer=0)
        # The embedding is a buffer, not a parameter: no optimiser can ever see it. It is
        # not in the state dict either: checkpoints store the substrate spec and fingerprint.
        self.register_buffer("embedding", emb.detach().clone(), persistent=False)  # [V, C]
        self.blocks = nn.ModuleList()
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.grow(cfg.n_layer)
        self._init_linear(self.head)
        if cfg.trainable_embedding:
            self.make_embedding_trainable(cfg.embedding_init)

    @property
    def cfg(self) -> Config:
        """The config as the model stands: ``n_layer`` is the number of blocks (a fresh copy; read-only)."""
        return replace(self._arch, n_layer=len(self.blocks),
                       trainable_embedding=isinstance(self.embedding, nn.Parameter))

    def make_embedding_trainable(self, init: str = "substrate") -> None:
        """Turn the frozen embedding into a parameter (the paper's baselines), starting from the substrate's rows
        or, for the classical fully trainable baseline, from N(0, init_std) like a GPT-2 token embedding."""
        emb = self._buffers.pop("embedding").clone()
        if init == "random":
            nn.init.normal_(emb, mean=0.0, std=self._arch.init_std)
        elif init != "substrate":
            raise ValueError(f"embedding init must be 'substrate' or 'random', got {init!r}")
        self.embedding = nn.Parameter(emb)
        self._arch = replace(self._arch, trainable_embedding=True, embedding_init=init)

    # -- construction ---------------------------------------------------------------

    def _init_linear(self, m: nn.Linear, std: float | None = None) -> None:
        nn.init.normal_(m.weight, mean=0.0, std=std or self._arch.init_std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    def new_block(self, init: str = "fresh") -> Block:
        """A block initialised as ``fresh`` (random), ``identity`` (adds nothing) or ``copy`` (of the top block)."""
        block = Block(self._arch).to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        for m in block.modules():
            if isinstance(m, nn.Linear):
                self._init_linear(m)
        # GPT-2 scales the residual writes by 1/sqrt(2 * depth). A growing model does not know its final
        # depth unless told (init_depth); by default the depth after this insertion is used.
        depth = max(self._arch.init_depth, len(self.blocks) + 1)
        for m in block.output_projections():
            self._init_linear(m, self._arch.init_std / math.sqrt(2 * depth))
        if init == "identity":
            for m in block.output_projections():
                nn.init.zeros_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        elif init == "copy":
            if not self.blocks:
                raise ValueError("init='copy' needs a block below to copy; the model has none")
            block.load_state_dict(self.blocks[-1].state_dict())
        elif init != "fresh":
            raise ValueError(f"unknown block init {init!r}; valid: 'fresh', 'identity', 'copy'")
        return block

    def grow(self, n: int = 1, init: str = "fresh") -> list[int]:
        """Append ``n`` new blocks on top; returns their indices."""
        added = []
        for _ in range(n):
            self.blocks.append(self.new_block(init))
            added.append(len(self.blocks) - 1)
        return added

    def set_trainable(self, blocks: list[int] | None = None, head: bool = True, norm: bool | None = None) -> None:
        """Freeze everything, then unfreeze the listed blocks (None = all), the head and the final norm."""
        train = set(range(len(self.blocks))) if blocks is None else set(blocks)
        for i, b in enumerate(self.blocks):
            b.requires_grad_(i in train)
        self.head.requires_grad_(head)
        self.norm.requires_grad_(head if norm is None else norm)

    # -- forward --------------------------------------------------------------------

    def _rope(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if start + length > self.rope_cos.shape[0]:
            cos, sin = rope_tables(self._arch.head_dim, 2 * (start + length), self._arch.rope_base,
                                   self.rope_cos.device)
            self.rope_cos, self.rope_sin = cos, sin
        return self.rope_cos[start:start + length], self.rope_sin[start:start + length]

    def first_trainable_block(self) -> int:
        """Index of the lowest block with a trainable parameter (len(blocks) if none)."""
        for i, b in enumerate(self.blocks):
            if any(p.requires_grad for p in b.parameters()):
                return i
        return len(self.blocks)

    def hidden_states(self, idx: torch.Tensor, caches: list[KVCache] | None = None, pos: int = 0) -> torch.Tensor:
        """Final-norm hidden states [B, T, C] of token ids idx [B, T]."""
        B, T = idx.shape
        cos, sin = self._rope(pos, T)
        x = F.embedding(idx, self.embedding)  # [B, T, C], frozen
        # Blocks below the lowest trainable one run without an autograd graph:
        # that is where the speed of training only the newest blocks comes from.
        split = self.first_trainable_block() if torch.is_grad_enabled() else len(self.blocks)
        if x.requires_grad:  # a trainable embedding (baseline) needs the whole graph
            split = 0
        with torch.no_grad():
            for i in range(split):
                x = self.blocks[i](x, cos, sin, caches[i] if caches else None, pos)
        recompute = self.activation_checkpointing and torch.is_grad_enabled() and not caches
        for i in range(split, len(self.blocks)):
            if recompute:  # keeps only the block's input; dropout masks replay (the RNG state is restored)
                x = checkpoint(self.blocks[i], x, cos, sin, use_reentrant=False)
            else:
                x = self.blocks[i](x, cos, sin, caches[i] if caches else None, pos)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                caches: list[KVCache] | None = None, pos: int = 0, loss_chunk: int | None = None):
        """Logits [B, T, V] when ``targets`` is None, else the mean cross-entropy (logits never held whole)."""
        h = self.hidden_states(idx, caches, pos)
        if targets is None:
            return self.head(h)
        return chunked_cross_entropy(h.reshape(-1, h.shape[-1]), self.head.weight, self.head.bias,
                                     targets.reshape(-1), chunk=loss_chunk)

    # -- generation -----------------------------------------------------------------

    def last_logits(self, idx: torch.Tensor, caches: list[KVCache] | None = None, pos: int = 0) -> torch.Tensor:
        """Logits [B, V] of the token after idx [B, T]: the head runs on the last position only."""
        return self.head(self.hidden_states(idx, caches, pos)[:, -1, :])

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        """Empty KV caches, one per block."""
        p = self.head.weight
        return [KVCache(batch, self._arch.n_head, max_len, self._arch.head_dim, p.device, p.dtype)
                for _ in self.blocks]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue idx [B, T] by up to ``max_new_tokens``; temperature 0 is greedy."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache, eos_id, generator)

    # -- bookkeeping ----------------------------------------------------------------

    def param_counts(self) -> dict[str, int]:
        """Total parameters, trainable parameters and the (frozen) embedding size."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable, "embedding": self.embedding.numel()}

    # -- save / load (through growlm.model.saved) -------------------------------------

    def save_meta(self) -> dict:
        """The JSON description saved next to the weights: config and substrate."""
        meta = {"kind": self.kind, "config": self.cfg.to_dict(), "substrate": self.substrate_spec,
                "substrate_fingerprint": self.substrate_fingerprint}
        if self.substrate_content:
            meta["substrate_content_sha256"] = self.substrate_content
        return meta

    @classmethod
    def from_saved(cls, where, meta: dict, state: dict[str, torch.Tensor], substrate=None) -> GrowLM:
        """A GrowLM from its saved description and weights, on the substrate the description names."""
        cfg = Config.from_dict(meta["config"])
        if substrate is None:
            substrate = Substrate.from_spec(meta["substrate"])
        substrate.check_same(meta["substrate_fingerprint"], f"model at {where}", meta.get("substrate_content_sha256"))
        model = cls(cfg, substrate)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"weights in {where} do not fit the saved config: {e}") from None
        return model


register_kind(GrowLM)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick next ids [B, 1] from logits [B, V]."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def next_logits(model: nn.Module, idx: torch.Tensor, caches=None, pos: int = 0) -> torch.Tensor:
    """Logits [B, V] of the token after idx [B, T]: ``model.last_logits`` where the model has it (a prefill
    then never builds [B, T, V]), else the last position of ``model(idx, caches=, pos=)``."""
    last = getattr(model, "last_logits", None)
    if last is not None:
        return last(idx, caches, pos)
    return model(idx, caches=caches, pos=pos)[:, -1, :]


def model_logits(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, use_cache: bool = True,
                 last: Callable[..., torch.Tensor] = next_logits) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits_of`` for ``decode`` from a model and its prompt idx [B, T]: with KV caches where the model has them
    (the prompt's prefill, then one token a step), else the whole sequence again each step. ``last(model, idx,
    caches, pos)`` gives the logits [B, V] after idx (default ``next_logits``)."""
    T = idx.shape[1]
    if not (use_cache and hasattr(model, "new_caches")):
        return lambda new: last(model, torch.cat([idx, new.to(idx.device)], dim=1))
    caches = model.new_caches(idx.shape[0], T + max_new_tokens)

    def step(new: torch.Tensor) -> torch.Tensor:
        if new.shape[1] == 0:
            return last(model, idx, caches, 0)
        return last(model, new[:, -1:].to(idx.device), caches, T + new.shape[1] - 1)

    return step


@torch.no_grad()
def decode(logits_of: Callable[[torch.Tensor], torch.Tensor], batch: int, max_new_tokens: int,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, eos_id: int | None = None,
           device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """The decode loop: yield the next ids [B, 1] up to ``max_new_tokens`` times, each sampled from
    ``logits_of(new)`` (the logits [B, V] after the ids generated so far, new [B, k]; see ``model_logits``).

    Sampling (``sample_next``: temperature 0 is greedy; top-k, top-p) runs on the generator's device. With
    ``eos_id`` a row that produced it repeats it, and the loop ends once every row has.
    """
    new = torch.empty(batch, 0, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        logits = logits_of(new)
        if generator is not None:
            logits = logits.to(generator.device)
        nxt = sample_next(logits, temperature, top_k, top_p, generator).to(new.device)  # [B, 1]
        if eos_id is not None:
            nxt = nxt.masked_fill(done[:, None], eos_id)
            done |= nxt[:, 0] == eos_id
        new = torch.cat([new, nxt], dim=1)
        yield nxt
        if eos_id is not None and bool(done.all()):
            return


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             eos_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue idx [B, T] by up to ``max_new_tokens`` (``decode``) for any model with ``forward(idx, caches=,
    pos=)`` and ``new_caches``; returns [B, T + new]."""
    steps = decode(model_logits(model, idx, max_new_tokens, use_cache), idx.shape[0], max_new_tokens, temperature,
                   top_k, top_p, generator, eos_id, idx.device)
    return torch.cat([idx, *steps], dim=1)
