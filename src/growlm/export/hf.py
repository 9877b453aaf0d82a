"""Export a growlm model as a Hugging Face checkpoint that ``transformers`` runs with no growlm code.

Which models export, and to what (each mapping is exact: same float32 logits up to rounding):

* ``llama`` block -> ``LlamaForCausalLM``. growlm's RoPE is already the rotate-half
  layout of HF Llama, so q/k need no permutation; the fused ``attn.qkv`` rows
  [0:C], [C:2C], [2C:3C] become ``q_proj``, ``k_proj``, ``v_proj``.
* ``paper`` block -> ``GPTNeoXForCausalLM`` with ``use_parallel_residual=False``
  (sequential pre-norm), ``rotary_pct=1.0`` and exact ``gelu``. NeoX fuses qkv
  per head ([H, 3, D] rows) where growlm stacks [3, H, D], so the rows are permuted.
  NeoX's output layer has no bias: a model whose LM head bias is non-zero cannot be
  exported exactly and is refused (train with ``head_bias=False`` or the llama preset).
  Missing biases (``bias=False``) export as zeros, which is exact.

In both, the input embedding is the frozen substrate matrix and the LM head stays
untied (``tie_word_embeddings=False``). Composed models are not exportable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from growlm.model.saved import CheckpointError, load_model, read_json, resolve_model_dir
from growlm.util.fileio import (
    OutputDirError,
    check_not_in_model,
    check_not_input,
    foreign_entries,
    growlm_dir_kind,
    is_staging,
    remove_stale_staging,
    staged_files,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "growlm_vocab.json", "growlm_export.json"}  # everything export writes


class ExportError(ValueError):
    """A model cannot be exported exactly to the requested format."""


def _check_head_bias(model, arch: str) -> None:
    b = model.head.bias
    if b is not None and bool(b.detach().abs().max() > 0):
        raise ExportError(
            f"the LM head has a non-zero bias (max |b| = {float(b.detach().abs().max()):.4g}) but {arch}'s output "
            "layer has none, so the export would change the logits; train with head_bias=False "
            "(e.g. Config.from_preset('paper', head_bias=False)) or use the llama preset")


def _bias(linear: torch.nn.Linear) -> torch.Tensor:
    return linear.bias if linear.bias is not None else torch.zeros(linear.out_features)


def _norm_bias(norm: torch.nn.Module) -> torch.Tensor:
    return norm.bias if getattr(norm, "bias", None) is not None else torch.zeros_like(norm.weight)


def llama_checkpoint(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """HF ``LlamaForCausalLM`` config dict and tensors of a llama-block GrowLM."""
    cfg = model.cfg
    _check_head_bias(model, "LlamaForCausalLM")
    C = cfg.d_model
    t = {"model.embed_tokens.weight": model.embedding, "model.norm.weight": model.norm.weight,
         "lm_head.weight": model.head.weight}
    for i, blk in enumerate(model.blocks):
        p = f"model.layers.{i}."
        w = blk.attn.qkv.weight  # [3C, C]: q, k, v stacked
        t.update({p + "self_attn.q_proj.weight": w[:C], p + "self_attn.k_proj.weight": w[C:2 * C],
                  p + "self_attn.v_proj.weight": w[2 * C:], p + "self_attn.o_proj.weight": blk.attn.proj.weight,
                  p + "mlp.gate_proj.weight": blk.mlp.gate.weight, p + "mlp.up_proj.weight": blk.mlp.up.weight,
                  p + "mlp.down_proj.weight": blk.mlp.proj.weight, p + "input_layernorm.weight": blk.norm1.weight,
                  p + "post_attention_layernorm.weight": blk.norm2.weight})
        if cfg.bias:
            b = blk.attn.qkv.bias
            t.update({p + "self_attn.q_proj.bias": b[:C], p + "self_attn.k_proj.bias": b[C:2 * C],
                      p + "self_attn.v_proj.bias": b[2 * C:], p + "self_attn.o_proj.bias": blk.attn.proj.bias,
                      p + "mlp.gate_proj.bias": blk.mlp.gate.bias, p + "mlp.up_proj.bias": blk.mlp.up.bias,
                      p + "mlp.down_proj.bias": blk.mlp.proj.bias})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": C, "intermediate_size": cfg.hidden,
        "num_hidden_layers": len(model.blocks), "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
        "tie_word_embeddings": False, "initializer_range": cfg.init_std, "use_cache": True,
    }
    return config, t


def neox_checkpoint(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """HF ``GPTNeoXForCausalLM`` config dict and tensors of a paper-block GrowLM (head bias must be zero)."""
    cfg = model.cfg
    _check_head_bias(model, "GPTNeoXForCausalLM")
    C, H, D = cfg.d_model, cfg.n_head, cfg.head_dim

    def per_head(x: torch.Tensor) -> torch.Tensor:  # rows [3, H, D] -> [H, 3, D]
        return x.reshape(3, H, D, *x.shape[1:]).transpose(0, 1).reshape(x.shape)

    t = {"gpt_neox.embed_in.weight": model.embedding, "gpt_neox.final_layer_norm.weight": model.norm.weight,
         "gpt_neox.final_layer_norm.bias": _norm_bias(model.norm), "embed_out.weight": model.head.weight}
    for i, blk in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        t.update({
            p + "input_layernorm.weight": blk.norm1.weight, p + "input_layernorm.bias": _norm_bias(blk.norm1),
            p + "post_attention_layernorm.weight": blk.norm2.weight,
            p + "post_attention_layernorm.bias": _norm_bias(blk.norm2),
            p + "attention.query_key_value.weight": per_head(blk.attn.qkv.weight),
            p + "attention.query_key_value.bias": per_head(_bias(blk.attn.qkv)),
            p + "attention.dense.weight": blk.attn.proj.weight, p + "attention.dense.bias": _bias(blk.attn.proj),
            p + "mlp.dense_h_to_4h.weight": blk.mlp.fc.weight, p + "mlp.dense_h_to_4h.bias": _bias(blk.mlp.fc),
            p + "mlp.dense_4h_to_h.weight": blk.mlp.proj.weight, p + "mlp.dense_4h_to_h.bias": _bias(blk.mlp.proj),
        })
    config = {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
        "vocab_size": cfg.vocab_size, "hidden_size": C, "intermediate_size": cfg.hidden,
        "num_hidden_layers": len(model.blocks), "num_attention_heads": H, "hidden_act": "gelu",
        "max_position_embeddings": cfg.block_size, "layer_norm_eps": cfg.norm_eps,
        "rotary_pct": 1.0, "rotary_emb_base": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base, "partial_rotary_factor": 1.0},
        "use_parallel_residual": False, "attention_bias": True, "attention_dropout": cfg.dropout,
        "hidden_dropout": cfg.dropout, "tie_word_embeddings": False, "initializer_range": cfg.init_std,
        "use_cache": True,
    }
    return config, t


EXPORTERS = {"llama": llama_checkpoint, "paper": neox_checkpoint}


def hf_checkpoint(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """The HF config dict and state dict for a GrowLM (dispatch on its block style)."""
    style = model.cfg.block
    if style not in EXPORTERS:
        raise ExportError(f"block style {style!r} has no Hugging Face export; exportable: {sorted(EXPORTERS)}")
    return EXPORTERS[style](model)


def write_tokenizer(vocab: str, out: Path, max_length: int) -> dict[str, int]:
    """Write tokenizer.json plus the files ``AutoTokenizer`` reads; returns the special token ids."""
    from growlm.substrate import Tokenizer

    tok = Tokenizer.load(vocab)
    tok.save(out)
    # the vocabulary's own special names; split_special_tokens: names in text stay text, as in growlm
    config = tok.transformers_config()
    specials = {k: v for k, v in config.items() if k.endswith("_token")}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", **config, "model_max_length": max_length,
        "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}


def check_export_dir(out: Path, force: bool = False) -> None:
    """``out`` must be missing, empty or an earlier export; with ``force``, a directory holding other files too,
    but never (one inside) a growlm model, checkpoint or run directory, whose files the export would replace."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    check_not_in_model(out, "export directory")
    if not out.is_dir():
        return
    kind = growlm_dir_kind(out)
    if kind is not None:
        raise OutputDirError(f"export directory {out} is {kind}; an export never writes into growlm's own output "
                             "(not even with --force): choose a new or empty directory")
    remove_stale_staging(out)  # a killed export's leftovers are growlm's own
    ours = (out / "growlm_export.json").is_file()
    foreign = [n for n in foreign_entries(out, EXPORT_FILES if ours else ()) if not is_staging(n)]
    if foreign and not force:
        raise OutputDirError(f"{out} already holds files growlm export did not write ({', '.join(foreign[:5])}); "
                             "choose a new or empty directory, or pass --force to write the export's files "
                             f"({', '.join(sorted(EXPORT_FILES))}) into it and leave everything else alone")


def export_hf(path: str | Path, out: str | Path, dtype: str = "float32", force: bool = False) -> Path:
    """Write model (config.json + model.safetensors) and tokenizer of a growlm model or run dir to ``out``.

    ``out`` must be missing, empty or an earlier export (``force``: any directory; only the export's own
    files are written, nothing else is touched), and never the model's own directory.
    """
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")
    src = resolve_model_dir(path)
    out = Path(out)
    check_not_input(out, [src], "export directory")
    check_export_dir(out, force)
    meta = read_json(src / "model.json", "model description")
    if meta.get("kind") == "composed":
        raise ExportError(f"{src} is a composed model (several experts fused at the logits); Hugging Face has no "
                          "such architecture. Export each expert's run instead")
    model = load_model(src).eval()
    config, tensors = hf_checkpoint(model)
    vocab = (meta.get("substrate") or {}).get("vocab")
    if not vocab:
        raise CheckpointError(f"{src}/model.json names no substrate vocabulary; cannot write the tokenizer")
    with staged_files(out) as tmp:
        ids = write_tokenizer(vocab, tmp, model.cfg.block_size)
        config.update(ids, torch_dtype=dtype, dtype=dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps(ids, indent=1))
        save_file({k: v.detach().to(DTYPES[dtype]).contiguous().clone() for k, v in tensors.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "growlm_export.json").write_text(json.dumps({
            "source": str(src), "block": model.cfg.block, "architecture": config["architectures"][0],
            "substrate": meta.get("substrate"), "substrate_fingerprint": meta.get("substrate_fingerprint"),
            "stage": meta.get("stage"), "depth": len(model.blocks)}, indent=1))
    return out


def verify_export(src: str | Path, out: str | Path, seq_len: int = 32, seed: int = 0) -> float:
    """Max |logit difference| between the growlm model and its export loaded by ``transformers`` (needs it)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ImportError("verifying an export needs transformers: pip install 'growlm[hf]'") from None
    model = load_model(src).eval().float()
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.cfg.vocab_size, (2, seq_len), generator=g)
    with torch.no_grad():
        return float((model(idx) - hf(idx).logits).abs().max())
