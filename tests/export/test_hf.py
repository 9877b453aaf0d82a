"""Hugging Face export: transformers runs the exported model with the same logits and token ids."""

import json

import pytest
import torch

from growlm.export.hf import ExportError, export_hf
from growlm.model import Config, GrowLM
from growlm.model.saved import save_model
from growlm.substrate import Substrate, Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello, world! The cat sat on the mat.", "Привет, мир. Съешь же ещё этих мягких булок.",
         "你好，世界。今天天气很好。", "mixed: naïve café — 東京 🙂 tabs\tand\nnewlines  ", ""]


@pytest.fixture(scope="module")
def substrate():
    return Substrate.build("glyph", "compact", 64)


def make_model(substrate, tmp_path, style: str, **overrides):
    """A tiny model with every weight (norms and biases included) perturbed, saved as a run dir."""
    torch.manual_seed(0)
    cfg = Config.from_preset("tiny", block=style, n_layer=3, n_head=4, **overrides)
    m = GrowLM(cfg, substrate)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if m.head.bias is not None:
            m.head.bias.zero_()
    run = tmp_path / f"run-{style}"
    save_model(m, run / "model")
    return m.eval(), run


@pytest.mark.parametrize("style,overrides,arch", [
    ("llama", dict(bias=False, head_bias=False), "LlamaForCausalLM"),
    ("llama", dict(bias=True, head_bias=False), "LlamaForCausalLM"),
    ("paper", dict(), "GPTNeoXForCausalLM"),  # head bias present but zero
    ("paper", dict(bias=False, head_bias=False), "GPTNeoXForCausalLM"),
])
def test_logits_match_transformers(substrate, tmp_path, style, overrides, arch):
    model, run = make_model(substrate, tmp_path, style, **overrides)
    out = export_hf(run, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [arch] and cfg["tie_word_embeddings"] is False
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == arch
    torch.testing.assert_close(hf.get_input_embeddings().weight, model.embedding, rtol=0, atol=0)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(idx).logits - model(idx)).abs().max().item()
    assert diff == 0.0, diff  # the README: 0.0 in float32
    # incremental decoding (KV caches on both sides) picks the same greedy tokens
    with torch.no_grad():
        ours = model.generate(idx[:1, :8], 6, temperature=0)
        theirs = hf.generate(idx[:1, :8], max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert ours.tolist() == theirs.tolist()


def test_tokenizer_round_trip(substrate, tmp_path):
    _, run = make_model(substrate, tmp_path, "llama", bias=False, head_bias=False)
    out = export_hf(run, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.load("compact")
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<|bos|>", "<|eos|>", "<|pad|>",
                                                                           "<|unk|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ours.bos_id, ours.eos_id, ours.pad_id)
    for text in TEXTS:
        ids = ours.encode(text)
        assert tok(text)["input_ids"] == ids
        assert tok.decode(ids) == text


@pytest.mark.parametrize("vocab", ["bvv241-2-3", "bvv241-abs"])
def test_paper_vocabulary_tokenizers(vocab, tmp_path):
    """The paper recipes' vocabularies (the author's ids) leave growlm with the same ids as growlm's tokenizer."""
    from growlm.export.hf import write_tokenizer

    write_tokenizer(vocab, tmp_path, 1024)
    tok, ours = transformers.AutoTokenizer.from_pretrained(tmp_path), Tokenizer.load(vocab)
    for text in TEXTS:
        ids = ours.encode(text)
        assert tok(text)["input_ids"] == ids
        assert tok.decode(ids) == text


def test_nonzero_head_bias_goes_to_growlms_modelling_file(substrate, tmp_path):
    model, run = make_model(substrate, tmp_path, "llama", head_bias=True)
    with torch.no_grad():
        model.head.bias.add_(0.01)
    save_model(model, run / "model")
    with pytest.raises(ExportError, match="no stock architecture holds this model exactly: the LM head has a bias"):
        export_hf(run, tmp_path / "hf", arch="stock")  # RMSNorm has no bias to carry it: no widened Llama
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    model, run = make_model(substrate, tmp_path, "paper")
    with torch.no_grad():
        model.head.bias.add_(0.01)
    save_model(model, run / "model")
    out = export_hf(run, tmp_path / "hf")
    info = json.loads((out / "growlm_export.json").read_text())
    assert (info["format"], info["architecture"], info["trust_remote_code"]) == ("growlm", "GrowLMForCausalLM", True)
    assert "LM head has a bias" in info["reason"]
    assert "--arch stock writes a widened GPTNeoXForCausalLM" in info["reason"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_growlm.GrowLMForCausalLM"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max().item() <= 1e-5


def test_growlm_file_on_request_and_left_padding(substrate, tmp_path):
    """--arch growlm for a model a stock architecture holds; a left-padded batch gives each row's own logits."""
    model, run = make_model(substrate, tmp_path, "llama", bias=False, head_bias=False)
    out = export_hf(run, tmp_path / "hf", arch="growlm")
    assert json.loads((out / "growlm_export.json").read_text())["reason"].startswith("asked for")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    idx = torch.randint(0, model.cfg.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), idx], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
    with torch.no_grad():
        got = hf(padded, attention_mask=mask).logits[:, 3:]
        assert (got - model(idx)).abs().max().item() <= 1e-5
    export_hf(run, out)  # the same directory again, now stock: growlm's modelling files do not linger
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not (out / "modeling_growlm.py").exists() and not (out / "configuration_growlm.py").exists()


def test_changed_export_is_not_read_back_silently(substrate, tmp_path):
    from safetensors.torch import load_file, save_file

    from growlm.model.saved import CheckpointError, load_model

    model, run = make_model(substrate, tmp_path, "paper", bias=False, head_bias=False)
    out = export_hf(run, tmp_path / "hf")
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(load_model(out)(idx), model(idx))  # a stock NeoX export reads back exactly
    t = load_file(str(out / "model.safetensors"))
    t["gpt_neox.layers.0.attention.dense.bias"] += 0.5  # growlm exported this bias as zeros: it has none
    save_file(t, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="non-zero 'gpt_neox.layers.0.attention.dense.bias'"):
        load_model(out)
    t["gpt_neox.layers.0.attention.dense.bias"] -= 0.5
    t["gpt_neox.embed_in.weight"] += 0.5
    save_file(t, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not the substrate's"):
        load_model(out)


def test_cli_export_verify(substrate, tmp_path, capsys):
    import argparse

    from growlm.commands import export as cmd

    _, run = make_model(substrate, tmp_path, "paper", head_bias=False)
    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", str(run), str(tmp_path / "hf"), "--verify"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architecture"] == "GPTNeoXForCausalLM" and out["depth"] == 3
    assert out["format"] == "stock" and "exactly GPTNeoXForCausalLM" in out["why"]
    assert out["max_abs_logit_diff"] == 0.0


@pytest.mark.parametrize("overrides", [dict(), dict(bias=False, norm_bias=False)])
@pytest.mark.parametrize("dtype,within", [("float32", 1e-5), ("bfloat16", 0.1)])
def test_head_bias_as_widened_neox(substrate, tmp_path, overrides, dtype, within):
    """--arch stock for the paper block with an LM-head bias: GPTNeoXForCausalLM with each head widened to a multiple
    of 8, with growlm's logits up to rounding (float32), the same greedy ids, and read back."""
    from growlm.model.saved import load_model

    model, run = make_model(substrate, tmp_path, "paper", **overrides)
    with torch.no_grad():
        model.head.bias.copy_(0.3 * torch.randn(model.cfg.vocab_size, generator=torch.Generator().manual_seed(4)))
    save_model(model, run / "model")
    out = export_hf(run, tmp_path / "hf", arch="stock", dtype=dtype)
    info = json.loads((out / "growlm_export.json").read_text())
    assert (info["format"], info["trust_remote_code"], info["widened"]) == ("stock", False, True)
    assert "widened to 96 channels (head size 24)" in info["reason"]  # 4 heads of 16 -> 24: 64 + 4 x 8 channels
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["architectures"], cfg["hidden_size"], cfg["num_attention_heads"]) == (["GPTNeoXForCausalLM"], 96, 4)
    assert int(24 * cfg["rotary_pct"]) == 16  # RoPE on the first 16 dimensions of each head, as growlm's
    assert not (out / "modeling_growlm.py").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)
        assert (hf(idx).logits - ours).abs().max().item() <= within
        assert (load_model(out)(idx) - ours).abs().max().item() <= within
        if dtype == "float32":
            greedy = model.generate(idx[:1, :8], 6, temperature=0)
            theirs = hf.generate(idx[:1, :8], max_new_tokens=6, do_sample=False, min_new_tokens=6)
            assert theirs.tolist() == greedy.tolist()


@pytest.mark.parametrize("name,index", [("gpt_neox.final_layer_norm.bias", (65,)),
                                        ("gpt_neox.layers.1.attention.dense.weight", (66, 3)),
                                        ("gpt_neox.embed_in.weight", (5, 64)),
                                        ("gpt_neox.layers.0.attention.query_key_value.weight", (16, 2))])  # q extra
def test_a_changed_widened_export_is_not_read_back(substrate, tmp_path, name, index):
    """An extra channel (the bias's carrier, a mean row, a zero query dimension) changed after export: reading the
    export back stops with the tensor's name."""
    from safetensors.torch import load_file, save_file

    from growlm.model.saved import CheckpointError, load_model

    model, run = make_model(substrate, tmp_path, "paper")
    with torch.no_grad():
        model.head.bias.add_(0.1)
    save_model(model, run / "model")
    out = export_hf(run, tmp_path / "hf", arch="stock")
    t = load_file(str(out / "model.safetensors"))
    t[name][index] += 0.5
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"its '{name}' is not what widening its own weights gives"):
        load_model(out)
