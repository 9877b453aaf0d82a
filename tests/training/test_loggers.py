"""Loggers beside metrics.jsonl: TensorBoard (read back from its event file) and Weights & Biases (a stand-in)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from growlm.training.loggers import scalars
from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe
from growlm.training.run import grow


def test_scalars_flatten_a_record() -> None:
    rec = {"type": "val", "step": 7, "tokens": 100, "val_bpc": {"en": 2.5, "ru": 3.0}, "name": "g1", "ok": True}
    assert scalars(rec) == {"val/tokens": 100.0, "val/val_bpc/en": 2.5, "val/val_bpc/ru": 3.0}


def test_tensorboard_event_file_holds_the_metrics(tiny_recipe, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    recipe = Recipe.load(tiny_recipe(steps=4, ckpt_every=0), overrides=['train.loggers=["tensorboard"]'])
    grow(recipe, run, device="cpu", progress=False, log=lambda *a: None)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in train]
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    ends = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "stage_end"]
    assert [e.value for e in acc.Scalars("stage_end/val_bpc/en")] == pytest.approx([r["val_bpc"]["en"] for r in ends],
                                                                                   rel=1e-6)


def test_wandb_gets_every_record_and_resumes_one_run(tiny_recipe, tmp_path: Path, monkeypatch) -> None:
    calls: list = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(util=types.SimpleNamespace(generate_id=lambda: "abc123"),
                                 init=lambda **kw: calls.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    grow(tiny_recipe(steps=2, ckpt_every=0), run, device="cpu", progress=False, log=lambda *a: None, loggers=["wandb"])
    init = calls[0][1]
    assert init["id"] == "abc123" and init["resume"] == "allow" and (run / "wandb_id").read_text().strip() == "abc123"
    logged = [c for c in calls if c[0] == "log"]
    records = read_metrics(run / "metrics.jsonl")
    assert len(logged) == len(records) and logged[-1][2] == scalars(records[-1]) and calls[-1] == ("finish",)


def test_unknown_logger_is_refused(tiny_recipe) -> None:
    with pytest.raises(ValueError, match=r"loggers: unknown \['mlflow'\]"):
        Recipe.load(tiny_recipe(), overrides=['train.loggers=["mlflow"]'])
