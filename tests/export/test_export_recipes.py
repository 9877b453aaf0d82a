"""Every shipped recipe's model, and every composition method, leaves growlm and comes back.

Each recipe shape is a tiny trained run: the recipe's own [model] and [substrate] (preset, head bias, trainable
embedding, substrate kind) at d_model 32 on the compact vocabulary, grown through the real runner. The export is
read by ``transformers`` (logits within 1e-5 in float32, same greedy ids, same tokenizer ids) and read back by
growlm (``load_model(OUT)``: the same logits); ``--arch stock`` writes each as a widened GPT-NeoX, read the same way
(read back within 1e-5).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

import growlm
from growlm.export.hf import export_hf
from growlm.model.composition import METHODS, compose
from growlm.model.saved import load_model, save_model
from growlm.substrate import Tokenizer
from growlm.training.plan import Recipe
from growlm.training.run import grow

transformers = pytest.importorskip("transformers")

RECIPES = Path(growlm.__file__).parent / "recipes"
TINY = {"d_model": 32, "n_head": 2, "block_size": 32}
TEXTS = ["The history of the city", "Привет, мир.", "你好，世界。"]


def _shapes() -> dict[str, list[str]]:
    """Distinct tiny shapes of the shipped growth recipes -> the recipes that have them."""
    shapes: dict[str, list[str]] = {}
    for f in sorted(RECIPES.glob("*.toml")):
        raw = tomllib.loads(f.read_text())
        if "model" not in raw:  # a composition study: its experts are recipes of their own
            continue
        key = json.dumps([{**raw["model"], **TINY}, {**raw["substrate"], "vocab": "compact"}], sort_keys=True)
        shapes.setdefault(key, []).append(f.stem)
    return shapes


SHAPES = _shapes()


def tiny_run(key: str, data: Path, out: Path, seed: int = 0, mixture: str = "en_ru") -> Path:
    model, substrate = json.loads(key)
    raw = {"name": "tiny-export", "model": model, "substrate": substrate, "data": {"path": str(data)},
           "train": {"batch_size": 2, "seq_len": 16, "lr": 3e-3, "warmup_steps": 1, "val_tokens": 64, "val_every": 0,
                     "ckpt_every": 0, "log_every": 100, "seed": seed},
           "stages": [{"name": "g1", "add": 1, "steps": 3, "mixture": mixture},
                      {"name": "g2", "add": 1, "steps": 3, "mixture": mixture}]}
    raw["data"]["mixtures"] = {"en_ru": {"en": 1, "ru": 1}, "en_zh": {"en": 1, "zh": 1}}
    grow(Recipe.from_dict(raw), out, progress=False, log=lambda *a: None)
    return out


def ids() -> torch.Tensor:
    return torch.randint(0, 16384, (2, 24), generator=torch.Generator().manual_seed(3))


def check_export(model, out: Path, back_within: float = 0.0) -> None:
    """transformers gives growlm's logits, greedy ids and token ids; growlm reads the export back exactly (a widened
    stock export: within ``back_within``)."""
    info = json.loads((out / "growlm_export.json").read_text())
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=info["trust_remote_code"]).eval()
    idx = ids()
    with torch.no_grad():
        ours = model(idx)
        diff = (hf(idx).logits - ours).abs().max().item()
        assert diff <= 1e-5, diff
        prompt = idx[:1, :6]
        greedy = model.generate(prompt, 8, temperature=0)
        assert hf.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False).tolist() == greedy.tolist()
        back = load_model(out).eval()
        assert type(back) is type(model)
        assert (back(idx) - ours).abs().max().item() <= back_within
    tok, hf_tok = Tokenizer.load("compact"), transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == tok.encode(text)
        assert hf_tok.decode(greedy[0].tolist()) == tok.decode(greedy[0].tolist())


@pytest.mark.parametrize("key", list(SHAPES), ids=["+".join(v) for v in SHAPES.values()])
def test_every_shipped_recipe_exports(key, tiny_data, tmp_path):
    run = tiny_run(key, tiny_data, tmp_path / "run")
    model = load_model(run).eval()
    out = export_hf(run, tmp_path / "hf")
    info = json.loads((out / "growlm_export.json").read_text())
    # every shipped recipe trains an LM-head bias (the paper's), which no stock architecture has
    assert model.cfg.head_bias and info["format"] == "growlm" and "bias" in info["reason"]
    assert {"configuration_growlm.py", "modeling_growlm.py"} <= {p.name for p in out.iterdir()}
    check_export(model, out)
    # --arch stock: the paper block with its head bias as a widened GPTNeoXForCausalLM, a stock architecture
    stock = export_hf(run, tmp_path / "stock", arch="stock")
    info = json.loads((stock / "growlm_export.json").read_text())
    assert (info["format"], info["architecture"], info["widened"]) == ("stock", "GPTNeoXForCausalLM", True)
    assert not (stock / "modeling_growlm.py").exists()
    check_export(model, stock, back_within=1e-5)


@pytest.fixture(scope="module")
def experts(tiny_data, tmp_path_factory):
    """Two tiny compose-expert runs (English+Russian, English+Chinese)."""
    key = next(k for k, v in SHAPES.items() if "compose-expert" in v)
    root = tmp_path_factory.mktemp("experts")
    return [tiny_run(key, tiny_data, root / m, seed=i, mixture=m) for i, m in enumerate(("en_ru", "en_zh"))]


@pytest.mark.parametrize("method", METHODS)
def test_every_composition_method_exports(method, experts, tmp_path):
    kw = {"window": 4} if method == "posterior" else {}
    model = compose([load_model(e) for e in experts], method, [0.3, 0.7], **kw).eval()
    fusion = model.adapter or model.router
    if fusion is not None:  # as after a fine-tune: the fusion no longer equals the average
        torch.manual_seed(0)
        with torch.no_grad():
            for p in fusion.parameters():
                p.add_(0.05 * torch.randn_like(p))
    save_model(model, tmp_path / "composed")
    out = export_hf(tmp_path / "composed", tmp_path / "hf")
    info = json.loads((out / "growlm_export.json").read_text())
    assert info["format"] == "growlm" and info["method"] == method and "composed" in info["reason"]
    check_export(model, out)


def test_a_composite_of_experts_with_their_own_embeddings_exports(tiny_data, tmp_path):
    """Experts that trained their own token tables (the trainable-embedding recipe, composed with own_embeddings):
    transformers and growlm read the export back with each expert's own table."""
    key = next(k for k, v in SHAPES.items() if "paper-v3-9layer-trainable" in v)
    runs = [tiny_run(key, tiny_data, tmp_path / m, seed=i, mixture=m) for i, m in enumerate(("en_ru", "en_zh"))]
    experts = [load_model(r) for r in runs]
    assert not torch.equal(experts[0].embedding, experts[1].embedding)  # two different trained tables
    model = compose(experts, "average", [0.3, 0.7], own_embeddings=True).eval()
    save_model(model, tmp_path / "composed")
    out = export_hf(tmp_path / "composed", tmp_path / "hf")
    check_export(model, out)
    assert load_model(out).own_embeddings
