"""``[train] compile = true`` on CPU: inductor-compiled blocks match eager, recompile after growth and LoRA, and a
compiled run resumed from a checkpoint ends on the weights of the uninterrupted compiled run.

Compiling is the cost of these tests (g++ builds inductor's kernels), so every test compiles blocks of one shape
(d_model 32, 2 heads, 4 x 32 tokens), whose graphs inductor caches on disk and the later tests reuse: a frozen
block's no-grad graph, a trained block's graph, a LoRA-adapted block's graph and a composed model's frozen experts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growlm import Config, GrowLM
from growlm.cli import main
from growlm.data.tokens import open_data
from growlm.model import lora
from growlm.model.composition import ComposedLM, compose
from growlm.model.saved import save_model
from growlm.substrate import Substrate
from growlm.training.finetune import finetune
from growlm.training.loop import compiled_blocks, cpp_compiler, model_blocks, resolve_compile
from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe, TrainSpec
from growlm.training.run import Run, grow

QUIET = dict(progress=False, log=lambda *a: None)
needs_cxx = pytest.mark.skipif(cpp_compiler() is None, reason="inductor on CPU needs a C++ compiler")
TOL = 1e-4  # compiled vs eager: inductor fuses and reorders float32 sums (measured differences ~1e-6)


class Crash(Exception):
    pass


def loss_and_grads(model: GrowLM, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(x, y, loss_chunk=8)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_resolve_compile_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("true", cpu) and resolve_compile(True, cpu)
    assert not resolve_compile("false", cuda) and not resolve_compile(False, cpu)
    assert resolve_compile("auto", cuda)
    with pytest.raises(ValueError, match="auto, true or false"):
        resolve_compile("yes", cpu)
    with pytest.raises(ValueError, match="auto, true or false"):
        TrainSpec(compile="sometimes")


def test_compile_true_without_a_cpp_compiler_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        resolve_compile("true", torch.device("cpu"))
    assert resolve_compile("auto", torch.device("cpu")) is False


@needs_cxx
def test_compiled_blocks_match_eager_and_never_reuse_a_stale_graph():
    torch.manual_seed(0)  # the block shape of the one-stage run below (its graphs are inductor's cache hits)
    cfg = Config.from_preset("tiny", vocab_size=64, d_model=32, n_head=2, n_layer=2, block_size=32)
    model = GrowLM(cfg)
    model.embedding.normal_()
    model.set_trainable([1])  # block 0 is the frozen no-grad prefix
    x, y = torch.randint(0, 64, (4, 32)), torch.randint(0, 64, (4, 32))
    names = list(model.state_dict())
    eager_loss, eager_grads = loss_and_grads(model, x, y)
    with compiled_blocks(model):
        assert all(b._compiled_call_impl is not None for b in model.blocks)
        loss, grads = loss_and_grads(model, x, y)
    before_lora = loss
    assert all(b._compiled_call_impl is None for b in model.blocks)  # eager again outside
    assert list(model.state_dict()) == names  # compiled in place: no _orig_mod in the names
    assert loss == pytest.approx(eager_loss, abs=TOL)
    assert grads.keys() == eager_grads.keys() and "blocks.0.attn.qkv.weight" not in grads
    for n in grads:
        torch.testing.assert_close(grads[n], eager_grads[n], atol=TOL, rtol=TOL)
    # a LoRA phase after the stage above: adapters with B != 0 change the function, the new graph must see them
    lora.attach_to_blocks(model, lora.LoRASpec(rank=2, alpha=4), [0, 1])
    for lin in lora.adapted_linears(model):
        torch.nn.init.normal_(lin.lora_B, std=0.5)
    model.set_trainable([], head=True)
    for lin in lora.adapted_linears(model):
        lin.lora_A.requires_grad_(True)
        lin.lora_B.requires_grad_(True)
    eager_loss, eager_grads = loss_and_grads(model, x, y)
    with compiled_blocks(model):
        loss, grads = loss_and_grads(model, x, y)
    assert loss == pytest.approx(eager_loss, abs=TOL)
    assert abs(loss - before_lora) > 1e-3  # the adapters' effect is in the compiled result
    assert any(".lora_A" in n for n in grads) and grads.keys() == eager_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], eager_grads[n], atol=TOL, rtol=TOL)


def compiled(recipe: Path, value: str = "true") -> Path:
    """``recipe`` in fp32 with ``compile = value`` (precision "auto" is a per-machine measurement)."""
    out = recipe.with_name(f"compile-{value}-{recipe.name}")
    text = recipe.read_text().replace('precision = "fp32"\ncompile = true\n', "")  # already set: set anew
    out.write_text(text.replace("[train]\n", f'[train]\nprecision = "fp32"\ncompile = {value}\n', 1))
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@needs_cxx
def test_compile_true_runs_a_growth_stage_on_cpu_and_resumes_bit_for_bit(tiny_data, tmp_path, monkeypatch):
    """One grow stage of the trainer with compile = true runs its blocks compiled, ends on the eager run's weights
    up to float rounding, and, killed after its mid-stage checkpoint and resumed, on the uninterrupted compiled
    run's weights exactly."""
    recipe = tmp_path / "one.toml"
    recipe.write_text(f"""
name = "one"
[model]
preset = "tiny"
d_model = 32
n_head = 2
n_layer = 1
block_size = 32
[substrate]
kind = "glyph"
vocab = "compact"
[data]
path = "{tiny_data}"
[train]
precision = "fp32"
compile = true
batch_size = 4
seq_len = 32
warmup_steps = 1
val_every = 2
val_tokens = 256
ckpt_every = 2
log_every = 1
[[stages]]
name = "g1"
add = 1
steps = 4
""")
    seen = []
    real = compiled_blocks

    def spy(model, on=True):
        seen.append((on, len(model.blocks)))
        return real(model, on)

    from torch._dynamo.utils import counters

    monkeypatch.setattr("growlm.training.run.compiled_blocks", spy)
    counters.clear()  # dynamo's global statistics: count this run's graphs only
    grow(recipe, tmp_path / "run", **QUIET)
    assert seen == [(True, 2)]  # the stage compiled, with the frozen block 0 and the new block 1
    # block 0's no-grad graph and block 1's training graph; mid-stage validation (other shapes) compiled none
    assert counters["stats"]["unique_graphs"] == 2
    grow(compiled(recipe, "false"), tmp_path / "eager", **QUIET)
    assert seen[-1] == (False, 2)
    wc, we = weights(tmp_path / "run"), weights(tmp_path / "eager")
    assert wc.keys() == we.keys() and not any(".lora_" in k or "_orig_mod" in k for k in wc)
    for k in wc:  # 4 AdamW steps
        torch.testing.assert_close(wc[k], we[k], atol=TOL, rtol=TOL)
    assert any(not torch.equal(wc[k], we[k]) for k in wc)  # compiled kernels round differently: a real comparison
    # killed after the checkpoint at step 2 (mid-stage, mid-optimiser), resumed from it: the same weights, bit for bit
    real_checkpoint = Run.checkpoint

    def crash_after_step_2(self, optimizer, trainee=None):
        real_checkpoint(self, optimizer, trainee)
        if optimizer is not None and self.state.step == 2:
            raise Crash

    monkeypatch.setattr(Run, "checkpoint", crash_after_step_2)
    with pytest.raises(Crash):
        grow(recipe, tmp_path / "resumed", **QUIET)
    monkeypatch.setattr(Run, "checkpoint", real_checkpoint)
    grow(Recipe.load(tmp_path / "resumed" / "plan.json"), tmp_path / "resumed", resume=True, **QUIET)
    assert seen[-1] == (True, 2)
    wr = weights(tmp_path / "resumed")
    assert wr.keys() == wc.keys()
    for k in wc:  # the same graphs on the same inputs: inductor's CPU kernels are deterministic
        assert torch.equal(wr[k], wc[k]), k


def composed_router() -> ComposedLM:
    """Two 1-block experts (frozen) under a router, the same weights at every call."""
    sub = Substrate.build("glyph", "compact", 32)
    experts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        experts.append(GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_head=2, n_layer=1,
                                                 block_size=32), sub))
    return compose(experts, "router")


@needs_cxx
def test_finetune_honours_compile(tiny_data, tmp_path, monkeypatch):
    """``finetune`` compiles as a growth stage does when ``compile = true``: a composed model's expert blocks (frozen:
    one no-grad graph serves both) run compiled during the steps and eager for validation (mid-run too), and the
    router it trains matches the eager fine-tune's."""
    from torch._dynamo.utils import counters

    seen = []
    real = compiled_blocks

    def spy(model, on=True):
        seen.append((on, len(model_blocks(model))))
        return real(model, on)

    monkeypatch.setattr("growlm.training.finetune.compiled_blocks", spy)
    data = open_data(tiny_data, "compact")
    train = TrainSpec(batch_size=4, seq_len=32, lr=1e-2, warmup_steps=1, val_tokens=128, val_every=2, ckpt_every=0,
                      precision="fp32", compile="true")
    counters.clear()  # dynamo's global statistics: count this fine-tune's graphs only
    comp = finetune(composed_router(), data, tmp_path / "compiled", 3, train, progress=False, log=lambda *a: None)
    assert seen == [(True, 2)]  # both experts' blocks
    assert counters["stats"]["unique_graphs"] == 1  # the training steps' graph; validation compiled none
    vals = [r for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl") if r["type"] == "val"]
    assert [v["step"] for v in vals] == [0, 2, 3]  # before, every val_every = 2 steps (inside the compiled loop), after
    eager = finetune(composed_router(), data, tmp_path / "eager", 3, replace(train, compile="false"), progress=False,
                     log=lambda *a: None)
    assert seen[-1] == (False, 2)
    assert comp["before"] == eager["before"]  # eager validation of the same starting model
    mid = [r for r in read_metrics(tmp_path / "eager" / "metrics.jsonl") if r["type"] == "val"][1]
    assert mid["step"] == 2 and vals[1]["val_loss"] == pytest.approx(mid["val_loss"], abs=1e-3)
    wc, we = load_file(f"{comp['model']}/model.safetensors"), load_file(f"{eager['model']}/model.safetensors")
    start = composed_router().state_dict()
    assert wc.keys() == we.keys()
    for k in wc:
        torch.testing.assert_close(wc[k], we[k], atol=TOL, rtol=TOL)
    assert (wc["router.weight"] - start["router.weight"]).abs().max() > 100 * TOL  # it trained, beyond the tolerance


def test_finetune_compile_true_without_a_cpp_compiler_is_refused_before_any_file(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    train = TrainSpec(batch_size=2, seq_len=16, val_tokens=64, compile="true")
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        finetune(composed_router(), open_data(tiny_data, "compact"), tmp_path / "ft", 1, train, progress=False,
                 log=lambda *a: None)
    assert not (tmp_path / "ft").exists()


def test_finetune_cli_passes_compile(tiny_data, tmp_path):
    """``growlm finetune --compile`` is the fine-tune's ``[train] compile`` (its plan records it)."""
    model = save_model(composed_router(), tmp_path / "m" / "model")
    args = ["finetune", str(model), "--data", str(tiny_data), "--steps", "1", "--batch-size", "2", "--seq-len", "16",
            "--val-tokens", "64", "--ckpt-every", "0", "--precision", "fp32", "--no-progress"]
    assert main([*args, "--compile", "false", "--out", str(tmp_path / "ft")]) == 0
    assert json.loads((tmp_path / "ft" / "plan.json").read_text())["train"]["compile"] == "false"
    with pytest.raises(SystemExit):
        main([*args, "--compile", "yes", "--out", str(tmp_path / "bad")])
