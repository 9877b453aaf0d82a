"""The ``growlm`` command as a careful user and an adversary try it: output directories, inputs, messages."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from growlm.cli import main
from growlm.model import Config, GrowLM
from growlm.model.saved import load_model, save_model
from growlm.substrate import Substrate


@pytest.fixture(scope="module")
def glyph() -> Substrate:
    return Substrate.build("glyph", "compact", 32)


def tiny_model(sub: Substrate, seed: int, n_layer: int = 1, **over) -> GrowLM:
    torch.manual_seed(seed)
    cfg = Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=sub.d_model, n_layer=n_layer, n_head=2,
                             **over)
    return GrowLM(cfg, sub).eval()


@pytest.fixture()
def runs(glyph, tmp_path) -> list[Path]:
    """Two expert run directories (final model under model/) plus a user file in the first."""
    out = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        save_model(tiny_model(glyph, i, head_bias=False), run / "model")
        (run / "plan.json").write_text("{}")
        out.append(run)
    return out


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_is_expert(run: Path, glyph: Substrate, seed: int) -> None:
    """The model saved in ``run`` loads with exactly the weights ``runs`` saved there."""
    loaded, saved = load_model(run).state_dict(), tiny_model(glyph, seed, head_bias=False).state_dict()
    assert loaded.keys() == saved.keys()
    for k in saved:
        assert torch.equal(loaded[k], saved[k]), k


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- data loss


def test_compose_refuses_a_directory_with_user_files(runs, tmp_path, capsys):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.tex").write_text("x")
    before = tree(d)
    assert main(["compose", str(runs[0]), str(runs[1]), "--out", str(d)]) == 2
    assert "thesis.tex" in error_of(capsys)
    assert tree(d) == before and (d / "sub").is_dir()


def test_compose_never_writes_into_an_input(runs, glyph, capsys):
    before = tree(runs[0])
    assert main(["compose", str(runs[0]), str(runs[1]), "--out", str(runs[0])]) == 2
    assert "input" in error_of(capsys)
    assert main(["compose", str(runs[0]), str(runs[1]), "--out", str(runs[0] / "model")]) == 2
    assert "input" in error_of(capsys)
    assert tree(runs[0]) == before
    assert_is_expert(runs[0], glyph, 0)


def test_compose_may_replace_its_own_output_only(runs, glyph, tmp_path, capsys):
    out = tmp_path / "composed"
    assert main(["compose", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert main(["compose", str(runs[0]), str(runs[1]), "--method", "prob", "--out", str(out)]) == 0
    assert load_model(out).method == "prob"
    grown = tmp_path / "run2" / "model"  # another run's final model, not an input
    save_model(tiny_model(glyph, 3), grown)
    before = tree(grown)
    assert main(["compose", str(runs[0]), str(runs[1]), "--out", str(grown)]) == 2
    assert "kind 'growlm'" in error_of(capsys)
    assert tree(grown) == before


def test_grow_refuses_a_directory_with_user_files(tiny_recipe, tmp_path, capsys):
    u = tmp_path / "u"
    (u / "model").mkdir(parents=True)
    (u / "model" / "my_weights.bin").write_text("p")
    (u / "plan.json").write_text("mine")
    (u / "plan.toml").write_text("mine too")
    before = tree(u)
    assert main(["grow", str(tiny_recipe(steps=1)), "--out", str(u), "--no-progress"]) == 2
    assert "growlm did not write" in error_of(capsys)
    assert tree(u) == before


def test_finetune_refuses_a_directory_with_user_files(runs, tmp_path, capsys):
    u = tmp_path / "u"
    (u / "model").mkdir(parents=True)
    (u / "model" / "my_weights.bin").write_text("p")
    (u / "metrics.jsonl").write_text("my notes\n")
    before = tree(u)
    composed = tmp_path / "c"
    assert main(["compose", str(runs[0]), str(runs[1]), "--method", "router", "--out", str(composed)]) == 0
    assert main(["finetune", str(composed), "--out", str(u), "--steps", "1"]) == 2
    assert "growlm did not write" in error_of(capsys)
    assert tree(u) == before
    assert main(["finetune", str(composed), "--out", str(composed), "--steps", "1"]) == 2
    assert "input" in error_of(capsys)


def test_export_refuses_foreign_files_and_force_touches_only_its_own(runs, tmp_path, capsys):
    pytest.importorskip("transformers")
    from growlm.export.hf import EXPORT_FILES, REMOTE_FILES

    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("my config")
    (out / "notes.txt").write_text("mine")
    os.chmod(out / "notes.txt", 0o600)
    assert main(["export", str(runs[0]), str(out)]) == 2
    assert "--force" in error_of(capsys)
    assert (out / "config.json").read_text() == "my config"
    assert main(["export", str(runs[0]), str(out), "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt_neox"
    assert (out / "notes.txt").read_text() == "mine"
    # what --force may overwrite (a stock architecture needs no modelling file of growlm's)
    assert {p.name for p in out.iterdir()} == (EXPORT_FILES - set(REMOTE_FILES)) | {"notes.txt"}
    assert stat.S_IMODE((out / "notes.txt").stat().st_mode) == 0o600
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # its own export may be rewritten without --force
    assert main(["export", str(runs[1]), str(tmp_path / "hf2")]) == 0
    assert main(["export", str(runs[1]), str(tmp_path / "hf2")]) == 0


def test_export_never_writes_into_its_input(runs, glyph, capsys):
    before = tree(runs[0])
    for target in (runs[0] / "model", runs[0], runs[0] / "model" / "hf"):
        assert main(["export", str(runs[0]), str(target), "--force"]) == 2
        assert "input" in error_of(capsys)
    assert tree(runs[0]) == before
    assert_is_expert(runs[0], glyph, 0)


def test_compose_twice_keeps_a_users_dot_old_directory(runs, tmp_path, capsys):
    p = tmp_path / "p"
    (p / ".E.old").mkdir(parents=True)
    (p / ".E.old" / "draft.txt").write_text("mine")
    for _ in range(2):
        assert main(["compose", str(runs[0]), str(runs[1]), "--out", str(p / "E")]) == 0
    assert (p / ".E.old" / "draft.txt").read_text() == "mine"
    assert sorted(x.name for x in p.iterdir()) == [".E.old", "E"]


def test_export_force_never_writes_into_a_model_checkpoint_or_run(runs, tiny_recipe, tmp_path, capsys):
    run = tmp_path / "grown"
    assert main(["grow", str(tiny_recipe(steps=2, ckpt_every=1)), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    targets = [run / "stages" / "stage-00", run / "checkpoints" / "latest", run, runs[1] / "model",
               run / "stages" / "stage-00" / "hf"]
    before = tree(run)
    for target in targets:
        assert main(["export", str(runs[0]), str(target), "--force"]) == 2
        assert "growlm" in error_of(capsys)
    assert tree(run) == before
    assert load_model(run / "stages" / "stage-00") is not None


def test_eval_out_refuses_user_files_and_model_directories(runs, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    model_json = runs[0] / "model" / "model.json"
    before = model_json.read_bytes()
    for target, why in ((notes, "not a file growlm wrote"), (model_json, "model directory"),
                        (runs[0] / "model" / "scores.json", "model directory")):
        assert main(["eval", str(runs[0]), "--tasks", "ppl", "--limit", "1", "--quiet", "--out", str(target)]) == 2
        assert why in error_of(capsys)
    assert notes.read_text() == "my notes" and model_json.read_bytes() == before
    assert not (runs[0] / "model" / "scores.json").exists()
    out = tmp_path / "scores.json"  # its own earlier result may be replaced
    for _ in range(2):
        assert main(["eval", str(runs[0]), "--tasks", "ppl", "--limit", "1", "--quiet", "--out", str(out)]) == 0
    assert "results" in json.loads(out.read_text())


def test_experiment_report_refuses_a_users_file(tmp_path, capsys):
    thesis = tmp_path / "thesis.tex"
    thesis.write_text("\\documentclass{article}")
    assert main(["experiment", "report", "--out", str(thesis)]) == 2
    assert "not a file growlm wrote" in error_of(capsys)
    assert thesis.read_text() == "\\documentclass{article}"


@pytest.mark.parametrize("command", [["demo"], ["compose-study"]])
def test_demo_and_study_refuse_a_directory_with_user_files(command, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.tex").write_text("mine")
    assert main([*command, "--out", str(d), "--no-progress"]) == 2
    assert "thesis.tex" in error_of(capsys)
    assert [x.name for x in d.iterdir()] == ["thesis.tex"]


def test_prepare_and_experiment_refuse_outputs_inside_their_inputs(tiny_corpus, tiny_data, tmp_path, capsys):
    assert main(["prepare", str(tiny_corpus), "--out", str(tiny_corpus / "tokens")]) == 2
    assert "input" in error_of(capsys)
    assert not (tiny_corpus / "tokens").exists()
    before = tree(tiny_data)
    assert main(["experiment", "depth", "--quick", "--seeds", "1", "--data", str(tiny_data), "--out",
                 str(tmp_path / "e"), "--work", str(tiny_data / "work"), "--no-progress"]) == 2
    assert "input" in error_of(capsys)
    assert tree(tiny_data) == before


# --------------------------------------------------------------------------- messages


def test_resume_of_a_missing_run_says_so(tmp_path, capsys):
    assert main(["grow", "--resume", str(tmp_path / "NOPE")]) == 2
    err = error_of(capsys)
    assert "NOPE" in err and "does not exist" in err and "plan.json" not in err


def test_recipe_that_is_not_utf8_names_the_file(tmp_path, capsys):
    p = tmp_path / "latin1.toml"
    p.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    assert main(["plan", str(p)]) == 2
    err = error_of(capsys)
    assert str(p) in err and "UTF-8" in err


def test_permission_error_names_the_file_without_traceback(tmp_path, capsys, monkeypatch):
    from growlm.training import plan

    p = tmp_path / "secret.toml"
    p.write_text('name = "x"\n')

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(plan.Path, "read_text", denied)
    assert main(["plan", str(p)]) == 2
    err = error_of(capsys)
    assert str(p) in err and "Permission denied" in err


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in error_of(capsys)
    with pytest.raises(FileNotFoundError):
        main(["--debug", "plan", str(tmp_path / "missing.toml")])
    with pytest.raises(FileNotFoundError):
        main(["plan", str(tmp_path / "missing.toml"), "--debug"])


def test_debug_flag_after_a_nested_subcommand(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["substrate", "info", "--vocab", str(tmp_path / "nope"), "--debug"])


def test_killed_exports_staging_is_cleared_and_a_live_ones_kept(runs, tmp_path, capsys):
    pytest.importorskip("transformers")
    import subprocess

    out = tmp_path / "hf"
    assert main(["export", str(runs[0]), str(out)]) == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / f".growlm-staging.{dead.pid}.abc"
    live = out / f".growlm-staging.{os.getpid()}.xyz"
    for d in (stale, live):
        d.mkdir()
        (d / "config.json").write_text("half written")
    assert main(["export", str(runs[0]), str(out)]) == 0
    assert not stale.exists() and (live / "config.json").read_text() == "half written"


def test_unexpected_errors_are_short_too(monkeypatch, capsys):
    from growlm.commands import grow

    def boom(args):
        raise RuntimeError("something broke")

    monkeypatch.setattr(grow, "_plan", boom)
    assert main(["plan", "demo"]) == 1
    err = error_of(capsys)
    assert "something broke" in err and "--debug" in err


def test_validation_size_error_quotes_the_counts_it_used(runs, tmp_path, capsys):
    composed = tmp_path / "c"
    assert main(["compose", str(runs[0]), str(runs[1]), "--method", "router", "--out", str(composed)]) == 0
    assert main(["finetune", str(composed), "--out", str(tmp_path / "ft"), "--steps", "1", "--seq-len", "32",
                 "--val-tokens", "20"]) == 2
    err = error_of(capsys)
    assert "uses 20 of" in err and "seq_len + 1 = 33" in err and "--val-tokens" in err


def test_finetune_never_takes_over_a_growth_run(runs, tiny_recipe, tmp_path, capsys):
    from growlm.training.run import grow
    from growlm.util.fileio import MARKER

    run = tmp_path / "grown"
    grow(tiny_recipe(steps=1), run, progress=False, log=lambda *a: None)
    composed = tmp_path / "c"
    assert main(["compose", str(runs[0]), str(runs[1]), "--method", "router", "--out", str(composed)]) == 0
    for marked in (True, False):  # a run of today, and one written before growlm marked its outputs
        if not marked:
            (run / MARKER).unlink()
        before = tree(run)
        assert main(["finetune", str(composed), "--out", str(run), "--steps", "1"]) == 2
        assert str(run) in error_of(capsys)
        assert tree(run) == before


def test_experiment_only_seed_writes_that_seed_and_says_how_to_summarise(tmp_path, capsys):
    from growlm.experiments import framework

    framework.register(framework.Study(name="toy-cli", title="t", claim="c", metrics=("loss",),
                                       run=lambda ctx: [{"arm": "a", "loss": float(ctx.seed)}]))
    try:
        out = tmp_path / "x"
        assert main(["experiment", "toy-cli", "--quick", "--only-seed", "3", "--out", str(out)]) == 2
        assert "--only-seed must be one of the seeds 0..2, got 3" in error_of(capsys) and not out.exists()
        assert main(["experiment", "toy-cli", "--quick", "--only-seed", "1", "--out", str(out), "--no-progress"]) == 0
        assert "seed-1.json" in capsys.readouterr().out
        assert sorted(p.name for p in out.glob("*.json")) == ["seed-1.json"]
        assert json.loads((out / "seed-1.json").read_text())["command"].endswith("--only-seed 1 --out " + str(out))
    finally:
        framework.STUDIES.pop("toy-cli", None)


def test_compose_of_experts_with_their_own_embeddings_needs_the_flag(glyph, tmp_path, capsys):
    """Experts that trained their own token tables are refused (nothing written) unless --own-embeddings is given;
    with it, each expert embeds its input with its own table: the average of their own logits."""
    experts = []
    for i in range(2):
        m = tiny_model(glyph, i, trainable_embedding=True, embedding_init="random")
        save_model(m, tmp_path / f"learned{i}")
        experts.append(m)
    args = ["compose", str(tmp_path / "learned0"), str(tmp_path / "learned1"), "--out", str(tmp_path / "c")]
    assert main(args) == 2
    assert "embedding mismatch" in (err := error_of(capsys)) and "--own-embeddings" in err
    assert not (tmp_path / "c").exists()
    assert main([*args, "--own-embeddings"]) == 0
    composed = load_model(tmp_path / "c")
    assert composed.own_embeddings
    x = torch.randint(0, glyph.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(composed(x), (experts[0](x) + experts[1](x)) / 2, atol=1e-5)


# --------------------------------------------------------------------------- clear errors before work (issue 22, 3)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_generate_refuses_a_non_finite_temperature(runs, value, capsys):
    assert main(["generate", str(runs[0]), "hi", "--temperature", value, "--max-new-tokens", "2"]) == 2
    assert "--temperature must be a finite number >= 0" in error_of(capsys)


def test_eval_refuses_a_context_longer_than_the_model_was_built_for(runs, capsys):
    block = load_model(runs[0]).cfg.block_size
    assert main(["eval", str(runs[0]), "--tasks", "ppl", "--limit", "1", "--quiet", "--max-length", "100000"]) == 2
    assert f"max_length 100000 is longer than the model's block_size {block}" in error_of(capsys)


def test_a_failed_tensor_write_names_the_file(glyph, tmp_path):
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
import torch
from growlm.model import Config, GrowLM
from growlm.model.saved import save_model
from growlm.substrate import Substrate
sub = Substrate.build("glyph", "compact", 32)
model = GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_layer=1, n_head=2), sub)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    save_model(model, {str(tmp_path / "m")!r})
except OSError as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert f"{tmp_path}/.m." in r.stdout and "model.safetensors could not be written" in r.stdout, r.stdout + r.stderr
    assert "File too large" in r.stdout and "is the disk full" in r.stdout
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []


def test_resume_refuses_before_work(tiny_recipe, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["grow", str(tiny_recipe(steps=2, ckpt_every=1)), "--out", str(run), "--no-progress"]) == 0
    shutil.rmtree(run / "model")
    (run / "stages" / "stage-01" / "notes.txt").write_text("mine")  # a user file inside growlm's own output
    metrics = (run / "metrics.jsonl").read_bytes()
    assert main(["grow", "--resume", str(run), "--no-progress"]) == 2
    assert "notes.txt" in error_of(capsys)
    assert (run / "metrics.jsonl").read_bytes() == metrics and not (run / "model").exists()
    (run / "stages" / "stage-01" / "notes.txt").unlink()
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):  # as a read-only directory answers (root ignores chmod, so simulate it)
        if dir is not None and Path(dir).resolve() == run.resolve():
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["grow", "--resume", str(run), "--no-progress"]) == 2
    assert f"{run} is not writable" in error_of(capsys)
    assert (run / "metrics.jsonl").read_bytes() == metrics and not (run / "model").exists()
