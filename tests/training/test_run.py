"""The trainer: a full tiny growth run, exact resume after a kill, refusals, atomic saves, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growlm.model.saved import CheckpointError, load_model
from growlm.training.checkpoint import find_checkpoint
from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe, Stage
from growlm.training.run import grow, lr_at

QUIET = dict(progress=False, log=lambda *a: None)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_tiny_growth_run(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    grow(tiny_recipe(steps=8, val_every=4), run, **QUIET)
    records = read_metrics(run / "metrics.jsonl")
    stages = [r for r in records if r["type"] == "stage"]
    assert [s["kind"] for s in stages] == ["grow", "lora", "grow"]
    d, vocab = 32, 16384  # tiny recipe: d_model 32, compact vocabulary
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
    head = vocab * d + vocab + 2 * d  # the LM head (with its bias) and the final norm
    assert stages[0]["active_params"] == block + head
    assert stages[1]["lora_params"] == 2 * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))  # rank 2, 1 block
    ends = [r for r in records if r["type"] == "stage_end"]
    assert [e["depth"] for e in ends] == [1, 1, 2]
    assert set(ends[-1]["val_bpc"]) == {"en", "ru", "zh"}
    assert any(r["type"] == "val" for r in records)
    train = [r for r in records if r["type"] == "train"]
    assert train[-1]["tokens"] == 24 * 4 * 32
    model = load_model(run)
    assert len(model.blocks) == 2
    assert not any(".lora_" in k for k in model.state_dict())  # merged at the end of the LoRA phase
    assert sorted(p.name for p in (run / "stages").iterdir()) == ["stage-00", "stage-01", "stage-02"]


def test_resume_after_kill_is_bit_identical(tiny_recipe, tmp_path, kill_after_checkpoint):
    recipe = tiny_recipe(steps=12, ckpt_every=2)
    ref = tmp_path / "ref"
    grow(recipe, ref, **QUIET)

    run = tmp_path / "killed"
    # killed inside the LoRA phase (global step 16): adapters and optimiser state must survive
    assert kill_after_checkpoint(["grow", str(recipe), "--out", str(run), "--no-progress"], run, "step", 16, 120), \
        "the run finished before it could be killed"
    assert not (run / "model").exists()
    grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)
    assert_same_weights(ref, run)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert steps == sorted(set(steps))  # resumed logs continue, no duplicated steps


def test_resume_goes_on_in_the_precision_auto_chose_at_the_start(tiny_recipe, tmp_path, monkeypatch):
    """precision = "auto" is decided by measuring; a resumed run keeps the first decision, or it would not be exact."""
    import growlm.training.flops as flops
    import growlm.training.run as train_mod

    recipe = tiny_recipe(steps=4, ckpt_every=2)
    choice = {"now": "fp32"}
    monkeypatch.setattr(flops, "resolve_precision", lambda setting, device: choice["now"])
    ref = tmp_path / "ref"
    grow(recipe, ref, **QUIET)

    run, real, calls = tmp_path / "run", train_mod.Run.checkpoint, []

    def stop_after_two(self, *a, **k):  # the process dies after its second checkpoint (global step 4, stage 1)
        real(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.Run, "checkpoint", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        grow(recipe, run, **QUIET)
    monkeypatch.setattr(train_mod.Run, "checkpoint", real)
    choice["now"] = "bf16"  # the machine now measures bf16 as faster (another machine, or a busy first measurement)
    said = []
    grow(recipe, run, resume=True, progress=False, log=said.append)
    assert any("going on in fp32" in str(m) for m in said)
    assert_same_weights(ref, run)


def test_a_plan_can_grow_a_saved_model_further(tiny_recipe, tmp_path):
    """[model] init_from: the plan starts from a saved stage (its weights and depth) instead of fresh blocks."""
    from growlm.model.saved import load_model as load

    first = tmp_path / "first"
    grow(tiny_recipe(steps=3), first, **QUIET)
    raw = Recipe.load(tiny_recipe(steps=3)).raw
    raw["model"] = {"init_from": str(first / "stages" / "stage-00")}
    raw["stages"] = [{"name": "grow-on", "add": 1, "train_newest": 1, "steps": 3}]
    second = tmp_path / "second"
    grow(Recipe.from_dict(raw), second, **QUIET)
    source, grown = load(first / "stages" / "stage-00"), load(second)
    assert len(source.blocks) == 1 and len(grown.blocks) == 2
    for k, v in source.blocks[0].state_dict().items():  # the saved block, frozen below the new one
        assert torch.equal(grown.blocks[0].state_dict()[k], v), k
    assert not torch.equal(grown.head.weight, source.head.weight)  # the head trained on
    ends = [r for r in read_metrics(second / "metrics.jsonl") if r["type"] == "stage_end"]
    assert [e["depth"] for e in ends] == [2]

    with pytest.raises(ValueError, match=r"architecture from the saved model; remove \['d_model'\]"):
        Recipe.from_dict({**raw, "model": {"init_from": str(first), "d_model": 64}}).config()
    other = dict(raw, substrate={"kind": "binary", "vocab": "compact"})
    with pytest.raises(Exception, match="substrate"):
        grow(Recipe.from_dict(other), tmp_path / "third", **QUIET)


def test_resume_refuses_another_plan_and_a_broken_checkpoint(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    grow(tiny_recipe(steps=4), run, **QUIET)
    other = Recipe.load(tiny_recipe(steps=5, name="other.toml"))
    with pytest.raises(ValueError, match=r"different plan: it differs in \['stages\[0\]'"):
        grow(other, run, resume=True, **QUIET)
    with pytest.raises(ValueError, match="already holds a run"):
        grow(Recipe.load(run / "plan.json"), run, **QUIET)
    ckpt = find_checkpoint(run)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)
    (ckpt / "state.json").write_text('{"format": "somebody-else"}')
    with pytest.raises(CheckpointError, match="not a growlm training checkpoint"):
        grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)


def test_failed_save_keeps_the_previous_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    import growlm.model.saved as ck
    import growlm.training.checkpoint as tck

    run = tmp_path / "run"
    grow(tiny_recipe(steps=3), run, **QUIET)
    ckpt = find_checkpoint(run)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    model = load_model(run)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tck.save_checkpoint(ckpt, model, None, {"run": {}}, {"torch": torch.get_rng_state()})
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")]


def in_fp32(recipe: Path) -> Path:
    """``recipe`` with ``precision = "fp32"``: "auto" is a per-machine (and per-thread-count) measurement, and bf16
    autocast would hide the exact agreement these tests check."""
    recipe.write_text(recipe.read_text().replace("[train]\n", '[train]\nprecision = "fp32"\n', 1))
    return recipe


def with_grad_accum(recipe: Path, n: int) -> Path:
    """A copy of ``recipe`` whose global batch is split into ``n`` micro-batches."""
    out = recipe.with_name(f"accum{n}-{recipe.name}")
    out.write_text(recipe.read_text().replace("batch_size = 4\n", f"batch_size = 4\ngrad_accum = {n}\n"))
    assert f"grad_accum = {n}" in out.read_text()
    return out


def test_lr_schedule_warmup_then_cosine_to_the_floor():
    peak, warm, total, floor = 2e-3, 4, 24, 0.1
    assert [lr_at(s, total, peak, warm, floor) for s in range(4)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3])
    assert lr_at(warm, total, peak, warm, floor) == pytest.approx(peak)  # cosine starts at the peak
    assert lr_at(14, total, peak, warm, floor) == pytest.approx(peak * (floor + (1 - floor) / 2))  # halfway
    assert lr_at(total, total, peak, warm, floor) == pytest.approx(peak * floor)
    assert lr_at(total + 50, total, peak, warm, floor) == pytest.approx(peak * floor)  # stays at the floor
    lrs = [lr_at(s, total, peak, warm, floor) for s in range(warm, total + 1)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_grad_accumulation_gives_the_one_big_batch_update(tiny_recipe, tmp_path):
    recipe = in_fp32(tiny_recipe(steps=3, ckpt_every=0))
    grow(recipe, tmp_path / "one", device="cpu", **QUIET)
    grow(with_grad_accum(recipe, 4), tmp_path / "four", device="cpu", **QUIET)
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "four")
    for k in wa:  # same batches, the same mean loss; only the summation order differs
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # the micro-batch path did run


def test_token_budgets_count_the_global_batch_once(tiny_recipe):
    r1 = Recipe.load(tiny_recipe(steps=3))
    r4 = Recipe.load(with_grad_accum(tiny_recipe(steps=3), 4))
    stage = Stage(name="t", add=1, tokens=4 * 32 * 10)
    assert r1.stage_steps(stage) == r4.stage_steps(stage) == 10


def test_two_processes_match_one(tiny_recipe, tmp_path):
    """DDP over 2 processes with 2 micro-batches each (the ``no_sync`` path) gives one process's big-batch update."""
    recipe = in_fp32(tiny_recipe(steps=3, ckpt_every=0))  # each rank runs 1 thread: "auto" could differ
    one = tmp_path / "one"
    grow(recipe, one, device="cpu", **QUIET)
    recipe = with_grad_accum(recipe, 2)
    two = tmp_path / "two"
    torchrun = shutil.which("torchrun") or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29533", "-m", "growlm.cli", "grow",
                          str(recipe), "--out", str(two), "--no-progress", "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    wa, wb = weights(one), weights(two)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


VALIDATE_WORKER = Path(__file__).parent / "validate_worker.py"


def test_two_processes_split_validation_and_report_one_process_numbers(tiny_data, tmp_path):
    """Under torchrun each rank scores its own share of the validation windows (whole batches, every other one),
    and the per-window sums give every rank the one-process numbers, window for window."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread in every process: the same kernels
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    res = subprocess.run([sys.executable, str(VALIDATE_WORKER), str(tiny_data), str(one)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    torchrun = shutil.which("torchrun") or "torchrun"
    res = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29553", str(VALIDATE_WORKER), str(tiny_data),
                          str(two)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = json.loads((one / "rank-0.json").read_text())
    ranks = [json.loads((two / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["val"] == ranks[1]["val"] == ref["val"]
    assert set(ref["val"]["val_bpc"]) == {"en", "ru", "zh"}
    assert ranks[0]["rows"] + ranks[1]["rows"] == ref["rows"] >= 12  # every window scored once, several batches
    assert all(3 * r["rows"] >= ref["rows"] for r in ranks)  # about half each
    for lang, nats in ref["nats"].items():
        a, b = ranks[0]["nats"][lang], ranks[1]["nats"][lang]
        assert all(x == 0.0 or y == 0.0 for x, y in zip(a, b)) and any(a) and any(b)
        assert [x + y for x, y in zip(a, b)] == nats  # bit for bit the one-process windows
    # shutdown left nothing of the process group running (threads left to die with the interpreter can abort it)
    assert [json.loads((two / f"exit-{r}.json").read_text()) for r in (0, 1)] == [[], []]


def test_head_lr_scale_freezes_then_ramps():
    from growlm.training.plan import Stage
    from growlm.training.stages import head_lr_scale

    st = Stage(add=1, steps=10, head_freeze_steps=2, head_warmup_steps=4)
    assert [head_lr_scale(st, i) for i in range(8)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [head_lr_scale(Stage(add=1, steps=3), i) for i in range(3)] == [1.0, 1.0, 1.0]
    assert [head_lr_scale(Stage(add=1, steps=3, head_warmup_steps=2), i) for i in range(3)] == [0.5, 1.0, 1.0]


def test_split_head_optimizer_groups():
    from growlm.model import Config, GrowLM
    from growlm.training.loop import build_optimizer, set_lr
    from growlm.training.plan import TrainSpec

    model = GrowLM(Config.from_preset("tiny", d_model=32, n_head=2, n_layer=2, vocab_size=64))
    model.set_trainable([1], head=True)
    train = TrainSpec()
    plain = build_optimizer(model, train, torch.device("cpu"))
    assert len(plain.param_groups) == 2 and "head" not in plain.param_groups[0]
    split = build_optimizer(model, train, torch.device("cpu"), split_head=True)
    head_ids = {id(p) for p in [*model.head.parameters(), *model.norm.parameters()]}
    for g in split.param_groups:
        assert all((id(p) in head_ids) == g["head"] for p in g["params"])
    assert sum(len(g["params"]) for g in split.param_groups) == sum(len(g["params"]) for g in plain.param_groups)
    set_lr(split, 1e-3, 0.25)
    assert sorted({(g["head"], g["lr"]) for g in split.param_groups}) == [(False, 1e-3), (True, 2.5e-4)]


def test_frozen_head_stage_leaves_the_head_untouched(tiny_data, tmp_path):
    raw = {"model": {"preset": "tiny", "d_model": 32, "n_head": 2, "block_size": 32},
           "substrate": {"kind": "glyph", "vocab": "compact"}, "data": {"path": str(tiny_data)},
           "train": {"batch_size": 2, "seq_len": 32, "warmup_steps": 1, "val_tokens": 64, "val_every": 0,
                     "ckpt_every": 0, "log_every": 1},
           "stages": [{"add": 1, "steps": 2}, {"add": 1, "steps": 3, "head_freeze_steps": 2, "head_warmup_steps": 2},
                      {"add": 1, "steps": 2, "head_freeze_steps": 2}]}
    run = tmp_path / "run"
    grow(Recipe.from_dict(raw), run, **QUIET)
    w = [load_file(str(run / "stages" / f"stage-0{i}" / "model.safetensors")) for i in range(3)]
    heads = [k for k in w[0] if k.startswith(("head.", "norm."))]
    assert heads
    assert all(torch.equal(w[2][k], w[1][k]) for k in heads)  # frozen for the whole stage
    assert not all(torch.equal(w[1][k], w[0][k]) for k in heads)  # frozen 2 steps, then warmed up: it moved
    logged = [(r["stage"], r["lr"], r["head_lr"]) for r in read_metrics(run / "metrics.jsonl")
              if r["type"] == "train" and r["stage"] == 1]
    assert [h for _, _, h in logged] == [0.0, 0.0, pytest.approx(logged[2][1] * 0.5)]
    assert not any("head_lr" in r for r in read_metrics(run / "metrics.jsonl") if r.get("stage") == 0)
