"""Tests for growlm.model.composition_methods: the registry of composition methods and what reads it."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from growlm.model import Config, GrowLM
from growlm.model.composition import ComposedLM, compose
from growlm.model.composition_methods import METHODS, CompositionMethod, method_class, names_where, register_method
from growlm.model.losses import IGNORE_INDEX
from growlm.model.saved import load_model, save_model
from growlm.substrate import Substrate


@pytest.fixture(scope="module")
def pair() -> list[GrowLM]:
    sub = Substrate.build("glyph", "compact", 32)
    out = []
    for seed, depth in ((1, 2), (2, 1)):
        torch.manual_seed(seed)
        cfg = Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_head=2, n_layer=depth)
        out.append(GrowLM(cfg, sub).eval())
    return out


class First(CompositionMethod):
    """A toy method: the first expert's logits, nothing to train."""

    name = "first-expert"
    summary = "the first expert alone"
    trainable = False

    def logits(self, m, hs, idx, caches, pos):
        return m.experts[0].head(hs[0])

    def token_nll(self, m, hs, idx, targets):
        logits = self.logits(m, hs, idx, None, 0)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="none").view(targets.shape)


@pytest.fixture()
def toy():
    register_method(First)
    yield First
    del METHODS[First.name]


def test_a_registered_method_composes_saves_and_reaches_the_cli_and_recipes(toy, pair, tmp_path):
    from growlm.commands import compose as cmd
    from growlm.training.compose_plan import load_compose_recipe

    x = torch.randint(0, pair[0].cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    m = compose(pair, "first-expert")
    with torch.no_grad():
        assert torch.equal(m(x), pair[0](x))
        ref = F.cross_entropy(pair[0](x[:, :-1]).flatten(0, 1), x[:, 1:].reshape(-1))
        assert m(x[:, :-1], x[:, 1:]).item() == pytest.approx(ref.item(), abs=1e-5)
    assert m.training_refusal() and "training-free" in m.training_refusal()
    with pytest.raises(ValueError, match="'first-expert' is training-free"):
        compose(pair, "first-expert", train_heads=True)
    with pytest.raises(ValueError, match="applies to method 'posterior' only"):
        compose(pair, "first-expert", window=2)
    save_model(m, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert isinstance(back, ComposedLM) and back.method == "first-expert"

    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())
    assert parser.parse_args(["compose", "a", "--method", "first-expert", "--out", "o"]).method == "first-expert"

    path = tmp_path / "c.toml"
    path.write_text('expert_recipe = "compose-expert"\n[experts]\na = { en = 1 }\nb = { ru = 1 }\n'
                    '[compose]\nmethods = ["average", "first-expert"]\n')
    assert load_compose_recipe(path).compose.methods == ["average", "first-expert"]
    path.write_text(path.read_text() + 'finetune = ["first-expert"]\n')
    with pytest.raises(ValueError, match=r"finetune names 'first-expert', which is training-free"):
        load_compose_recipe(path)


def test_without_registration_the_method_is_unknown_everywhere(pair):
    from growlm.commands import compose as cmd

    assert "first-expert" not in METHODS
    with pytest.raises(ValueError, match="valid methods are"):
        compose(pair, "first-expert")
    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["compose", "a", "--method", "first-expert", "--out", "o"])


def test_register_method_refuses_a_taken_or_missing_name():
    class Again(CompositionMethod):
        name = "average"

    class Nameless(CompositionMethod):
        pass

    for cls in (Again, Nameless):
        with pytest.raises(ValueError, match="needs a new name"):
            register_method(cls)
    assert method_class("average").__name__ == "Average"


def test_each_method_declares_its_rules():
    assert list(METHODS) == ["average", "prob", "adapter", "router", "posterior"]
    assert names_where("windowed") == ["posterior"] and names_where("trainable", False) == ["posterior"]
    assert names_where("whole_text") == ["posterior"]
    assert all(cls.summary for cls in METHODS.values())


@pytest.mark.parametrize("method, keys", [
    ("average", set()), ("prob", set()), ("posterior", set()),
    ("adapter", {"adapter.proj", "adapter.gate.weight", "adapter.gate.bias", "adapter.scale", "adapter.bias"}),
    ("router", {"router.weight", "router.bias"}),
])
def test_saved_weights_keep_their_names(pair, method, keys):
    """model.safetensors of composed models saved before the registry load unchanged: the same keys."""
    m = compose(pair, method)
    assert {k for k in m.state_dict() if not k.startswith("experts.")} == keys
    assert m.param_counts()["fusion"] == sum(m.state_dict()[k].numel() for k in keys)
