"""``lm_eval --model growlm``: the start-up hook (growlm-lm-eval.pth + _growlm_lm_eval) registers growlm's model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

import _growlm_lm_eval  # noqa: E402
from growlm.evaluate.lm_eval_tasks import TASKS_DIR  # noqa: E402

PTH = Path(_growlm_lm_eval.__file__).with_name("growlm-lm-eval.pth")


def _python(code: str, site_dir: Path | None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that processed no .pth but the one in ``site_dir`` (if any): ``-S``, then
    growlm's source folder and the site-packages folders by hand (an installed growlm-lm-eval.pth stays unread)."""
    prelude = (f"import site, sys; sys.path.insert(0, {str(PTH.parent)!r}); sys.path += site.getsitepackages(); "
               + (f"site.addsitedir({str(site_dir)!r}); " if site_dir else ""))
    return subprocess.run([sys.executable, "-S", "-c", prelude + code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def site_dir(tmp_path) -> Path:
    d = tmp_path / "site"
    d.mkdir()
    shutil.copy(PTH, d)
    return d


def test_pth_imports_nothing_heavy_then_registers_growlm_beside_lm_evals_own_models(site_dir):
    out = _python("print(sorted(m for m in ('torch', 'lm_eval', 'growlm') if m in sys.modules)); "
                  "from lm_eval.api.registry import get_model, model_registry; cls = get_model('growlm'); "
                  "print(cls.__module__, cls.__name__, 'hf' in model_registry)", site_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "growlm.evaluate.lm_eval_adapter GrowLMEval True"]


def test_without_the_pth_lm_eval_finds_no_growlm():
    out = _python("from lm_eval.api.registry import get_model; get_model('growlm')", None)
    assert out.returncode != 0 and "no model for this name found" in out.stderr


def test_pth_is_silent_when_growlm_is_gone(tmp_path):
    """An editable install whose source folder moved leaves the .pth behind: Python must still start quietly."""
    d = tmp_path / "site"
    d.mkdir()
    shutil.copy(PTH, d)
    out = subprocess.run([sys.executable, "-S", "-c", f"import site; site.addsitedir({str(d)!r}); print('up')"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "up\n", "")


def test_importing_the_adapter_keeps_lm_evals_own_models():
    from lm_eval.api.registry import get_model, model_registry

    from growlm.evaluate.lm_eval_adapter import GrowLMEval

    assert get_model("growlm") is GrowLMEval and "hf" in model_registry
    _growlm_lm_eval.register()  # twice is harmless
    assert get_model("growlm") is GrowLMEval


def test_lm_eval_command_line_runs_growlm_offline(site_dir, tiny_model, data_root, tmp_path):
    from growlm.model.saved import save_model

    model_dir = save_model(tiny_model, tmp_path / "model")
    argv = ["lm_eval", "--model", "growlm", "--model_args", f"pretrained={model_dir}", "--tasks", "growlm_arc_easy",
            "--include_path", str(TASKS_DIR), "--limit", "2", "--device", "cpu"]
    out = _python(f"sys.argv = {argv!r}; from lm_eval.__main__ import cli_evaluate; cli_evaluate()", site_dir,
                  env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
                       "GROWLM_EVAL_DATA": str(data_root)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "|growlm_arc_easy|" in out.stdout and "acc_norm" in out.stdout


def test_python_m_adapter_adds_growlms_tasks_unless_told_otherwise(monkeypatch):
    import lm_eval.__main__

    from growlm.evaluate.lm_eval_adapter import main

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(sys.argv[1:]))
    monkeypatch.setattr(sys, "argv", ["prog"])
    main(["--model", "growlm", "--tasks", "growlm_piqa"])
    main(["--tasks", "mine", "--include_path=/my/tasks"])
    main(["--help"])
    assert seen == [["--model", "growlm", "--tasks", "growlm_piqa", "--include_path", str(TASKS_DIR)],
                    ["--tasks", "mine", "--include_path=/my/tasks"], ["--help"]]
