"""``growlm compose EXPERT_RUN... --method ... [--window N] [--own-embeddings] --out DIR``: combine experts that share
a substrate."""

from __future__ import annotations

import argparse
import json


def parse_weights(text: str | None) -> list[float] | None:
    """'0.5,0.5' -> [0.5, 0.5]; None stays None (equal weights)."""
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers like 0.5,0.5, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from growlm.model.composition import compose_from_runs
    from growlm.model.composition_methods import METHODS, names_where
    from growlm.model.saved import check_model_output, resolve_model_dir, save_model
    from growlm.util.fileio import check_not_input

    inputs = [p for e in args.experts for p in (e, resolve_model_dir(e))]
    check_not_input(args.out, inputs, "--out")
    check_model_output(args.out, "composed")  # before any model is loaded
    if args.window and not METHODS[args.method].windowed:  # checked before any expert is loaded
        raise ValueError(f"--window applies to --method {' or '.join(names_where('windowed'))} only, "
                         f"not {args.method!r}")
    model = compose_from_runs(args.experts, args.method, parse_weights(args.weights), rank=args.rank,
                              train_heads=args.train_heads, window=args.window,
                              own_embeddings=args.own_embeddings)
    out = save_model(model, args.out)
    print(json.dumps({"method": model.method, "weights": [round(w, 6) for w in model.weights], "window": model.window,
                      "experts": [str(p) for p in args.experts],
                      "depths": [len(e.blocks) for e in model.experts],
                      "substrate_fingerprint": model.substrate_fingerprint,
                      "params": model.param_counts(), "out": str(out)}, indent=1))
    return 0


def add_parser(sub) -> None:
    from growlm.model.composition_methods import METHODS

    p = sub.add_parser("compose", help=f"combine experts on one substrate (methods: {', '.join(METHODS)})")
    p.add_argument("experts", nargs="+", metavar="EXPERT_RUN", help="model or run directories (same substrate)")
    p.add_argument("--method", default="average", choices=list(METHODS),
                   help="; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items()))
    p.add_argument("--weights", help="comma-separated expert weights, normalised to sum 1 (default: equal); the "
                   "prior for posterior")
    p.add_argument("--window", type=int, default=0, help="posterior: weigh the experts by their probabilities of "
                   "the last N tokens only (default 0: the whole text so far)")
    p.add_argument("--rank", type=int, default=8, help="adapter: rank of the shared logit projection")
    p.add_argument("--train-heads", action="store_true", help="leave the experts' LM heads trainable")
    p.add_argument("--own-embeddings", action="store_true", help="experts that trained their own token embeddings "
                   "(baselines with trainable_embedding): each embeds its input with its own table; refused "
                   "without this flag, since merging is meant for experts that share one frozen substrate")
    p.add_argument("--out", required=True, help="directory for the composed model: new, empty or an earlier "
                   "composed model (never one of the experts)")
    p.set_defaults(func=run)
