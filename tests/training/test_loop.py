"""growlm.training.loop: the one optimisation loop (growth stages and fine-tunes), its hooks, and fine-tune resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growlm.cli import main
from growlm.model import Config, GrowLM
from growlm.model.saved import save_model
from growlm.substrate import Substrate
from growlm.training.loop import Hooks, Loop, RunState, micro_batch
from growlm.training.metrics import read_metrics
from growlm.training.plan import TrainSpec


def test_micro_batch_must_divide_the_global_batch():
    assert micro_batch(16, 4, 2) == 2
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by grad_accum 4 x processes 1"):
        micro_batch(6, 4, 1)


def test_hooks_run_at_their_cadence_and_counters_advance():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    train = TrainSpec(batch_size=2, seq_len=3, lr=1e-2, log_every=2, val_every=3, ckpt_every=4)

    def forward(x, y):  # a stand-in model: any module whose forward(x, y) is a loss
        return ((model(x.float()) - y.float()) ** 2).mean()

    wrapped = torch.nn.Module()
    wrapped.forward = forward
    wrapped.lin = model
    seen: dict[str, list[int]] = {"log": [], "val": [], "ckpt": []}
    state = RunState(step=10, tokens=60)  # a resumed run: global counters carry on
    loop = Loop(wrapped, train)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lrs = []
    loop.run(opt, 7, state, batches=lambda: (torch.ones(2, 4), torch.zeros(2, 4)),
             lr_of=lambda s: lrs.append(s) or 0.1,
             hooks=Hooks(log=lambda st, s: seen["log"].append(st.step),
                         validate=lambda st: seen["val"].append(st.step),
                         checkpoint=lambda st: seen["ckpt"].append(st.step)))
    assert lrs == list(range(7))  # the schedule sees the loop's own step
    assert (state.stage_step, state.step, state.tokens) == (7, 17, 60 + 7 * 2 * 3)
    assert seen == {"log": [12, 14, 16, 17], "val": [12, 15], "ckpt": [12, 16]}  # never at the last step


@pytest.fixture()
def composed(tmp_path) -> Path:
    sub = Substrate.build("glyph", "compact", 32)
    experts = []
    for i in range(2):
        torch.manual_seed(i)
        cfg = Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_layer=1, n_head=2)
        experts.append(save_model(GrowLM(cfg, sub), tmp_path / f"e{i}" / "model").parent)
    out = tmp_path / "composed"
    assert main(["compose", str(experts[0]), str(experts[1]), "--method", "router", "--out", str(out)]) == 0
    return out


def test_finetune_validates_every_val_every_steps(composed, tiny_data, tmp_path, capsys):
    """``growlm finetune --val-every N`` ([train] val_every) validates before the first step, every N steps and
    after the last, as a growth stage does; 0 validates only before and after."""
    args = ["finetune", str(composed), "--data", str(tiny_data), "--steps", "5", "--ckpt-every", "0",
            "--batch-size", "4", "--seq-len", "16", "--val-tokens", "256", "--no-progress", "--precision", "fp32"]
    assert main([*args, "--val-every", "2", "--out", str(tmp_path / "every2")]) == 0
    assert main([*args, "--val-every", "0", "--out", str(tmp_path / "ends")]) == 0
    rows = read_metrics(tmp_path / "every2" / "metrics.jsonl")
    vals = [r for r in rows if r["type"] == "val"]
    assert [(v["step"], v["tokens"]) for v in vals] == [(s, s * 4 * 16) for s in (0, 2, 4, 5)]
    assert {"val_loss", "val_bpc", "val_bpc_mean"} <= vals[1].keys() and vals[1]["val_loss"] != vals[0]["val_loss"]
    ends = [r for r in read_metrics(tmp_path / "ends" / "metrics.jsonl") if r["type"] == "val"]
    assert [v["step"] for v in ends] == [0, 5]
    assert [ends[0], ends[1]] == [vals[0], vals[3]]  # mid-run validation changed nothing the run computed
    assert json.loads((tmp_path / "every2" / "plan.json").read_text())["train"]["val_every"] == 2
    with pytest.raises(SystemExit):  # argparse: "argument --val-every: must be >= 0, got -1"
        main([*args, "--val-every", "-1", "--out", str(tmp_path / "bad")])
    assert "--val-every: must be >= 0, got -1" in capsys.readouterr().err


def test_finetune_resumes_bit_identically_after_sigkill(composed, tiny_data, tmp_path, kill_after_checkpoint):
    """Killed after a checkpoint and resumed, the fine-tune ends on the uninterrupted one's weights and logs its
    training and mid-run validation rows once each, the same numbers."""
    args = ["finetune", str(composed), "--data", str(tiny_data), "--steps", "40", "--ckpt-every", "3",
            "--batch-size", "4", "--seq-len", "16", "--val-tokens", "256", "--val-every", "4", "--no-progress"]
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0

    run = tmp_path / "killed"
    assert kill_after_checkpoint([*args, "--out", str(run)], run, "stage_step", 9), \
        "the fine-tune finished before it could be killed"
    assert not (run / "model").exists()
    assert main([*args, "--out", str(run), "--resume"]) == 0
    a, b = load_file(str(ref / "model" / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "metrics.jsonl").read_text().count('"type": "train"') == \
        (run / "metrics.jsonl").read_text().count('"type": "train"')  # the redone steps were not logged twice
    vals = [[r for r in read_metrics(d / "metrics.jsonl") if r["type"] == "val"] for d in (ref, run)]
    assert [v["step"] for v in vals[0]] == [0, *range(4, 40, 4), 40]
    assert vals[1] == vals[0]  # validated at the same steps, to the same numbers, once each


def test_finetune_resume_refuses_other_settings(composed, tiny_data, tmp_path, capsys):
    args = ["finetune", str(composed), "--data", str(tiny_data), "--steps", "4", "--ckpt-every", "2",
            "--batch-size", "4", "--seq-len", "16", "--val-tokens", "256", "--no-progress", "--out",
            str(tmp_path / "ft")]
    assert main(args) == 0
    (tmp_path / "ft" / "model" / "model.json").unlink()  # as if it had stopped after its checkpoint
    assert main([*[a if a != "4" else "5" for a in args[:8]], *args[8:], "--resume"]) == 2
    assert "another model or with other settings" in capsys.readouterr().err


def test_finetune_under_torchrun_matches_one_process(composed, tiny_data, tmp_path):
    """DDP over 2 gloo processes (1 micro-batch each) gives one process's fine-tune, fp32 both."""
    args = ["finetune", str(composed), "--data", str(tiny_data), "--steps", "4", "--ckpt-every", "2",
            "--batch-size", "4", "--seq-len", "16", "--val-tokens", "256", "--val-every", "2", "--no-progress",
            "--precision", "fp32"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun = shutil.which("torchrun") or "torchrun"
    res = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29547", "-m", "growlm.cli", *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 processes" in res.stderr
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    start = load_file(str(composed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert (a["router.weight"] - start["router.weight"]).abs().max() > 1e-3  # it trained, far beyond the tolerance
    assert (tmp_path / "two" / "checkpoints" / "latest" / "state.json").is_file()
    # validation, split between the ranks and summed, reports one process's numbers (4 decimals; thread counts differ)
    vals = [[r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["type"] == "val"] for run in ("one", "two")]
    assert [v["step"] for v in vals[0]] == [v["step"] for v in vals[1]] == [0, 2, 4]  # mid-run too, split as well
    for a, b in zip(*vals):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=2e-4)
        assert b["val_bpc"] == pytest.approx(a["val_bpc"], abs=2e-4)
