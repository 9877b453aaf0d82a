"""Every study trains, fine-tunes and scores on its scale's device in its scale's precision.

No GPU runs here, so the gpu scale's device is checked where it is decided: ``common.runtime`` (device and precision)
and ``common.scoring`` (the context scoring runs in) are the only places in the study modules that name either, and
every validation, held-out and gold-answer scoring call takes them (read from the source with ``ast``). The quick
scale runs on the CPU in the study tests."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest
import torch

from growlm.experiments import common
from growlm.experiments.framework import HELPERS, SCALES, SeedContext

PACKAGE = Path(common.__file__).parent
OTHERS = sorted(p for p in PACKAGE.glob("*.py") if p.name not in ("common.py", "framework.py"))
STUDY_FILES = [p for p in OTHERS if p.stem not in HELPERS and not p.stem.startswith("_")]
# what only common.runtime / common.scoring (and framework.SeedContext.device) may write
FORBIDDEN = (r"torch\.device\(", r"resolve_precision\(", r"ctx\.device\b", r"[\"']cuda[\"']", r"[\"']cpu[\"']",
             r"bfloat16", r"autocast\(")


def _ctx(scale: str) -> SeedContext:
    return SeedContext(seed=0, scale=scale, work=Path("."))


def test_every_scale_has_its_device_and_precision():
    for scale in SCALES:
        device, precision = common.runtime(_ctx(scale))
        assert device.type == ("cuda" if scale == "gpu" else "cpu")
        assert precision in ("fp32", "bf16")
    assert common.runtime(_ctx("gpu"))[1] == "bf16"
    # the recipe trains in the same precision the helper names (the scale's, or the recipe's "auto")
    for scale in SCALES:
        raw = common.plan(_ctx(scale), [{"name": "g", "add": 1, "train_newest": 1, "steps": 1}])
        assert raw["train"].get("precision", "auto") == common.SIZES[scale].get("precision", "auto")


def test_scoring_runs_in_bf16_at_gpu_and_as_before_on_the_cpu_scales():
    for scale in ("quick", "default", "cpu10x"):
        with common.scoring(_ctx(scale)):
            assert not torch.is_autocast_enabled("cpu")
    with warnings.catch_warnings():  # torch warns that CUDA is absent and disables the context; its settings stand
        warnings.simplefilter("ignore")
        ctx = common.scoring(_ctx("gpu"))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16


@pytest.mark.parametrize("path", OTHERS, ids=lambda p: p.name)
def test_no_study_names_a_device_or_precision_of_its_own(path):
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#")[0]
        hits = [p for p in FORBIDDEN if re.search(p, code)]
        assert not hits, f"{path.name}:{i} names a device or precision itself ({hits}): take common.runtime(ctx)"


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def _inside_scoring(tree: ast.AST, call: ast.Call) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(isinstance(it.context_expr, ast.Call) and
                                              getattr(it.context_expr.func, "id", None) == "scoring"
                                              for it in node.items):
            if any(call is n for stmt in node.body for n in ast.walk(stmt)):
                return True
    return False


@pytest.mark.parametrize("path", [*STUDY_FILES, PACKAGE / "common.py"], ids=lambda p: p.name)
def test_every_scoring_call_takes_the_scales_device_and_precision(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for call in _calls(tree, "validate"):  # validate(model, data, spec, device, precision=precision)
        kw = {k.arg for k in call.keywords}
        assert len(call.args) >= 4 and getattr(call.args[3], "id", None) == "device" and "precision" in kw, \
            f"{path.name}:{call.lineno}: validate without the runtime's device and precision"
    for name in ("heldout_scores", "evaluate"):
        for call in _calls(tree, name):
            assert _inside_scoring(tree, call), f"{path.name}:{call.lineno}: {name} outside `with scoring(ctx)`"


def test_the_source_check_finds_what_it_looks_for(tmp_path):
    """The checks above can fail: a study written the old way trips each of them."""
    old = ("def score(model, data, spec):\n    val = validate(model, data, spec, torch.device('cpu'))\n"
           "    return heldout_scores(model, 'compact', 16)\n")
    tree = ast.parse(old)
    assert any(re.search(p, old) for p in FORBIDDEN)
    call = _calls(tree, "validate")[0]
    assert getattr(call.args[3], "id", None) != "device"
    assert not _inside_scoring(tree, _calls(tree, "heldout_scores")[0])
    new = "with scoring(ctx):\n    s = heldout_scores(model, 'compact', 16)\n"
    tree = ast.parse(new)
    assert _inside_scoring(tree, _calls(tree, "heldout_scores")[0])
