"""A growlm model for ``transformers``: written into an export by ``growlm export`` where no stock architecture
holds the model exactly (an LM head with a bias, a composition of experts). Needs torch and transformers only:
``AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)``.

Each expert is a growlm decoder: frozen token embedding (shared by the experts) -> pre-norm blocks (``paper``:
LayerNorm, GELU MLP, biases; ``llama``: RMSNorm, SwiGLU) with rotate-half RoPE -> final norm -> untied LM head
(with or without a bias). The experts' logits are fused by the config's method, exactly as growlm does. Decoding
recomputes the prefix at every step (there is no KV cache). Shapes: B batch, T time, C d_model, N experts.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_growlm import GrowLMConfig


def rope_tables(head_dim: int, positions: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., T, D] of rotate-half RoPE at integer ``positions`` [..., T]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(e: dict) -> nn.Module:
    if e["block"] == "llama":
        return RMSNorm(e["d_model"], e["norm_eps"])
    return nn.LayerNorm(e["d_model"], eps=e["norm_eps"], bias=e["bias"] and e["norm_bias"])


class Attention(nn.Module):
    def __init__(self, e: dict):
        super().__init__()
        self.n_head, self.head_dim = e["n_head"], e["d_model"] // e["n_head"]
        self.qkv = nn.Linear(e["d_model"], 3 * e["d_model"], bias=e["bias"])
        self.proj = nn.Linear(e["d_model"], e["d_model"], bias=e["bias"])

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GeluMLP(nn.Module):
    def __init__(self, e: dict):
        super().__init__()
        self.fc = nn.Linear(e["d_model"], e["hidden"], bias=e["bias"])
        self.proj = nn.Linear(e["hidden"], e["d_model"], bias=e["bias"])

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class SwiGLU(nn.Module):
    def __init__(self, e: dict):
        super().__init__()
        self.gate = nn.Linear(e["d_model"], e["hidden"], bias=e["bias"])
        self.up = nn.Linear(e["d_model"], e["hidden"], bias=e["bias"])
        self.proj = nn.Linear(e["hidden"], e["d_model"], bias=e["bias"])

    def forward(self, x):
        return self.proj(F.silu(self.gate(x)) * self.up(x))


class GrowLMBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, e: dict):
        super().__init__()
        self.norm1, self.attn, self.norm2 = make_norm(e), Attention(e), make_norm(e)
        self.mlp = GeluMLP(e) if e["block"] == "paper" else SwiGLU(e)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class GrowLMExpert(nn.Module):
    """One growlm decoder: blocks -> final norm -> LM head (the embedding is the caller's, or its own)."""

    def __init__(self, e: dict, vocab_size: int):
        super().__init__()
        self.e = e
        if e.get("own_embedding"):
            self.embedding = nn.Parameter(torch.zeros(vocab_size, e["d_model"]))
        self.blocks = nn.ModuleList(GrowLMBlock(e) for _ in range(e["n_layer"]))
        self.norm = make_norm(e)
        self.head = nn.Linear(e["d_model"], vocab_size, bias=e["head_bias"])

    def hidden_states(self, idx, shared_embedding, positions, mask):
        """Final-norm hidden states [B, T, C] of ids idx [B, T]."""
        x = F.embedding(idx, self.embedding if self.e.get("own_embedding") else shared_embedding)
        cos, sin = rope_tables(self.e["d_model"] // self.e["n_head"], positions, self.e["rope_base"])
        if cos.dim() == 3:  # per-row positions [B, T, D]: broadcast over the heads
            cos, sin = cos[:, None], sin[:, None]
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x)


class LogitAdapter(nn.Module):
    """growlm's gated logit fusion: sum_i g_i (1 + s_i) logits_i + b, g from a low-rank view of the log-probs."""

    def __init__(self, n: int, vocab: int, rank: int):
        super().__init__()
        self.proj = nn.Parameter(torch.zeros(vocab, rank))
        self.gate = nn.Linear(n * rank, n)
        self.scale = nn.Parameter(torch.zeros(n, vocab))
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, logits):
        L = torch.stack(logits, dim=-2).float()  # [B, T, N, V]
        g = self.gate((L.log_softmax(-1) @ self.proj.float()).flatten(-2)).softmax(-1)  # [B, T, N]
        return (g[..., None] * (1 + self.scale) * L).sum(-2) + self.bias


def log_mix(terms):
    out = terms[0]
    for t in terms[1:]:
        out = torch.logaddexp(out, t)
    return out


def posterior_log_weights(prefix, log_prior, positions, window: int):
    """Normalised log posterior weights [B, N, T] of the experts given the text before each position."""
    cur = prefix[..., positions]
    if window > 0:
        cur = cur - prefix[..., (positions - window).clamp(min=0)]
    logw = log_prior.to(torch.float64)[None, :, None] + cur
    return logw - logw.logsumexp(1, keepdim=True)


class GrowLMForCausalLM(PreTrainedModel, GenerationMixin):
    """Experts on one frozen substrate, fused by ``config.method`` (``single``: one expert's logits)."""

    config_class = GrowLMConfig
    base_model_prefix = "growlm"
    _no_split_modules = ["GrowLMBlock"]
    _supports_sdpa = True

    def __init__(self, config: GrowLMConfig):
        super().__init__(config)
        n, V = len(config.experts), config.vocab_size
        self.embed_tokens = nn.Embedding(V, config.hidden_size)  # the frozen substrate (expert 0's embedding)
        self.experts = nn.ModuleList(GrowLMExpert(e, V) for e in config.experts)
        self.adapter = LogitAdapter(n, V, config.rank) if config.method == "adapter" else None
        self.router = nn.Linear(sum(e["d_model"] for e in config.experts), n) if config.method == "router" else None
        self.post_init()

    def _init_weights(self, module):  # every weight comes from the checkpoint
        pass

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return self.experts[0].head if len(self.experts) == 1 else None

    def _mix(self, idx, hs, valid):
        method = self.config.method
        mix = torch.tensor(self.config.weights, dtype=torch.float32, device=idx.device)
        if method == "single":
            return self.experts[0].head(hs[0])
        if method in ("average", "router"):
            if self.router is None:
                g = mix.to(hs[0].dtype).expand(*hs[0].shape[:2], -1)
            else:
                g = self.router(torch.cat(hs, dim=-1)).softmax(-1)
            return sum(g[..., i:i + 1] * e.head(h) for i, (e, h) in enumerate(zip(self.experts, hs)))
        logits = [e.head(h) for e, h in zip(self.experts, hs)]
        if method == "prob":
            return log_mix([lg.float().log_softmax(-1) + mix.log()[i] for i, lg in enumerate(logits)])
        if method == "adapter":
            return self.adapter(logits)
        if method == "posterior":
            lp = torch.stack(logits, 1).float().log_softmax(-1)  # [B, N, T, V]
            ll = lp[:, :, :-1].gather(-1, idx[:, None, 1:, None].expand(-1, lp.shape[1], -1, -1))[..., 0]
            ll = ll.to(torch.float64)
            if valid is not None:  # a padding token is no evidence for any expert
                ll = ll * valid[:, None, 1:]
            prefix = F.pad(ll.cumsum(-1), (1, 0))  # [B, N, T]
            positions = torch.arange(idx.shape[1], device=idx.device)
            logw = posterior_log_weights(prefix, mix.log(), positions, self.config.window)
            return log_mix(list((lp + logw.to(lp.dtype)[..., None]).unbind(1)))
        raise ValueError(f"unknown growlm composition method {method!r}")

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        """Logits [B, T, V] (and the shifted cross-entropy given ``labels``). A 2-D ``attention_mask`` marks padding:
        positions count from each row's first real token, and no token attends to padding."""
        idx = input_ids
        B, T = idx.shape
        mask, valid = None, None
        positions = torch.arange(T, device=idx.device)
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            valid = attention_mask.bool()
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=idx.device)  # a padding query still sees itself
            mask = (causal & (valid[:, None, :] | eye))[:, None]  # [B, 1, T, T]
        emb = self.embed_tokens.weight
        hs = [e.hidden_states(idx, emb, positions, mask) for e in self.experts]
        logits = self._mix(idx, hs, valid)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """Every step sees the whole sequence (no KV cache)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}

