"""growlm's shipped lm-eval tasks: offline, on local benchmark files, the same scores as ``growlm eval``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lm_eval")

from growlm.evaluate import evaluate  # noqa: E402
from growlm.evaluate.lm_eval_tasks import TASK_NAMES, TASKS_DIR, load_docs  # noqa: E402
from growlm.evaluate.tasks import MC_TASKS  # noqa: E402
from growlm.model import Config, GrowLM  # noqa: E402
from growlm.substrate import Substrate  # noqa: E402


@pytest.fixture(scope="module")
def model(tok):
    """A tiny model whose window holds every fixture question (no truncation on either side)."""
    torch.manual_seed(1)
    cfg = Config.from_preset("tiny", vocab_size=tok.vocab_size, block_size=256, head_bias=False)
    return GrowLM(cfg, Substrate.build("glyph", "compact", cfg.d_model)).eval()


@pytest.fixture
def offline(monkeypatch, tmp_path, data_root):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("GROWLM_EVAL_DATA", str(data_root))


def _lm_eval(model: str, model_args: str, tasks, limit=None) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)  # indexing lm-eval's own is slow
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks), limit=limit,
                                   task_manager=manager, batch_size=4, device="cpu")["results"]


def _agree(lm_res: dict, ours: dict, tasks) -> None:
    for task in tasks:
        mine = ours["results"][task]["loglik"]
        theirs = lm_res[f"growlm_{task}"]
        assert theirs["acc,none"] == pytest.approx(mine["acc"]["value"]), task
        if task != "winogrande":  # lm-eval's winogrande reports acc only
            assert theirs["acc_norm,none"] == pytest.approx(mine["acc_norm"]["value"]), task


def test_every_growlm_task_is_shipped():
    assert {p.stem for p in TASKS_DIR.glob("growlm_*.yaml")} == set(TASK_NAMES)
    assert len(TASK_NAMES) == len(MC_TASKS) == 12


def test_lm_eval_growlm_model_agrees_with_growlm_eval(model, tok, offline, data_root, tmp_path):
    import growlm.evaluate.lm_eval_adapter  # noqa: F401  registers "growlm"
    from growlm.model.saved import save_model

    model_dir = save_model(model, tmp_path / "model")
    res = _lm_eval("growlm", f"pretrained={model_dir}", TASK_NAMES)
    ours = evaluate(model, tok, list(MC_TASKS), data_dir=data_root, progress=False)
    _agree(res, ours, MC_TASKS)
    assert {t: ours["results"][t]["loglik"]["n"] for t in MC_TASKS}["winogrande"] == 1


def test_lm_eval_hf_export_agrees_with_growlm_eval(model, tok, offline, data_root, tmp_path):
    pytest.importorskip("transformers")
    from growlm.export.hf import export_hf
    from growlm.model.saved import save_model

    export = export_hf(save_model(model, tmp_path / "model"), tmp_path / "hf")
    tasks = ("arc_easy", "sciq", "winogrande")
    res = _lm_eval("hf", f"pretrained={export},dtype=float32", [f"growlm_{t}" for t in tasks], limit=10)
    _agree(res, evaluate(model, tok, list(tasks), limit=10, data_dir=data_root, progress=False), tasks)


def test_lm_eval_hf_reads_a_widened_stock_export(tok, offline, data_root, tmp_path):
    """A paper-block model with an LM-head bias (as every shipped recipe trains), exported with --arch stock as the
    widened GPTNeoXForCausalLM: lm-eval's plain `hf` model (no trust_remote_code) scores it as growlm does."""
    pytest.importorskip("transformers")
    from growlm.export.hf import export_hf
    from growlm.model.saved import save_model

    torch.manual_seed(2)
    cfg = Config.from_preset("tiny", vocab_size=tok.vocab_size, block_size=256, block="paper", head_bias=True)
    model = GrowLM(cfg, Substrate.build("glyph", "compact", cfg.d_model)).eval()
    with torch.no_grad():
        model.head.bias.normal_(0, 0.5)
    export = export_hf(save_model(model, tmp_path / "model"), tmp_path / "hf", arch="stock")
    tasks = ("arc_easy", "sciq")
    res = _lm_eval("hf", f"pretrained={export},dtype=float32", [f"growlm_{t}" for t in tasks], limit=10)
    _agree(res, evaluate(model, tok, list(tasks), limit=10, data_dir=data_root, progress=False), tasks)


def test_load_docs_reads_growlm_keys_only_and_names_bad_tasks(offline):
    docs = load_docs(growlm_task="arc_easy", pretrained="ignored", max_length=64)["test"]
    assert docs[0]["context"] == "Question: Which is hot?\nAnswer:" and docs[0]["choices"][1] == "fire"
    with pytest.raises(ValueError, match="unknown growlm task 'arc'"):
        load_docs(growlm_task="arc")
