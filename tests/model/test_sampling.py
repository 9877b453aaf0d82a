"""``growlm generate``: streaming sampling from runs, stages, models and composed models."""

from __future__ import annotations

import io

import pytest
import torch

from growlm.cli import main as cli_main
from growlm.model import Config, GrowLM
from growlm.model.composition import compose
from growlm.model.sampling import _held_back, stream
from growlm.substrate import Substrate, Tokenizer
from growlm.training.run import grow

QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load("compact")


@pytest.fixture(scope="module")
def model(tok) -> GrowLM:
    torch.manual_seed(0)
    sub = Substrate.build("glyph", "compact", 32)
    return GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_layer=2), sub).eval()


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A finished tiny growth run: stage 0 (depth 1), a LoRA stage (depth 1), stage 2 (depth 2)."""
    from growlm.training.plan import Recipe

    recipe = Recipe.from_dict({
        "model": {"preset": "tiny", "d_model": 32, "n_head": 2, "block_size": 32},
        "substrate": {"kind": "glyph", "vocab": "compact"}, "data": {"path": str(tiny_data)},
        "train": {"batch_size": 4, "seq_len": 32, "val_tokens": 256, "ckpt_every": 0, "val_every": 0},
        "stages": [{"name": "g1", "add": 1, "steps": 2}, {"name": "lora", "train_newest": 0, "steps": 2,
                                                          "lora": {"rank": 2}}, {"name": "g2", "add": 1, "steps": 2}]})
    out = tmp_path_factory.mktemp("gen") / "run"
    grow(recipe, out, **QUIET)
    return out


def test_greedy_stream_equals_model_generate(model, tok):
    prompt = "The river"
    text = "".join(stream(model, tok, prompt, max_tokens=12, temperature=0))
    ids = torch.tensor([tok.encode(prompt)])
    ref = model.generate(ids, 12, temperature=0)[0, ids.shape[1]:].tolist()
    if tok.eos_id in ref:
        ref = ref[:ref.index(tok.eos_id)]
    assert text == tok.decode(ref)


def test_seed_reproduces_and_pieces_stream(model, tok):
    a = list(stream(model, tok, "abc", max_tokens=10, temperature=1.0, top_k=50, seed=3))
    b = list(stream(model, tok, "abc", max_tokens=10, temperature=1.0, top_k=50, seed=3))
    c = list(stream(model, tok, "abc", max_tokens=10, temperature=1.0, top_k=50, seed=4))
    assert a == b and "".join(a) != "".join(c)
    assert len(a) > 1  # yielded as sampled, not in one piece at the end


def test_stop_string_ends_before_it(model, tok):
    full = "".join(stream(model, tok, "x", max_tokens=20, temperature=0))
    assert len(full) >= 6
    stop = full[3:5]
    first = full.find(stop)
    out = "".join(stream(model, tok, "x", max_tokens=20, temperature=0, stop=["never-appears", stop]))
    assert out == full[:first]


def test_held_back_keeps_a_possible_stop_start():
    assert _held_back("hello wor", ["world"]) == 3
    assert _held_back("hello", ["world"]) == 0
    assert _held_back("ab", ["b", "abc"]) == 2


def test_composed_model_streams(model, tok):
    torch.manual_seed(1)
    other = GrowLM(model.cfg, None)
    other.load_state_dict(model.state_dict())
    other.embedding.copy_(model.embedding)
    other.substrate_fingerprint, other.substrate_spec = model.substrate_fingerprint, model.substrate_spec
    avg = compose([model, other], "average").eval()
    # the average of two copies is the model itself: the same greedy text
    assert "".join(stream(avg, tok, "The", max_tokens=8, temperature=0)) == \
        "".join(stream(model, tok, "The", max_tokens=8, temperature=0))


def test_cli_stages_file_stdin_and_errors(run, tmp_path, capsys, monkeypatch):
    args = ["--max-tokens", "6", "--seed", "1", "--temperature", "0"]
    assert cli_main(["generate", str(run), "Hello", "--stage", "0", *args]) == 0
    out = capsys.readouterr()
    assert "stage-00: depth 1" in out.err and out.out.strip()
    assert cli_main(["generate", str(run), "Hello", "--stage", "2", *args]) == 0
    out = capsys.readouterr()
    assert "stage-02: depth 2" in out.err
    assert cli_main(["generate", str(run), "Hello", *args]) == 0  # the final model = the last stage
    assert capsys.readouterr().out == out.out
    (tmp_path / "p.txt").write_text("Hello", encoding="utf-8")
    assert cli_main(["generate", str(run), "--file", str(tmp_path / "p.txt"), *args]) == 0
    assert capsys.readouterr().out == out.out
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello"))
    assert cli_main(["generate", str(run), *args]) == 0
    assert capsys.readouterr().out == out.out
    assert cli_main(["generate", str(run), "Hello", "--stage", "7"]) == 2
    assert "has stages [0, 1, 2]" in capsys.readouterr().err
    assert cli_main(["generate", str(run), "Hello", "--top-p", "0"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err


def test_cli_composed_model(run, tmp_path, capsys):
    assert cli_main(["compose", str(run), str(run / "stages" / "stage-00"), "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert cli_main(["generate", str(tmp_path / "c"), "Hi", "--max-tokens", "4", "--seed", "0"]) == 0
    assert "composed (average) of 2 experts" in capsys.readouterr().err


class Scripted(torch.nn.Module):
    """A 'model' whose greedy continuation is a fixed id sequence (to test decoding, not sampling)."""

    def __init__(self, ids: list[int], vocab: int):
        super().__init__()
        self.ids, self.vocab, self.w = ids, vocab, torch.nn.Parameter(torch.zeros(1))
        self.i = 0

    def new_caches(self, batch, max_len):
        return None

    def forward(self, idx, caches=None, pos=0):
        logits = torch.zeros(1, idx.shape[1], self.vocab)
        logits[0, -1, self.ids[min(self.i, len(self.ids) - 1)]] = 1.0
        self.i += 1
        return logits


def test_byte_fallback_characters_stream_whole(tok):
    ids = tok.encode("a😀b")  # the emoji is four byte tokens in the compact vocabulary
    assert len(ids) > 3
    pieces = list(stream(Scripted(ids + [tok.eos_id], tok.vocab_size), tok, "x", max_tokens=20, temperature=0))
    assert "".join(pieces) == "a😀b" and not any("\ufffd" in p for p in pieces)
    assert pieces[:2] == ["a", "😀"]
