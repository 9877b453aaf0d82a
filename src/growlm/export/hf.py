"""Export a growlm model as a Hugging Face checkpoint that ``transformers`` runs with no growlm code.

Two formats, both exact (same float32 logits up to rounding, same greedy text, same token ids):

* **stock**, where a standard architecture holds the model (vLLM and llama.cpp read these):
  ``llama`` block -> ``LlamaForCausalLM`` (growlm's RoPE is already HF Llama's rotate-half layout; the fused
  ``attn.qkv`` rows [0:C], [C:2C], [2C:3C] become ``q_proj``, ``k_proj``, ``v_proj``); ``paper`` block ->
  ``GPTNeoXForCausalLM`` with ``use_parallel_residual=False`` (sequential pre-norm), ``rotary_pct=1.0`` and exact
  ``gelu`` (NeoX fuses qkv per head, [H, 3, D] rows, where growlm stacks [3, H, D], so the rows are permuted;
  missing biases export as zeros). Neither output layer has a bias: a paper-block model whose LM head has one goes
  to a ``GPTNeoXForCausalLM`` widened by extra channels that carry it (``widened_neox_checkpoint``; exact up
  to float rounding) when asked for (``arch="stock"``).
* **growlm**, growlm's own small modelling file (``growlm.export.remote``: ``configuration_growlm.py`` and
  ``modeling_growlm.py`` copied into the export, ``auto_map`` in config.json, loaded with
  ``trust_remote_code=True``), for everything else: an LM head with a bias (every shipped recipe trains one: the
  paper's head has one, see the README's fidelity table) and composed models (each composition method).

In both the input embedding is the frozen substrate matrix and the LM head stays untied. ``growlm_export.json``
records which format was written and why, and the growlm model description, so that ``growlm.export.hf_load``
reads the directory back as a growlm model (``load_model(OUT)``, ``growlm eval/generate/compose OUT``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from growlm.export.hf_load import MARKER
from growlm.export.widened import bias_or_zeros, widen, widened_head_size
from growlm.model import GrowLM
from growlm.model.saved import CheckpointError, load_model, read_json, resolve_model_dir
from growlm.substrate import Tokenizer
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
REMOTE_DIR = Path(__file__).resolve().parent / "remote"
REMOTE_FILES = ("configuration_growlm.py", "modeling_growlm.py")  # growlm's modelling file, copied into an export
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "growlm_vocab.json", "growlm_export.json",
                *REMOTE_FILES}  # everything export writes
ARCHS = ("auto", "stock", "growlm")


class ExportError(ValueError):
    """A model cannot be exported exactly to the requested format."""


def stock_refusal(model) -> str | None:
    """Why no stock architecture holds ``model`` exactly (None when one does)."""
    if not isinstance(model, GrowLM):
        return (f"a composed model ({getattr(model, 'method', '?')} of {len(getattr(model, 'experts', []))} experts) "
                "has no stock architecture")
    if model.cfg.block not in STOCK:
        return f"block style {model.cfg.block!r} has no stock architecture (stock: {sorted(STOCK)})"
    b = model.head.bias
    if b is not None and bool(b.detach().abs().max() > 0):
        return (f"the LM head has a bias (max |b| = {float(b.detach().abs().max()):.4g}) and "
                f"{STOCK_NAMES[model.cfg.block]}'s output layer has none")
    return None


def widens(model) -> bool:
    """Whether ``widened_neox_checkpoint`` holds a model that no stock architecture holds as it is: a paper-block
    GrowLM whose only obstacle is its LM-head bias."""
    return isinstance(model, GrowLM) and model.cfg.block == "paper" and model.head.bias is not None


def _check_head_bias(model, arch: str) -> None:
    b = model.head.bias
    if b is not None and bool(b.detach().abs().max() > 0):
        raise ExportError(
            f"the LM head has a non-zero bias (max |b| = {float(b.detach().abs().max()):.4g}) but {arch}'s output "
            "layer has none, so the export would change the logits; export with arch='growlm' (growlm's own "
            "modelling file), or train with head_bias=False")


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
         "gpt_neox.final_layer_norm.bias": bias_or_zeros(model.norm), "embed_out.weight": model.head.weight}
    for i, blk in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        t.update({
            p + "input_layernorm.weight": blk.norm1.weight, p + "input_layernorm.bias": bias_or_zeros(blk.norm1),
            p + "post_attention_layernorm.weight": blk.norm2.weight,
            p + "post_attention_layernorm.bias": bias_or_zeros(blk.norm2),
            p + "attention.query_key_value.weight": per_head(blk.attn.qkv.weight),
            p + "attention.query_key_value.bias": per_head(bias_or_zeros(blk.attn.qkv)),
            p + "attention.dense.weight": blk.attn.proj.weight,
            p + "attention.dense.bias": bias_or_zeros(blk.attn.proj),
            p + "mlp.dense_h_to_4h.weight": blk.mlp.fc.weight, p + "mlp.dense_h_to_4h.bias": bias_or_zeros(blk.mlp.fc),
            p + "mlp.dense_4h_to_h.weight": blk.mlp.proj.weight,
            p + "mlp.dense_4h_to_h.bias": bias_or_zeros(blk.mlp.proj),
        })
    return _neox_config(model, C, cfg.norm_eps, 1.0), t


def _neox_config(model, hidden_size: int, norm_eps: float, rotary_pct: float) -> dict:
    """The ``GPTNeoXForCausalLM`` config.json of a paper-block GrowLM at this width, eps and rotary share."""
    cfg = model.cfg
    return {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
        "vocab_size": cfg.vocab_size, "hidden_size": hidden_size, "intermediate_size": cfg.hidden,
        "num_hidden_layers": len(model.blocks), "num_attention_heads": cfg.n_head, "hidden_act": "gelu",
        "max_position_embeddings": cfg.block_size, "layer_norm_eps": norm_eps,
        "rotary_pct": rotary_pct, "rotary_emb_base": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base, "partial_rotary_factor": rotary_pct},
        "use_parallel_residual": False, "attention_bias": True, "attention_dropout": cfg.dropout,
        "hidden_dropout": cfg.dropout, "tie_word_embeddings": False, "initializer_range": cfg.init_std,
        "use_cache": True,
    }


def widened_neox_checkpoint(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """``GPTNeoXForCausalLM`` config dict and tensors of a paper-block GrowLM whose LM head has a bias: the widened
    layout of ``growlm.export.widened.widen``."""
    values, t = widen(model)
    return _neox_config(model, values["hidden_size"], values["layer_norm_eps"], values["rotary_pct"]), t


STOCK = {"llama": llama_checkpoint, "paper": neox_checkpoint}
STOCK_NAMES = {"llama": "LlamaForCausalLM", "paper": "GPTNeoXForCausalLM"}
STOCK_WHY = {"llama": "the llama block is exactly LlamaForCausalLM",
             "paper": "the paper block with no (or a zero) LM-head bias is exactly GPTNeoXForCausalLM (sequential "
                      "residual, full rotary, exact GELU)"}


def _expert_spec(e: GrowLM, own_embedding: bool = False) -> dict:
    cfg = e.cfg
    return {"block": cfg.block, "d_model": cfg.d_model, "n_head": cfg.n_head, "n_layer": len(e.blocks),
            "hidden": cfg.hidden, "bias": cfg.bias, "norm_bias": cfg.norm_bias, "head_bias": cfg.head_bias,
            "norm_eps": cfg.norm_eps, "rope_base": cfg.rope_base, "own_embedding": own_embedding}


def growlm_checkpoint(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config dict and tensors for growlm's own modelling file, of a GrowLM or a composed model: the tensors are
    the composed model's state (a single model is expert 0 of method ``single``) plus ``embed_tokens.weight``."""
    if isinstance(model, GrowLM):
        experts, method, weights, rank, window = [model], "single", [1.0], 8, 0
        state = {f"experts.0.{k}": v for k, v in model.state_dict().items()}
    else:
        experts, method, weights = list(model.experts), model.method, list(model.weights)
        rank, window = int(getattr(model, "rank", 8)), int(getattr(model, "window", 0))
        state = dict(model.state_dict())
    if method not in ("single", "average", "prob", "adapter", "router", "posterior"):
        raise ExportError(f"composition method {method!r} has no Hugging Face export yet")
    emb0 = experts[0].embedding
    specs = []
    for i, e in enumerate(experts):
        state.pop(f"experts.{i}.embedding", None)
        own = i > 0 and (isinstance(e.embedding, torch.nn.Parameter) or not torch.equal(e.embedding, emb0))
        if own:
            state[f"experts.{i}.embedding"] = e.embedding
        specs.append(_expert_spec(e, own))
    state["embed_tokens.weight"] = emb0
    config = {
        "architectures": ["GrowLMForCausalLM"], "model_type": "growlm",
        "auto_map": {"AutoConfig": "configuration_growlm.GrowLMConfig",
                     "AutoModelForCausalLM": "modeling_growlm.GrowLMForCausalLM"},
        "vocab_size": experts[0].cfg.vocab_size, "hidden_size": experts[0].cfg.d_model, "experts": specs,
        "method": method, "weights": weights, "rank": rank, "window": window,
        "max_position_embeddings": max(e.cfg.block_size for e in experts), "tie_word_embeddings": False,
        "use_cache": False,
    }
    return config, state


def hf_checkpoint(model, arch: str = "auto") -> tuple[dict, dict[str, torch.Tensor], str, str]:
    """The HF config dict, tensors, format (``stock`` or ``growlm``) and the reason for it, of a growlm model.

    ``arch``: ``auto`` (a stock architecture where one holds the model exactly, else growlm's modelling file),
    ``stock`` (a stock architecture: a paper-block model with an LM-head bias as the widened GPT-NeoX of
    ``widened_neox_checkpoint``; refuse what none holds) or ``growlm`` (always growlm's modelling file).
    """
    if arch not in ARCHS:
        raise ExportError(f"unknown arch {arch!r}; valid: {list(ARCHS)}")
    refusal = stock_refusal(model)
    if arch == "stock" and refusal and widens(model):
        config, tensors = widened_neox_checkpoint(model)
        return config, tensors, "stock", (f"{refusal}: wrote GPTNeoXForCausalLM widened to {config['hidden_size']} "
                                          f"channels (head size {widened_head_size(model.cfg.head_dim)}), the extra "
                                          "ones carrying the residual mean and the head bias (logits equal up to "
                                          "float rounding; a stock architecture, as vLLM and llama.cpp expect)")
    if arch == "stock" and refusal:
        raise ExportError(f"no stock architecture holds this model exactly: {refusal}; export with arch='growlm' "
                          "(growlm's own modelling file, loaded with trust_remote_code=True)")
    if arch == "growlm" or refusal:
        why = "asked for (--arch growlm)" if arch == "growlm" and not refusal else refusal
        config, tensors = growlm_checkpoint(model)
        stock = ("; --arch stock writes a widened GPTNeoXForCausalLM, a stock architecture"
                 if arch == "auto" and widens(model) else "")
        return config, tensors, "growlm", (f"{why}: wrote growlm's own modelling file (GrowLMForCausalLM; load with "
                                           f"trust_remote_code=True){stock}")
    style = model.cfg.block
    config, tensors = STOCK[style](model)
    return config, tensors, "stock", f"{STOCK_WHY[style]}: wrote the stock architecture (vLLM and llama.cpp read it)"


def write_tokenizer(vocab: str, out: Path, max_length: int) -> dict[str, int]:
    """Write tokenizer.json plus the files ``AutoTokenizer`` reads; returns the special token ids."""
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


def export_hf(path: str | Path, out: str | Path, dtype: str = "float32", force: bool = False,
              arch: str = "auto") -> Path:
    """Write model (config.json + model.safetensors, and growlm's modelling file where no stock architecture holds
    the model: see ``hf_checkpoint`` for ``arch``) and tokenizer of a growlm model, run or composed model to ``out``.

    ``out`` must be missing, empty or an earlier export (``force``: any directory; only the export's own
    files are written, nothing else is touched), and never the model's own directory.
    """
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")
    src = resolve_model_dir(path)
    out = Path(out)
    check_not_input(out, [src], "export directory")
    check_export_dir(out, force)
    earlier = (out / MARKER).is_file()  # an earlier export: its modelling files are growlm's own
    if (src / MARKER).is_file() and not (src / "model.json").exists():
        raise ExportError(f"{src} is already a Hugging Face export; copy the directory instead of exporting it again")
    meta = read_json(src / "model.json", "model description")
    model = load_model(src).eval()
    config, tensors, fmt, reason = hf_checkpoint(model, arch)
    block_size = model.cfg.block_size if isinstance(model, GrowLM) else config["max_position_embeddings"]
    vocab = (meta.get("substrate") or {}).get("vocab")
    if not vocab:
        raise CheckpointError(f"{src}/model.json names no substrate vocabulary; cannot write the tokenizer")
    with staged_files(out) as tmp:
        ids = write_tokenizer(vocab, tmp, block_size)
        config.update(ids, torch_dtype=dtype, dtype=dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps(ids, indent=1))
        save_file({k: v.detach().to(DTYPES[dtype]).contiguous().clone() for k, v in tensors.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if fmt == "growlm":
            for name in REMOTE_FILES:
                shutil.copyfile(REMOTE_DIR / name, tmp / name)
        experts = [model] if isinstance(model, GrowLM) else list(model.experts)
        (tmp / MARKER).write_text(json.dumps({
            "format": fmt, "architecture": config["architectures"][0], "reason": reason,
            "trust_remote_code": fmt == "growlm", "source": str(src), "kind": meta.get("kind"),
            "widened": fmt == "stock" and config["hidden_size"] != model.cfg.d_model,
            "method": getattr(model, "method", None),
            "block": experts[0].cfg.block if len(experts) == 1 else [e.cfg.block for e in experts],
            "depth": [len(e.blocks) for e in experts] if len(experts) > 1 else len(experts[0].blocks),
            "dtype": dtype, "substrate": meta.get("substrate"),
            "substrate_fingerprint": meta.get("substrate_fingerprint"), "stage": meta.get("stage"),
            "model": {k: v for k, v in meta.items() if k != "files"}}, indent=1))
    if fmt == "stock" and earlier:  # a stale modelling file would mislead whoever reads the directory
        for name in REMOTE_FILES:
            (out / name).unlink(missing_ok=True)
    return out


def verify_export(src: str | Path, out: str | Path, seq_len: int = 32, seed: int = 0) -> float:
    """Max |logit difference| between the growlm model and its export loaded by ``transformers`` (needs it)."""
    try:
        from transformers import AutoModelForCausalLM  # deferred: optional (the export extra)
    except ImportError:
        raise ImportError("verifying an export needs transformers: pip install 'growlm[hf]'") from None
    model = load_model(src).eval().float()
    remote = json.loads((Path(out) / MARKER).read_text()).get("trust_remote_code", False)
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, trust_remote_code=remote).eval()
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.vocab_size if isinstance(model, GrowLM) else model.vocab_size
    idx = torch.randint(0, vocab, (2, seq_len), generator=g)
    with torch.no_grad():
        return float((model(idx) - hf(idx).logits).abs().max())
