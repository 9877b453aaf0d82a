"""The way back: a directory ``growlm export`` wrote, read as a growlm model (same logits).

``growlm_export.json`` holds the growlm model description; the tensors are mapped back from the stock layout
(Llama, GPT-NeoX) or growlm's own (``experts.i.*``, ``embed_tokens.weight``). The frozen input embedding must
still be the substrate's (the description's fingerprint is checked as for any growlm model), and a tensor the
growlm model has no slot for (a bias growlm exported as zeros) must still be zero: nothing is dropped silently.
Registered with ``growlm.model.saved.register_format``, so ``load_model``, ``growlm eval``, ``generate`` and
``compose`` accept an export directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from growlm.export.widened import check_widened, narrow
from growlm.model.model import Config
from growlm.model.saved import KINDS, CheckpointError, read_json, register_format
from growlm.substrate import Substrate

MARKER = "growlm_export.json"


def read_description(d: Path) -> dict:
    """The growlm model description an export recorded (what the source's model.json held)."""
    info = read_json(Path(d) / MARKER, "export description")
    meta = info.get("model")
    if not isinstance(meta, dict) or "kind" not in meta:
        raise CheckpointError(f"{d}/{MARKER} holds no growlm model description (written by an older growlm "
                              "export?); export the model again to read it back")
    return meta


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards a ``model.safetensors.index.json`` names, as float32."""
    index = d / "model.safetensors.index.json"
    files = ([d / "model.safetensors"] if not index.is_file() else
             sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()}))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"weights file {f} of the export {d} does not exist")
        try:
            out.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"weights file {f} of the export {d} is corrupt or truncated ({e})") from None
    return {k: v.float() for k, v in out.items()}


def _take(t: dict[str, torch.Tensor], name: str, d: Path) -> torch.Tensor:
    if name not in t:
        raise CheckpointError(f"the export {d} has no tensor {name!r}; it does not fit its growlm_export.json")
    return t.pop(name)


def _zero(t: torch.Tensor, name: str, d: Path) -> None:
    if bool(t.abs().max() > 0):
        raise CheckpointError(f"the export {d} has a non-zero {name!r} that the growlm model has no parameter for "
                              "(growlm exported it as zeros): it was changed after export, and reading it back "
                              "would change the logits")


def _from_llama(t: dict, cfg: Config, d: Path) -> dict[str, torch.Tensor]:
    s = {"norm.weight": _take(t, "model.norm.weight", d), "head.weight": _take(t, "lm_head.weight", d)}
    if cfg.head_bias:
        s["head.bias"] = torch.zeros(cfg.vocab_size)
    names = {"self_attn.o_proj": "attn.proj", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
             "mlp.down_proj": "mlp.proj"}
    for i in range(cfg.n_layer):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        s[q + "attn.qkv.weight"] = torch.cat([_take(t, p + f"self_attn.{x}_proj.weight", d) for x in "qkv"])
        s[q + "norm1.weight"] = _take(t, p + "input_layernorm.weight", d)
        s[q + "norm2.weight"] = _take(t, p + "post_attention_layernorm.weight", d)
        for hf, ours in names.items():
            s[q + ours + ".weight"] = _take(t, p + hf + ".weight", d)
        if cfg.bias:
            s[q + "attn.qkv.bias"] = torch.cat([_take(t, p + f"self_attn.{x}_proj.bias", d) for x in "qkv"])
            for hf, ours in names.items():
                s[q + ours + ".bias"] = _take(t, p + hf + ".bias", d)
    return s


def _from_neox(t: dict, cfg: Config, d: Path) -> dict[str, torch.Tensor]:
    H, D = cfg.n_head, cfg.head_dim

    def stacked(x: torch.Tensor) -> torch.Tensor:  # rows [H, 3, D] -> [3, H, D]
        return x.reshape(H, 3, D, *x.shape[1:]).transpose(0, 1).reshape(x.shape)

    def norm(src: str, dst: str) -> None:
        s[dst + ".weight"] = _take(t, src + ".weight", d)
        b = _take(t, src + ".bias", d)
        if cfg.bias and cfg.norm_bias:
            s[dst + ".bias"] = b
        else:
            _zero(b, src + ".bias", d)

    def linear(src: str, dst: str, fix=lambda x: x) -> None:
        s[dst + ".weight"] = fix(_take(t, src + ".weight", d))
        b = fix(_take(t, src + ".bias", d))
        if cfg.bias:
            s[dst + ".bias"] = b
        else:
            _zero(b, src + ".bias", d)

    s = {"head.weight": _take(t, "embed_out.weight", d)}
    head_bias = t.pop("embed_out.bias", None)  # a widened export's (``widened.narrow``)
    if cfg.head_bias:
        s["head.bias"] = torch.zeros(cfg.vocab_size) if head_bias is None else head_bias
    elif head_bias is not None:
        _zero(head_bias, "embed_out.bias", d)
    norm("gpt_neox.final_layer_norm", "norm")
    for i in range(cfg.n_layer):
        p, q = f"gpt_neox.layers.{i}.", f"blocks.{i}."
        norm(p + "input_layernorm", q + "norm1")
        norm(p + "post_attention_layernorm", q + "norm2")
        linear(p + "attention.query_key_value", q + "attn.qkv", stacked)
        linear(p + "attention.dense", q + "attn.proj")
        linear(p + "mlp.dense_h_to_4h", q + "mlp.fc")
        linear(p + "mlp.dense_4h_to_h", q + "mlp.proj")
    return s


EMBEDDING = {"LlamaForCausalLM": "model.embed_tokens.weight", "GPTNeoXForCausalLM": "gpt_neox.embed_in.weight",
             "GrowLMForCausalLM": "embed_tokens.weight"}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_embedding(emb: torch.Tensor, substrate: Substrate, dtype: str, what: str, d: Path) -> None:
    """The exported embedding is the substrate's matrix (as rounded to the export's dtype)."""
    ref = substrate.matrix.to(DTYPES.get(dtype, torch.float32)).float()
    if not torch.equal(emb, ref):
        diff = float((emb - ref).abs().max()) if emb.shape == ref.shape else None
        raise CheckpointError(f"the input embedding of the export {d} ({what}) is not the substrate's "
                              f"(shape {tuple(emb.shape)}, max |difference| {diff}): it was changed after export, "
                              "and a growlm model keeps its substrate frozen")


def load_export(d: str | Path, substrate: Substrate | None = None) -> torch.nn.Module:
    """A growlm model (``GrowLM`` or ``ComposedLM``) from a directory that ``growlm export`` wrote."""
    d = Path(d)
    info = read_json(d / MARKER, "export description")
    meta = read_description(d)
    arch = info.get("architecture")
    if arch not in EMBEDDING:
        raise CheckpointError(f"{d}/{MARKER}: unknown architecture {arch!r}; readable: {sorted(EMBEDDING)}")
    cls = KINDS.get(meta["kind"])
    if cls is None:
        raise CheckpointError(f"{d}: unknown model kind {meta['kind']!r}; known kinds: {sorted(KINDS)}")
    t = _read_weights(d)
    stored = None
    if info.get("widened") and arch == "GPTNeoXForCausalLM":  # the plain layout first; stored is checked at the end
        stored, t = t, narrow(t, Config.from_dict(meta["config"]))
    if substrate is None:
        substrate = Substrate.from_spec(meta["substrate"])
    emb = _take(t, EMBEDDING[arch], d)
    experts = meta["experts"] if meta["kind"] == "composed" else [meta]
    if arch == "GrowLMForCausalLM":
        state = t
        if meta["kind"] != "composed":
            state = {k.removeprefix("experts.0."): v for k, v in t.items()}
    else:
        cfg = Config.from_dict(meta["config"])
        state = (_from_llama if arch == "LlamaForCausalLM" else _from_neox)(t, cfg, d)
        if t:
            raise CheckpointError(f"the export {d} holds tensors the growlm model has no place for: {sorted(t)[:5]}")
    composed = meta["kind"] == "composed"
    if (experts[0].get("config") or {}).get("trainable_embedding", False):
        state["experts.0.embedding" if composed else "embedding"] = emb
    else:
        _check_embedding(emb, substrate, info.get("dtype", "float32"), "expert 0" if composed else "embedding", d)
    model = cls.from_saved(d, meta, state, substrate)
    if stored is not None:
        check_widened(model, stored, DTYPES.get(info.get("dtype", "float32"), torch.float32), d)
    return model


register_format(MARKER, read_description, load_export)
