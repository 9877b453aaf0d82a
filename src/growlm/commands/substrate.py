"""``growlm substrate build|info`` and ``growlm tokenize``."""

from __future__ import annotations

import argparse
import json
import time


def _spec_args(p: argparse.ArgumentParser) -> None:
    from growlm.substrate import available_vocabularies
    from growlm.substrate.binary import LIFTS
    from growlm.substrate.substrate import KINDS

    p.add_argument("--kind", default="glyph", choices=list(KINDS), help="substrate kind")
    p.add_argument("--vocab", default="compact", help=f"one of {', '.join(available_vocabularies())}, "
                   "or a path to a vocabulary .json file (default: compact)")
    p.add_argument("--d-model", type=int, default=256, help="width of the substrate's vectors")
    p.add_argument("--bits", type=int, help="binary substrate: code length k (default ceil(log2 V))")
    p.add_argument("--lift", choices=list(LIFTS), help="binary substrate: how the k bits reach d_model "
                   "(default balanced; repeat = the author's plain 0/1 repetition)")
    p.add_argument("--cell", type=int, choices=[32, 64], help="glyph substrate: cell size in pixels "
                   "(default 32 up to d_model 1024, 64 beyond)")
    p.add_argument("--seed", type=int, help="random substrate: seed (default 0)")


def _build(args: argparse.Namespace) -> int:
    from growlm.substrate import Substrate

    opts = {k: getattr(args, k) for k in ("bits", "lift", "cell", "seed") if getattr(args, k) is not None}
    t = time.perf_counter()
    sub = Substrate.build(args.kind, args.vocab, args.d_model, cache=not args.no_cache, **opts)
    built = time.perf_counter() - t
    info = sub.info() if args.command_sub == "info" else {"spec": sub.spec.to_dict(), "fingerprint": sub.fingerprint,
                                                          "shape": list(sub.matrix.shape)}
    info["build_seconds"] = round(built, 2)
    print(json.dumps(info, indent=1))
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from growlm.substrate import Tokenizer

    tok = Tokenizer.load(args.vocab)
    ids = tok.encode(args.text)
    print(json.dumps({"vocab": tok.name, "ids": ids, "tokens": [tok.token_text(i) for i in ids],
                      "chars_per_token": round(len(args.text) / max(1, len(ids)), 3)}, ensure_ascii=False))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("substrate", help="build a substrate (cached on disk) or show its fingerprint and rank")
    s = p.add_subparsers(dest="command_sub", metavar="ACTION", required=True)
    for name, text in [("build", "build and cache; print spec and fingerprint"),
                       ("info", "build (or load) and print spec, fingerprint, golden hash, rank, explained "
                                "variance and distinct rows after the model's first norm")]:
        q = s.add_parser(name, help=text)
        _spec_args(q)
        q.add_argument("--no-cache", action="store_true", help="build even if cached; write no cache")
        q.set_defaults(func=_build)
    from growlm.substrate import available_vocabularies

    vocabs = ", ".join(available_vocabularies())
    p = sub.add_parser("tokenize", help="show the ids and tokens of a text",
                       description=f"Show the ids and tokens of a text. Vocabularies: {vocabs}.")
    p.add_argument("text", help="the text to tokenise")
    p.add_argument("--vocab", default="compact", help=f"one of {vocabs}, or a path to a vocabulary .json file "
                   "(default: compact)")
    p.set_defaults(func=_tokenize)
