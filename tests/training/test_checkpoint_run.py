"""Run directories: one writer at a time, restart after an early death, verified resume, metrics offsets."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growlm.model.saved import CheckpointError
from growlm.training import run as train
from growlm.training.checkpoint import find_checkpoint
from growlm.training.plan import Recipe
from growlm.training.run import grow
from growlm.util.fileio import RunLockedError

QUIET = dict(progress=False, log=lambda *a: None)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_runs_into_one_directory_cannot_both_proceed(tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe(steps=2)
    run = tmp_path / "run"
    started, release = threading.Event(), threading.Event()
    real = train.Run.train_stage

    def held(self, si, stage):
        if not started.is_set():
            started.set()
            release.wait(60)
        return real(self, si, stage)

    monkeypatch.setattr(train.Run, "train_stage", held)
    errors: list[BaseException] = []

    def first():
        try:
            grow(recipe, run, **QUIET)
        except BaseException as e:  # noqa: B036 - surfaced below
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(60)
    with pytest.raises(RunLockedError, match="another growlm process"):
        grow(recipe, run, **QUIET)
    with pytest.raises(RunLockedError):
        grow(Recipe.load(recipe), run, resume=True, **QUIET)
    release.set()
    t.join(120)
    assert not errors, errors
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if r["type"] == "stage"] == [0, 1, 2]  # one run's metrics, once
    with pytest.raises(ValueError, match="already holds a run"):
        grow(recipe, run, **QUIET)


def test_a_leftover_lock_file_does_not_block(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".growlm.lock").write_text("pid 999999999 (killed long ago)\n")
    grow(tiny_recipe(steps=1), run, **QUIET)
    assert (run / "model" / "model.json").exists()


def fail_in_first_stage(monkeypatch):
    def crash(self, si, stage):
        raise RuntimeError("killed before the first checkpoint")

    monkeypatch.setattr(train.Run, "train_stage", crash)


def test_a_run_that_died_before_its_first_checkpoint_can_be_restarted(tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe(steps=2, ckpt_every=0)
    ref = tmp_path / "ref"
    grow(recipe, ref, **QUIET)
    for how in ("resume", "out"):
        run = tmp_path / how
        with monkeypatch.context() as m:
            fail_in_first_stage(m)
            with pytest.raises(RuntimeError, match="killed"):
                grow(recipe, run, **QUIET)
        assert (run / "plan.json").exists() and find_checkpoint(run) is None
        if how == "resume":
            grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)
        else:
            grow(recipe, run, **QUIET)
        assert same(final_weights(ref), final_weights(run))
        stages = [json.loads(x)["stage"] for x in (run / "metrics.jsonl").read_text().splitlines()
                  if json.loads(x)["type"] == "stage"]
        assert stages == [0, 1, 2]  # the dead attempt's records are gone


def test_resume_verifies_every_checkpoint_file(tiny_recipe, tmp_path):
    recipe = tiny_recipe(steps=4, ckpt_every=2)
    run = tmp_path / "run"
    grow(recipe, run, **QUIET)
    ckpt = find_checkpoint(run)
    original = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        data = bytearray(original[name])
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        (ckpt / name).write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}.*SHA-256"):
            grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)
        (ckpt / name).write_bytes(original[name])


def test_a_stale_metrics_offset_never_pads_with_nul_bytes(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    grow(tiny_recipe(steps=2), run, **QUIET)
    metrics = run / "metrics.jsonl"
    text = metrics.read_bytes()
    metrics.write_bytes(text[: len(text) // 3])
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl"):
        grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)
    assert b"\0" not in metrics.read_bytes()
    metrics.unlink()  # the remedy the message gives: resume with a fresh metrics log
    grow(Recipe.load(run / "plan.json"), run, resume=True, **QUIET)
    assert (run / "model" / "model.json").exists()
