"""The way back: ``growlm eval``, ``generate`` and ``compose`` accept a directory that ``growlm export`` wrote."""

from __future__ import annotations

import json

import pytest
import torch

from growlm.cli import main as cli_main
from growlm.export.hf import export_hf
from growlm.model import Config, GrowLM
from growlm.model.composition import compose
from growlm.model.saved import load_model, resolve_model_dir, save_model
from growlm.substrate import Substrate


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Two tiny models with trained-looking LM-head biases (growlm's modelling file), their model dirs and exports."""
    root = tmp_path_factory.mktemp("way-back")
    sub = Substrate.build("glyph", "compact", 32)
    out = []
    for seed, style in ((0, "paper"), (1, "llama")):
        torch.manual_seed(seed)
        m = GrowLM(Config.from_preset("tiny", block=style, d_model=32, n_layer=2, n_head=2), sub)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.2 * torch.randn_like(p))
        save_model(m, root / f"m{seed}")
        out.append((root / f"m{seed}", export_hf(root / f"m{seed}", root / f"hf{seed}")))
    return out


def test_generate_reads_an_export(dirs, capsys):
    (model_dir, export_dir), _ = dirs
    args = ["Hello", "--max-tokens", "8", "--temperature", "0"]
    assert cli_main(["generate", str(model_dir), *args]) == 0
    ours = capsys.readouterr().out
    assert cli_main(["generate", str(export_dir), *args]) == 0
    got = capsys.readouterr()
    assert got.out == ours and str(export_dir) in got.err and "depth 2" in got.err


def test_eval_reads_an_export(dirs, tmp_path):
    (model_dir, export_dir), _ = dirs
    text = tmp_path / "t.txt"
    text.write_text("The history of the city is long. Привет, мир. 你好，世界。", encoding="utf-8")
    scores = []
    for d in (model_dir, export_dir):
        assert cli_main(["eval", str(d), "--tasks", "ppl", "--ppl-data", str(text), "--no-progress",
                         "--out", str(tmp_path / f"{d.name}.json")]) == 0
        scores.append(json.loads((tmp_path / f"{d.name}.json").read_text()))
    assert scores[0]["results"]["ppl"] == scores[1]["results"]["ppl"]
    assert scores[1]["model"]["kind"] == "growlm" and scores[1]["model"]["depth"] == 2


def test_compose_reads_exports_and_a_composed_export_reads_back(dirs, tmp_path, capsys):
    (m0, e0), (m1, e1) = dirs
    assert resolve_model_dir(e0) == e0
    assert cli_main(["compose", str(e0), str(e1), "--method", "prob", "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    ref = compose([load_model(m0), load_model(m1)], "prob").eval()
    idx = torch.randint(0, 16384, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(idx)
        assert torch.equal(load_model(tmp_path / "c").eval()(idx), want)
        assert cli_main(["export", str(tmp_path / "c"), str(tmp_path / "hf-c"), "--verify"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["format"] == "growlm" and report["method"] == "prob" and report["max_abs_logit_diff"] <= 1e-5
        assert torch.equal(load_model(tmp_path / "hf-c").eval()(idx), want)


def test_an_export_is_not_exported_again(dirs, tmp_path):
    from growlm.export.hf import ExportError

    with pytest.raises(ExportError, match="already a Hugging Face export"):
        export_hf(dirs[0][1], tmp_path / "again")
