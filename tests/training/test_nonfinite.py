"""Nothing silent: non-finite settings are refused when a recipe is read, and a non-finite loss, gradient norm or
weight stops a run (naming stage and step, keeping the last good checkpoint, writing no model) or skips the batch."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
import torch
from safetensors.torch import load_file

from growlm.model import GrowLM
from growlm.training.checkpoint import find_checkpoint
from growlm.training.loop import Hooks, Loop, NonFiniteError, NonFiniteWarning, RunState
from growlm.training.plan import Recipe, TrainSpec
from growlm.training.run import grow

QUIET = dict(progress=False, log=lambda *a: None)


def with_setting(path, section: str, key: str, value):
    raw = tomllib.loads(path.read_text())
    target = raw
    for part in section.split("."):
        target = target[part]
    target[key] = value
    return raw


@pytest.mark.parametrize("section,key", [("train", "lr"), ("train", "grad_clip"), ("model", "dropout"),
                                         ("data.mixtures.en_ru", "en")])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_settings_are_refused_when_the_recipe_is_read(tiny_recipe, section, key, value):
    with pytest.raises(ValueError, match=rf"{key}.*(finite|nan|inf)"):
        Recipe.from_dict(with_setting(tiny_recipe(), section, key, value))


def test_seq_len_longer_than_block_size_is_refused(tiny_recipe):
    with pytest.raises(ValueError, match="seq_len = 64 is longer than \\[model\\] block_size = 32"):
        Recipe.from_dict(with_setting(tiny_recipe(), "train", "seq_len", 64))


@pytest.fixture()
def inject_nan(monkeypatch):
    """``inject_nan({7, ...})``: the loss of those training forward calls (1-based, in training mode) is NaN."""
    real = GrowLM.forward

    def arm(calls: set[int]) -> dict:
        seen = {"n": 0}

        def forward(self, *a, **k):
            out = real(self, *a, **k)
            if self.training and torch.is_grad_enabled():
                seen["n"] += 1
                if seen["n"] in calls:
                    return out * float("nan")
            return out

        monkeypatch.setattr(GrowLM, "forward", forward)
        return seen

    return arm


def test_a_nan_loss_stops_the_run_keeps_the_checkpoint_and_resumes(tiny_recipe, tmp_path, inject_nan, monkeypatch):
    recipe = tiny_recipe(steps=4, ckpt_every=2)
    ref = tmp_path / "ref"
    grow(recipe, ref, **QUIET)
    run = tmp_path / "run"
    inject_nan({7})  # stage 1 (the LoRA phase), its step 3; the checkpoint of global step 6 is the last good one
    with pytest.raises(NonFiniteError, match=r"stage 1, step 3 \(global step 7\).*loss is nan.*checkpoint is kept"):
        grow(recipe, run, **QUIET)
    assert not (run / "model").exists()
    ckpt = find_checkpoint(run)
    assert ckpt is not None and json.loads((ckpt / "state.json").read_text())["run"]["step"] == 6
    assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())
    monkeypatch.undo()
    grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)
    a, b = load_file(str(ref / "model" / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if nothing had happened


def test_skip_bad_batches_skips_up_to_n_then_stops(tiny_recipe, tmp_path, inject_nan):
    path = tiny_recipe(steps=3, ckpt_every=0)
    path.write_text(path.read_text().replace("[train]\n", "[train]\nskip_bad_batches = 1\n"))
    inject_nan({2})
    with pytest.warns(NonFiniteWarning, match=r"stage 0, step 2 .*batch skipped \(1 of"):
        grow(path, tmp_path / "one", **QUIET)
    model = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in model.values())
    inject_nan({2, 5})  # the second bad batch of the run, in another stage: one skip allowed per run, not per stage
    with pytest.warns(NonFiniteWarning), pytest.raises(NonFiniteError, match=r"stage 1, step 1 \(global step 4\)"):
        grow(path, tmp_path / "two", **QUIET)
    assert not (tmp_path / "two" / "model").exists()


def test_weights_that_overflow_are_never_checkpointed():
    model = torch.nn.Linear(4, 4)
    wrapped = torch.nn.Module()
    wrapped.lin = model
    wrapped.forward = lambda x, y: ((model(x) - y) ** 2).mean()
    train = TrainSpec(batch_size=2, seq_len=4, lr=1e-3, grad_clip=0.0, log_every=1, val_every=0, ckpt_every=1)
    saved = []
    opt = torch.optim.SGD(model.parameters(), lr=1e38)  # finite, but the step overflows float32
    with pytest.raises(NonFiniteError, match="no longer finite before this checkpoint"):
        Loop(wrapped, train).run(opt, 3, RunState(), batches=lambda: (torch.ones(2, 4) * 100, torch.zeros(2, 4)),
                                 lr_of=lambda s: 1e38, hooks=Hooks(checkpoint=saved.append))
    assert saved == []
