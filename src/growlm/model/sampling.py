"""Sampling text from any growlm language model: a stream of text pieces, and seeded samples by depth.

``stream`` yields text pieces from a ``GrowLM`` or ``ComposedLM`` (``forward(idx, caches=, pos=)`` and
``new_caches``), with temperature, top-k, top-p, a seed, an end-of-text token and stop strings;
``load_for_generation`` opens a growth run (any stage), a model or a composed model with its tokenizer;
``depth_samples`` writes the demo's samples by depth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from growlm.model.model import decode, model_logits
from growlm.model.saved import load_model, read_model_meta, resolve_model_dir
from growlm.substrate import Tokenizer
from growlm.util.fileio import atomic_write_text


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that could be the start of a stop string (not printed yet)."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    return n


@torch.no_grad()
def stream(model: torch.nn.Module, tokenizer, prompt: str, max_tokens: int = 200, temperature: float = 0.8,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: list[str] | None = None, device: str | torch.device | None = None) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece; ends at ``max_tokens``, end of text or a stop string
    (the stop string itself is not yielded). Temperature 0 is greedy."""
    stops = [s for s in (stop or []) if s]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:  # an empty prompt starts a new document
        ids = [tokenizer.eos_id]
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # a fresh random seed, leaving torch's global generator alone
    else:
        generator.manual_seed(seed)
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out: list[int] = []
    text, sent = "", 0
    for nxt in decode(model_logits(model, idx, max_tokens), 1, max_tokens, temperature, top_k, top_p, generator,
                      tokenizer.eos_id, device):
        token = int(nxt)
        if token == tokenizer.eos_id:
            break
        out.append(token)
        text = tokenizer.decode(out)
        hits = [i for i in (text.find(s, max(0, sent - len(s))) for s in stops) if i >= 0]
        if hits:
            yield text[sent:min(hits)]
            return
        safe = len(text) - _held_back(text, stops)
        # an incomplete byte sequence decodes to U+FFFD: wait for the rest of the character
        safe = min(safe, len(text.rstrip("\ufffd")))
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:
        yield text[sent:]


def stage_dir(run: Path, stage: int) -> Path:
    """``RUN/stages/stage-NN``, or an error listing the stages the run has."""
    stages = sorted(p for p in (run / "stages").glob("stage-*") if (p / "model.json").exists())
    if not stages:
        raise FileNotFoundError(f"--stage: {run} has no stages/stage-NN (it is not a growth run directory)")
    d = run / "stages" / f"stage-{stage:02d}"
    if stage < 0 or not (d / "model.json").exists():
        raise ValueError(f"--stage {stage}: {run} has stages {[int(p.name.split('-')[1]) for p in stages]}")
    return d


def load_for_generation(run: str | Path, stage: int | None = None, device: str | None = None):
    """The model (growth run, stage, model dir or composed model), its tokenizer and a one-line description."""
    d = stage_dir(Path(run), stage) if stage is not None else resolve_model_dir(run)
    meta = read_model_meta(d)
    vocab = (meta.get("substrate") or {}).get("vocab")
    if not vocab:
        raise ValueError(f"{d}: the model description names no substrate vocabulary (substrate.vocab); "
                         "cannot pick a tokenizer")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(d, map_location=device).to(device)
    if meta.get("kind") == "composed":
        what = f"composed ({meta.get('method')}) of {len(meta.get('experts') or [])} experts"
    else:
        what = f"depth {len(model.blocks)}"
    return model, Tokenizer.load(vocab), f"{d}: {what}"


SAMPLE_PROMPT = "The history of"
SAMPLE_MAX_TOKENS = 48  # tokens per depth sample in the demo


def depth_samples(run: str | Path, prompt: str = SAMPLE_PROMPT, max_tokens: int = SAMPLE_MAX_TOKENS,
                  seed: int = 0) -> list[dict]:
    """A short seeded sample from every stage of a growth run, written to ``RUN/samples.json`` for the report."""
    run = Path(run)
    rows = []
    for d in sorted(p for p in (run / "stages").glob("stage-*") if (p / "model.json").exists()):
        model, tok, _ = load_for_generation(d, device="cpu")
        text = "".join(stream(model, tok, prompt, max_tokens, temperature=0.7, top_k=40, seed=seed))
        rows.append({"stage": int(d.name.split("-")[1]), "depth": len(model.blocks), "prompt": prompt,
                     "sample": text, "max_tokens": max_tokens, "temperature": 0.7, "top_k": 40, "seed": seed})
    atomic_write_text(run / "samples.json", json.dumps(rows, indent=1, ensure_ascii=False))
    return rows
