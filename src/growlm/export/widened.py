"""The widened GPT-NeoX layout: a paper-block model whose LM head has a bias, as a stock ``GPTNeoXForCausalLM``.

GPT-NeoX's output layer has no bias. ``widen`` carries it on extra channels of the residual stream that hold the
mean of the model's channels (see its docstring); ``narrow`` is the way back, and ``check_widened`` holds an export
to what widening the model read back gives. ``growlm.export.hf`` writes the config around ``widen``'s tensors and
``growlm.export.hf_load`` reads them back.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from growlm.model.model import Config
from growlm.model.saved import CheckpointError


def bias_or_zeros(module: torch.nn.Module) -> torch.Tensor:
    """A linear layer's or a norm's bias, or zeros of its output width where it has none."""
    return module.bias if getattr(module, "bias", None) is not None else torch.zeros(module.weight.shape[0])


def widened_head_size(head_dim: int) -> int:
    """The head size of a widened export: the next multiple of 8 above ``head_dim`` (fused attention kernels, vLLM's
    among them, take head sizes in multiples of 8)."""
    return (head_dim // 8 + 1) * 8


def widen(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ``GPTNeoXForCausalLM`` config values (width, eps, rotary share) and tensors of a paper-block GrowLM whose
    LM head has a bias, made exact by widening each head from D to ``widened_head_size(D)`` = D + E dimensions and
    the residual stream from C to C + H E channels (H heads).

    Every extra channel carries the mean of the C channels: the embedding row's mean, and each sublayer's output
    projection writes to it the mean of its rows (linear, so it stays the mean). A LayerNorm over C + H E channels
    then sees the same mean and C / (C + H E) of the variance, which its weight (times sqrt(C / (C + H E))) and eps
    (times C / (C + H E)) undo; its output on the extra channels is its bias there: zero inside the blocks, so the
    attention and the MLP see nothing new, and 1 on the first extra channel of the final norm, whose column in the
    output layer is the head bias. Each head's extra dimensions have zero query, key and value weights; the query is
    scaled by sqrt((D + E) / D) because attention divides by sqrt(head size); RoPE covers the first D dimensions
    (``rotary_pct`` (D + 0.5) / (D + E), whose int(head size x pct) is D). Logits equal growlm's up to float
    rounding (a few 1e-6 in float32).
    """
    cfg = model.cfg
    C, H, D = cfg.d_model, cfg.n_head, cfg.head_dim
    E = widened_head_size(D) - D
    X = H * E  # extra channels
    W = C + X
    shrink, q_scale = math.sqrt(C / W), math.sqrt((D + E) / D)

    def mean_rows(x: torch.Tensor) -> torch.Tensor:  # C output rows -> C + X, the extras the mean of the C
        return torch.cat([x, x.mean(0, keepdim=True).expand(X, *x.shape[1:])])

    def zero_cols(x: torch.Tensor) -> torch.Tensor:  # C input columns -> C + X, the extras read nothing
        return torch.cat([x, x.new_zeros(x.shape[0], X)], 1)

    def norm(n: torch.nn.Module, extra_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([n.weight * shrink, n.weight.new_zeros(X)]), torch.cat([bias_or_zeros(n), extra_bias])

    def qkv(x: torch.Tensor) -> torch.Tensor:  # rows [3, H, D] -> [H, 3, D + E], the query scaled, zero extras
        x = x.reshape(3, H, D, -1) * torch.tensor([q_scale, 1.0, 1.0]).view(3, 1, 1, 1)
        return torch.cat([x, x.new_zeros(3, H, E, x.shape[-1])], 2).transpose(0, 1).reshape(3 * W, -1)

    emb, zeros = model.embedding, torch.zeros(X)
    head_bias = torch.cat([bias_or_zeros(model.head)[:, None], model.head.weight.new_zeros(cfg.vocab_size, X - 1)], 1)
    t = {"gpt_neox.embed_in.weight": torch.cat([emb, emb.mean(1, keepdim=True).expand(-1, X)], 1),
         "embed_out.weight": torch.cat([model.head.weight, head_bias], 1)}
    t["gpt_neox.final_layer_norm.weight"], t["gpt_neox.final_layer_norm.bias"] = norm(model.norm, torch.eye(X)[0])
    for i, blk in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        t[p + "input_layernorm.weight"], t[p + "input_layernorm.bias"] = norm(blk.norm1, zeros)
        t[p + "post_attention_layernorm.weight"], t[p + "post_attention_layernorm.bias"] = norm(blk.norm2, zeros)
        proj = blk.attn.proj.weight.reshape(C, H, D)  # its input: heads of D + E, whose extra values are 0
        t.update({
            p + "attention.query_key_value.weight": zero_cols(qkv(blk.attn.qkv.weight)),
            p + "attention.query_key_value.bias": qkv(bias_or_zeros(blk.attn.qkv)[:, None])[:, 0],
            p + "attention.dense.weight": mean_rows(torch.cat([proj, proj.new_zeros(C, H, E)], 2).reshape(C, W)),
            p + "attention.dense.bias": mean_rows(bias_or_zeros(blk.attn.proj)),
            p + "mlp.dense_h_to_4h.weight": zero_cols(blk.mlp.fc.weight),
            p + "mlp.dense_h_to_4h.bias": bias_or_zeros(blk.mlp.fc),
            p + "mlp.dense_4h_to_h.weight": mean_rows(blk.mlp.proj.weight),
            p + "mlp.dense_4h_to_h.bias": mean_rows(bias_or_zeros(blk.mlp.proj)),
        })
    return {"hidden_size": W, "layer_norm_eps": cfg.norm_eps * C / W, "rotary_pct": (D + 0.5) / (D + E)}, t


def narrow(t: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """The plain GPT-NeoX tensors (C channels, head size D) of tensors that ``widen`` wrote, the head bias as
    ``embed_out.bias`` (a new dict; ``t`` is left as it is): ``check_widened`` holds the extras to the model."""
    C, H, D = cfg.d_model, cfg.n_head, cfg.head_dim
    if "embed_out.weight" not in t:
        raise CheckpointError("a widened export without 'embed_out.weight': it does not fit its growlm_export.json")
    W = t["embed_out.weight"].shape[1]
    if W <= C or (W - C) % H:
        raise CheckpointError(f"a widened export of d_model {C} and {H} heads cannot be {W} wide")
    E = (W - C) // H  # extra dimensions per head
    norm_scale, q_scale = math.sqrt(C / W), math.sqrt((D + E) / D)
    out = {}
    for name, x in t.items():
        if name == "embed_out.weight":
            out[name], out["embed_out.bias"] = x[:, :C], x[:, C]
        elif name == "gpt_neox.embed_in.weight":
            out[name] = x[:, :C]
        elif "layernorm" in name or "layer_norm" in name:
            out[name] = x[:C] / norm_scale if name.endswith(".weight") else x[:C]
        elif "query_key_value" in name:  # rows [H, 3, D + E] -> [H, 3, D], the query unscaled
            x = x.reshape(H, 3, D + E, -1)[:, :, :D, :C] / torch.tensor([q_scale, 1.0, 1.0]).view(1, 3, 1, 1)
            out[name] = x.reshape(3 * C, -1).squeeze(1) if name.endswith(".bias") else x.reshape(3 * C, C)
        elif "attention.dense" in name:
            out[name] = x[:C].reshape(C, H, D + E)[:, :, :D].reshape(C, C) if x.dim() == 2 else x[:C]
        elif "dense_h_to_4h.weight" in name:
            out[name] = x[:, :C]
        elif "dense_4h_to_h" in name:
            out[name] = x[:C]
        else:
            out[name] = x
    return out


def check_widened(model, stored: dict[str, torch.Tensor], dtype: torch.dtype, d: Path) -> None:
    """Widening the model read back must give the tensors the export holds (up to the export dtype's rounding):
    an extra channel changed after export stops here instead of changing the logits silently."""
    eps = torch.finfo(dtype).eps
    for name, x in widen(model)[1].items():
        x = x.detach().to(dtype).float()
        ref = stored.get(name)
        if ref is None or ref.shape != x.shape or not torch.allclose(
                ref, x, rtol=8 * eps, atol=8 * eps * float(ref.abs().max().clamp(min=1.0))):
            raise CheckpointError(f"the export {d} was written widened (growlm_export.json) but its {name!r} is not "
                                  "what widening its own weights gives: it was changed after export, and reading it "
                                  "back would change the logits")
