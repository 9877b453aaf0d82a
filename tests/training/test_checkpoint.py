"""Model directories and checkpoints: integrity, substrate binding, model kinds, permissions."""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import growlm.model.saved as ck
import growlm.training.checkpoint as tck
from growlm.model import Config, GrowLM
from growlm.model.composition import compose
from growlm.model.saved import CheckpointError, load_model, save_model
from growlm.substrate import Substrate, SubstrateMismatchError


@pytest.fixture(scope="module")
def glyph() -> Substrate:
    return Substrate.build("glyph", "compact", 32)


@pytest.fixture(scope="module")
def binary() -> Substrate:
    return Substrate.build("binary", "compact", 32)


def tiny(sub: Substrate, seed: int = 0, n_layer: int = 1) -> GrowLM:
    torch.manual_seed(seed)
    cfg = Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=sub.d_model, n_layer=n_layer, n_head=2)
    return GrowLM(cfg, sub).eval()


def flip_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(glyph, tmp_path):
    save_model(tiny(glyph), tmp_path / "m")
    flip_middle(tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*SHA-256"):
        load_model(tmp_path / "m")


def test_a_copied_description_cannot_relabel_the_substrate(glyph, binary, tmp_path):
    save_model(tiny(glyph, 0), tmp_path / "g")
    save_model(tiny(binary, 0), tmp_path / "b")
    (tmp_path / "g" / "model.json").write_bytes((tmp_path / "b" / "model.json").read_bytes())
    with pytest.raises((CheckpointError, SubstrateMismatchError), match="substrate"):
        load_model(tmp_path / "g")
    # even with the hash patched to match, the weights name their own substrate
    meta = json.loads((tmp_path / "g" / "model.json").read_text())
    meta["files"]["model.safetensors"]["sha256"] = ck.sha256_file(tmp_path / "g" / "model.safetensors")
    (tmp_path / "g" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="substrate"):
        load_model(tmp_path / "g")


def test_composed_model_is_hashed_and_bound_too(glyph, tmp_path):
    save_model(compose([tiny(glyph, 1), tiny(glyph, 2, 2)], "router"), tmp_path / "c")
    assert load_model(tmp_path / "c").method == "router"
    flip_middle(tmp_path / "c" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(tmp_path / "c")


def unhash(desc: Path) -> None:
    """Drop the hash records from a model.json or state.json, as an older growlm wrote them."""
    meta = json.loads(desc.read_text())
    del meta["files"]
    desc.write_text(json.dumps(meta))


def test_old_model_without_a_hash_is_refused_unless_trusted(glyph, tmp_path):
    m = tiny(glyph)
    save_model(m, tmp_path / "m")
    unhash(tmp_path / "m" / "model.json")
    with pytest.raises(CheckpointError, match="no recorded SHA-256.*growlm rehash.*--trust-unhashed"):
        load_model(tmp_path / "m")
    with ck.trusting_unhashed(), pytest.warns(ck.IntegrityWarning, match="no recorded SHA-256"):
        again = load_model(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
    with pytest.raises(CheckpointError, match="no recorded SHA-256"):  # trust ends with the block
        load_model(tmp_path / "m")


def test_unhashed_files_with_flipped_bytes_are_refused_and_rehash_records_good_ones(glyph, tmp_path, capsys):
    from growlm.cli import main

    save_model(tiny(glyph), tmp_path / "m")
    unhash(tmp_path / "m" / "model.json")
    flip_middle(tmp_path / "m" / "model.safetensors", 16)  # finite garbage or NaN: either way unverifiable
    assert main(["generate", str(tmp_path / "m"), "hi", "--max-tokens", "2"]) == 2
    assert "no recorded SHA-256" in capsys.readouterr().err
    save_model(tiny(glyph), tmp_path / "good")
    unhash(tmp_path / "good" / "model.json")
    assert main(["rehash", str(tmp_path / "good")]) == 0
    assert "recorded the SHA-256 of model.safetensors" in capsys.readouterr().out
    load_model(tmp_path / "good")  # verified again from now on
    flip_middle(tmp_path / "good" / "model.safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "good")
    assert main(["rehash", str(tmp_path / "good")]) == 2  # a recorded hash is checked, never replaced
    assert "corrupt" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "good")


def test_rehash_refuses_non_finite_weights(glyph, tmp_path, capsys):
    from growlm.cli import main

    m = tiny(glyph)
    with torch.no_grad():
        m.head.weight[0, 0] = float("nan")
    save_model(m, tmp_path / "m")
    unhash(tmp_path / "m" / "model.json")
    assert main(["rehash", str(tmp_path / "m")]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert "files" not in json.loads((tmp_path / "m" / "model.json").read_text())


def test_unreadable_weights_are_reported_as_unreadable(glyph, tmp_path, monkeypatch):
    save_model(tiny(glyph), tmp_path / "m")
    target = tmp_path / "m" / "model.safetensors"
    real_open = open

    def denied(file, *a, **k):  # the OS refuses, as for a 0000 file read by a non-root user
        if Path(file) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(CheckpointError, match="cannot be read") as e:
        load_model(tmp_path / "m")
    assert "does not exist" not in str(e.value) and str(target) in str(e.value)


def test_missing_weights_say_so(glyph, tmp_path):
    save_model(tiny(glyph), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "m")


class Doubler(nn.Module):
    """A toy model kind: proves a kind registers its own save and load."""

    kind = "test-doubler"

    def __init__(self, n: int = 3):
        super().__init__()
        self.w = nn.Parameter(torch.arange(float(n)))

    def save_meta(self) -> dict:
        return {"kind": self.kind, "n": self.w.numel(), "substrate_fingerprint": "none"}

    @classmethod
    def from_saved(cls, d, meta, state, substrate=None):
        m = cls(meta["n"])
        m.load_state_dict(state)
        return m


def test_a_model_kind_registers_how_it_saves_and_loads(tmp_path):
    with pytest.raises(CheckpointError, match="Doubler"):
        save_model(Doubler(), tmp_path / "x")
    ck.register_kind(Doubler)
    try:
        m = Doubler(4)
        save_model(m, tmp_path / "d")
        assert torch.equal(load_model(tmp_path / "d").w, m.w)
    finally:
        ck.KINDS.pop(Doubler.kind)
    with pytest.raises(CheckpointError, match="unknown model kind 'test-doubler'"):
        load_model(tmp_path / "d")


def test_checkpoint_module_names_no_model_kind():
    tree = ast.parse(inspect.getsource(ck))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {"growlm.model.model", "growlm.model.composition"} & imported
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not {"growlm", "composed"} & strings


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_follow_the_umask(glyph, tmp_path, mask):
    old = os.umask(mask)
    try:
        save_model(tiny(glyph), tmp_path / "m")
        tck.save_checkpoint(tmp_path / "ckpt", tiny(glyph), None, {"run": {}, "substrate_fingerprint": "x"},
                           {"torch": torch.get_rng_state()})
    finally:
        os.umask(old)
    for p in [tmp_path / "m", tmp_path / "ckpt"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~mask, p
        for f in p.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


def assert_same_checkpoint(state: dict, weights: dict, opt_state: dict | None, rng: dict, model: nn.Module,
                           opt: torch.optim.Optimizer, rng_state: torch.Tensor) -> None:
    """A loaded checkpoint holds exactly the model, optimiser, RNG and run state that were saved."""
    assert state["run"] == {"step": 1} and state["substrate_fingerprint"] == model.substrate_fingerprint
    sd = model.state_dict()
    assert weights.keys() == sd.keys() and all(torch.equal(weights[k], sd[k]) for k in sd)
    saved = opt.state_dict()
    assert opt_state["param_groups"] == json.loads(json.dumps(saved["param_groups"]))
    assert opt_state["state"].keys() == saved["state"].keys()
    for i, st in saved["state"].items():
        assert opt_state["state"][i].keys() == st.keys()
        for k, v in st.items():
            assert torch.equal(opt_state["state"][i][k], torch.as_tensor(v)), (i, k)
    assert rng.keys() == {"torch"} and torch.equal(rng["torch"], rng_state)


def test_training_checkpoint_files_are_hashed(glyph, tmp_path):
    m = tiny(glyph)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).backward()
    opt.step()
    rng_state = torch.get_rng_state()
    tck.save_checkpoint(tmp_path / "c", m, opt, {"run": {"step": 1}, "substrate_fingerprint": glyph.fingerprint},
                       {"torch": rng_state})
    state, weights, o, rng = tck.load_checkpoint(tmp_path / "c")
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors", "rng.safetensors"}
    assert_same_checkpoint(state, weights, o, rng, m, opt, rng_state)
    for name in state["files"]:
        tck.save_checkpoint(tmp_path / "c", m, opt, {"run": {"step": 1}, "substrate_fingerprint": glyph.fingerprint},
                           {"torch": rng_state})
        assert_same_checkpoint(*tck.load_checkpoint(tmp_path / "c"), m, opt, rng_state)  # re-saved: the same again
        flip_middle(tmp_path / "c" / name, 16)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            tck.load_checkpoint(tmp_path / "c")


def test_save_replaces_only_its_own_model_directory(glyph, tmp_path):
    d = tmp_path / "m"
    save_model(tiny(glyph, 0), d)
    (d / "eval.json").write_text("{}")  # growlm eval writes beside the model
    save_model(tiny(glyph, 1), d)
    (d / "notes.txt").write_text("mine")
    with pytest.raises(ck.OutputDirError, match="notes.txt"):
        save_model(tiny(glyph, 2), d)
    assert (d / "notes.txt").read_text() == "mine"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(d)


def test_resume_from_an_unhashed_checkpoint_needs_trust_or_rehash(tiny_recipe, tmp_path, capsys):
    from growlm.cli import main

    run = tmp_path / "run"
    recipe = tiny_recipe(steps=2, ckpt_every=1)
    assert main(["grow", str(recipe), "--out", str(run), "--no-progress"]) == 0
    shutil.rmtree(run / "model")  # as if it stopped after its last checkpoint
    unhash(run / "checkpoints" / "latest" / "state.json")
    assert main(["grow", "--resume", str(run), "--no-progress"]) == 2
    assert "no recorded SHA-256" in capsys.readouterr().err
    assert main(["rehash", str(run)]) == 0
    assert "optimizer.safetensors" in capsys.readouterr().out
    assert main(["grow", "--resume", str(run), "--no-progress"]) == 0
    shutil.rmtree(run / "model")
    unhash(run / "checkpoints" / "latest" / "state.json")
    with pytest.warns(ck.IntegrityWarning):
        assert main(["--trust-unhashed", "grow", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "model" / "model.json").is_file()
