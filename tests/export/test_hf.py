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


def test_nonzero_head_bias_is_refused(substrate, tmp_path):
    model, run = make_model(substrate, tmp_path, "paper")
    with torch.no_grad():
        model.head.bias.add_(0.01)
    save_model(model, run / "model")
    with pytest.raises(ExportError, match="head_bias=False"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_composed_is_refused(tmp_path):
    d = tmp_path / "composed"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"format": "growlm-model-1", "kind": "composed"}))
    with pytest.raises(ExportError, match="composed"):
        export_hf(d, tmp_path / "hf")


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
    assert out["max_abs_logit_diff"] == 0.0
