"""FSDP2 (growlm.training.parallel): two CPU processes under gloo (torch's FSDP2 runs there) against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growlm.training.checkpoint import find_checkpoint, load_checkpoint
from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe
from growlm.training.run import grow

QUIET = dict(progress=False, log=lambda *a, **k: None, device="cpu")
WORKER = Path(__file__).parent / "parallel_worker.py"


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def close(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol:
            torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=k)
        else:
            assert torch.equal(wa[k], wb[k]), k


def test_fsdp_matches_one_process_and_its_checkpoints_resume_exactly(tiny_recipe, tmp_path):
    """Grow, LoRA (adapters on a frozen block) and grow-on-a-frozen-prefix stages under FSDP2 with gradient
    accumulation and activation checkpointing, 2 gloo processes: the result matches one process, and so does its
    validation, stage-end and mid-stage (the sharded copy, forwards in lockstep); a run stopped mid-LoRA-phase
    resumes under FSDP bit-identically to the uninterrupted one; its checkpoint is an ordinary one (full tensors)
    that a single process resumes to the one-process result."""
    path = tiny_recipe(steps=2, ckpt_every=1, val_every=1)  # validation after each stage's first step too
    text = path.read_text().replace("[train]\n", '[train]\ngrad_accum = 2\nprecision = "fp32"\n', 1)
    one_path = tmp_path / "one.toml"
    one_path.write_text(text)
    fsdp_path = tmp_path / "fsdp.toml"
    fsdp_path.write_text(text.replace("[train]\n", '[train]\nparallel = "fsdp"\nactivation_checkpointing = true\n', 1))
    assert Recipe.load(fsdp_path).fingerprint() == Recipe.load(one_path).fingerprint()  # same plan, other execution

    one = tmp_path / "one"
    grow(one_path, one, **QUIET)
    torchrun = shutil.which("torchrun") or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29541", str(WORKER), str(fsdp_path),
                          str(tmp_path), "3"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # shutdown left nothing of the process group running (threads left to die with the interpreter can abort it)
    assert [json.loads((tmp_path / f"exit-{r}.json").read_text()) for r in (0, 1)] == [[], []]
    close(one, tmp_path / "fsdp", atol=1e-5)
    close(tmp_path / "fsdp", tmp_path / "stopped", atol=0)
    # stage-end validation, split between the ranks and summed, reports one process's numbers (to 4 decimals)
    ends = [[r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "stage_end"]
            for run in (one, tmp_path / "fsdp")]
    assert len(ends[0]) == len(ends[1]) == 3
    for a, b in zip(*ends):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=2e-4)
        assert b["val_bpc"] == pytest.approx(a["val_bpc"], abs=2e-4)
    # mid-stage validation of the sharded copy (every rank scores every window): one process's numbers too
    mids = [[r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "val"]
            for run in (one, tmp_path / "fsdp", tmp_path / "stopped")]
    assert [(r["step"], r["stage"], r["depth"]) for r in mids[0]] == [(1, 0, 1), (3, 1, 1), (5, 2, 2)]
    assert [(r["step"], r["stage"], r["depth"]) for r in mids[1]] == [(1, 0, 1), (3, 1, 1), (5, 2, 2)]
    for a, b in zip(*mids[:2]):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=2e-4)
        assert b["val_bpc"] == pytest.approx(a["val_bpc"], abs=2e-4)
    assert mids[2] == mids[1]  # the stopped and resumed run: the same rows, each once

    copy = tmp_path / "stopped-copy"
    state, ckpt_weights, opt, _ = load_checkpoint(find_checkpoint(copy))
    assert state["run"]["step"] == 3 and state["run"]["stage"] == 1  # inside the LoRA phase
    assert ckpt_weights["blocks.0.attn.qkv.lora_A"].shape == (2, 32)  # full tensors, not a rank's shard
    assert opt["state"][0]["exp_avg"].shape == ckpt_weights["blocks.0.attn.qkv.lora_A"].shape
    grow(Recipe.load(copy / "plan.json"), copy, resume=True, **QUIET)
    close(one, copy, atol=1e-5)


def test_parallel_is_checked():
    from growlm.training.plan import TrainSpec

    with pytest.raises(ValueError, match=r"parallel must be one of \['ddp', 'fsdp'\], got 'zero3'"):
        TrainSpec(parallel="zero3")


def test_a_command_ends_by_waiting_for_every_rank_then_destroying_the_process_group(tmp_path, monkeypatch):
    """What ``growlm`` does after a command under torchrun (``parallel.shutdown``): a barrier, then the group is
    destroyed, so that no rank tears its connections down while another still uses them; without a group, nothing."""
    import torch.distributed as torch_dist
    from worker_exit import group_threads

    from growlm.cli import main

    calls = []
    barrier, destroy = torch_dist.barrier, torch_dist.destroy_process_group
    monkeypatch.setattr(torch_dist, "barrier", lambda *a, **k: calls.append("barrier") or barrier(*a, **k))
    monkeypatch.setattr(torch_dist, "destroy_process_group",
                        lambda *a, **k: calls.append("destroy") or destroy(*a, **k))
    assert main(["params", "--preset", "tiny"]) == 0
    assert calls == []  # one process, no group
    torch_dist.init_process_group("gloo", store=torch_dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        assert main(["params", "--preset", "tiny"]) == 0
        assert calls == ["barrier", "destroy"]
        assert not torch_dist.is_initialized() and group_threads() == []  # nothing of it left running
    finally:
        if torch_dist.is_initialized():
            destroy()
