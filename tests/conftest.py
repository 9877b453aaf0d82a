"""Shared fixtures: an isolated cache, a tiny prepared corpus and a tiny growth recipe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Substrates and prepared data go to a per-session directory, not the user's cache."""
    old = os.environ.get("GROWLM_CACHE")
    os.environ["GROWLM_CACHE"] = str(tmp_path_factory.mktemp("growlm-cache"))
    yield
    if old is None:
        os.environ.pop("GROWLM_CACHE", None)
    else:
        os.environ["GROWLM_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small en/ru/zh corpus cut from the embedded default corpus."""
    from growlm.data.documents import default_corpus_dir, load_documents

    root = tmp_path_factory.mktemp("corpus")
    for lang in ("en", "ru", "zh"):
        docs = []
        for _, text in load_documents(default_corpus_dir(), lang):
            docs.append(text[:3000])
            if len(docs) == 40:
                break
        with open(root / f"{lang}.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus tokenised with the compact vocabulary (large validation share)."""
    from growlm.data.prepare import prepare

    out = tmp_path_factory.mktemp("tokens")
    prepare(tiny_corpus, out, vocab="compact", val_fraction=0.2)
    return out


@pytest.fixture(scope="session")
def load_benchmark():
    """``load(name)``: the script ``benchmarks/NAME.py`` imported as a module (its ``main`` called in-process)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


TINY_RECIPE = """
name = "tiny"
[model]
preset = "tiny"
d_model = 32
n_head = 2
n_layer = 0
block_size = 32
[substrate]
kind = "glyph"
vocab = "compact"
[data]
path = "{data}"
[data.mixtures]
en_ru = {{ en = 1, ru = 1 }}
[train]
batch_size = 4
seq_len = 32
lr = 3e-3
warmup_steps = 2
val_tokens = 256
val_every = {val_every}
ckpt_every = {ckpt_every}
log_every = 2
[[stages]]
name = "g1"
add = 1
steps = {steps}
[[stages]]
name = "lora"
train_newest = 0
lora = {{ rank = 2, alpha = 4 }}
steps = {steps}
mixture = "en_ru"
[[stages]]
name = "g2"
add = 1
init = "identity"
steps = {steps}
"""


@pytest.fixture
def tiny_recipe(tiny_data, tmp_path):
    """Write the tiny 3-stage recipe (grow, LoRA, grow) and return its path; kwargs via .format."""

    def make(steps: int = 6, ckpt_every: int = 4, val_every: int = 0, name: str = "tiny.toml") -> Path:
        p = tmp_path / name
        p.write_text(TINY_RECIPE.format(data=tiny_data, steps=steps, ckpt_every=ckpt_every, val_every=val_every))
        return p

    return make


@pytest.fixture(scope="session")
def kill_after_checkpoint():
    """``kill(cli_args, run, key, at)``: start ``python -m growlm.cli *cli_args`` writing to ``run`` and SIGKILL it
    once its checkpoint's ``run[key]`` reaches ``at``; returns whether it was killed before finishing."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    from growlm.training.checkpoint import find_checkpoint

    def kill(cli_args: list[str], run: Path, key: str, at: int, timeout: float = 240) -> bool:
        # the child computes with this process's thread count: CPU matmuls sum in a thread-count-dependent order,
        # and the test compares the killed run with one made here (OMP_NUM_THREADS=1 in the environment with 2
        # threads set in this process made them differ in the last bit)
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        proc = subprocess.Popen([sys.executable, "-m", "growlm.cli", *cli_args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and proc.poll() is None:
                ckpt = find_checkpoint(run)
                try:
                    step = json.loads((ckpt / "state.json").read_text())["run"][key] if ckpt else 0
                except (OSError, ValueError):  # caught mid-swap: look again
                    step = 0
                if step >= at:
                    os.kill(proc.pid, signal.SIGKILL)
                    return True
                time.sleep(0.005)
            return False
        finally:
            proc.wait()

    return kill
