"""``growlm generate RUN "prompt"``: sample from a growth run (any stage), a model or a composed model.

Tokens are printed as they are sampled. ``stream`` is the library side: it yields text pieces from
any growlm language model (``forward(idx, caches=, pos=)`` and ``new_caches``, as ``GrowLM`` and
``ComposedLM`` have), with temperature, top-k, top-p, a seed, an end-of-text token and stop strings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch


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
    from growlm.model import next_logits, sample_next

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
    caches = model.new_caches(1, idx.shape[1] + max_tokens)
    out: list[int] = []
    text, sent, pos = "", 0, 0
    for _ in range(max_tokens):
        logits = next_logits(model, idx, caches, pos)  # [1, V]
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # [1, 1]
        pos += idx.shape[1]
        idx = nxt
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
    from growlm.checkpoint import load_model, read_json, resolve_model_dir
    from growlm.substrate import Tokenizer

    d = stage_dir(Path(run), stage) if stage is not None else resolve_model_dir(run)
    meta = read_json(d / "model.json", "model description")
    vocab = (meta.get("substrate") or {}).get("vocab")
    if not vocab:
        raise ValueError(f"{d}/model.json names no substrate vocabulary (substrate.vocab); cannot pick a tokenizer")
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
    import json

    run = Path(run)
    rows = []
    for d in sorted(p for p in (run / "stages").glob("stage-*") if (p / "model.json").exists()):
        model, tok, _ = load_for_generation(d, device="cpu")
        text = "".join(stream(model, tok, prompt, max_tokens, temperature=0.7, top_k=40, seed=seed))
        rows.append({"stage": int(d.name.split("-")[1]), "depth": len(model.blocks), "prompt": prompt,
                     "sample": text, "max_tokens": max_tokens, "temperature": 0.7, "top_k": 40, "seed": seed})
    from growlm.fileio import atomic_write_text

    atomic_write_text(run / "samples.json", json.dumps(rows, indent=1, ensure_ascii=False))
    return rows


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.file:
        raise ValueError("give the prompt as an argument or with --file, not both")
    if args.file:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"--file {args.file} is not UTF-8 text") from None
    if args.prompt is not None:
        return args.prompt
    if sys.stdin.isatty():
        raise ValueError('give a prompt: growlm generate RUN "Once upon a time", --file PROMPT.txt, or pipe it in')
    return sys.stdin.read()


def _generate(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    prompt = _prompt(args)
    model, tok, what = load_for_generation(args.run, args.stage, args.device)
    print(what, file=sys.stderr)
    sys.stdout.write(prompt if args.echo else "")
    for piece in stream(model, tok, prompt, args.max_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                        args.stop):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a run (any --stage), a model or a composed model, "
                                        "streaming tokens as they come")
    p.add_argument("run", help="run, model or composed-model directory")
    p.add_argument("prompt", nargs="?", help="the prompt (or --file, or standard input)")
    p.add_argument("--file", help="read the prompt from this UTF-8 file")
    p.add_argument("--stage", type=int, help="sample from stages/stage-N of a growth run (its depth after stage N)")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, help="same seed, model and prompt give the same text")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=_generate)
