"""``growlm generate RUN "prompt"``: sample from a growth run (any stage), a model or a composed model.

Tokens are printed as they are sampled (``growlm.model.sampling.stream``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from growlm.commands.options import add_device, deprecated_alias
from growlm.model.sampling import load_for_generation, stream


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
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    prompt = _prompt(args)
    model, tok, what = load_for_generation(args.run, args.stage, args.device)
    print(what, file=sys.stderr)
    sys.stdout.write(prompt if args.echo else "")
    for piece in stream(model, tok, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
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
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to sample after the prompt")
    deprecated_alias(p, "--max-tokens", "--max-new-tokens", "max_new_tokens", type=int)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only (default: all)")
    p.add_argument("--top-p", type=float, help="sample within the smallest set of tokens whose probability "
                   "reaches p (default: all)")
    p.add_argument("--seed", type=int, help="same seed, model and prompt give the same text")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    add_device(p)
    p.set_defaults(func=_generate)
