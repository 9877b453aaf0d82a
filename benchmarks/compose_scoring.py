"""Scoring a composed model: ComposedLM.token_nll against the row-by-row scoring it replaced, same run.

For each composition method, one batch of windows is scored both ways (repeats interleaved, so a shared
machine's noise hits both alike): ``row_by_row`` is how bits-per-character scoring ran before (one window at
a time through ``forward(x, y)``, which for ``prob`` and ``posterior`` materialised the composed [1, T, V]
log-probabilities); ``token_nll`` is what scoring (validation, ``growlm eval --tasks ppl``) runs now: the
whole batch, and for every method but ``adapter`` no [B, T, V] tensor. Prints JSON: median and best seconds
of each, the speed-up, and the largest difference of a window's loss (nats per token).

    python benchmarks/compose_scoring.py                     # two demo-shape experts (d_model 128 x 4)
    python benchmarks/compose_scoring.py --repeats 9 --batch 16 --seq 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from growlm import Config, GrowLM
from growlm.model.composition import METHODS, compose
from growlm.model.composition_methods import Prob
from growlm.substrate import Substrate


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, print its JSON and return it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    sub = Substrate.build("glyph", "compact", args.d_model)
    experts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = Config.from_preset("demo", vocab_size=sub.vocab_size, d_model=args.d_model,
                                 n_head=max(1, args.d_model // 32), n_layer=args.n_layer, block_size=args.seq)
        experts.append(GrowLM(cfg, sub).eval())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, sub.vocab_size, (args.batch, args.seq + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    results = []
    for method in args.methods.split(","):
        model = compose(experts, method, [0.5, 0.5])

        @torch.no_grad()
        def before(model=model) -> torch.Tensor:  # bits-per-character scoring before token_nll: row by row
            rows = []
            for b in range(args.batch):
                xb, yb = x[b:b + 1], y[b:b + 1]
                if isinstance(model.combiner, Prob):  # prob, posterior: forward(x, y) was the mixture's cross-entropy
                    loss = F.cross_entropy(model(xb)[0].float(), yb[0])
                else:
                    loss = model(xb, yb)
                rows.append(float(loss) * args.seq)
            return torch.tensor(rows)

        def now(model=model) -> torch.Tensor:
            return model.token_nll(x, y).sum(1)

        diff = float((before() - now()).abs().max()) / args.seq  # per token; also the warm-up
        times: dict[str, list[float]] = {"row_by_row": [], "token_nll": []}
        for _ in range(args.repeats):
            for name, f in (("row_by_row", before), ("token_nll", now)):
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        results.append({"method": method, "seconds_median": {k: round(v, 4) for k, v in med.items()},
                        "seconds_best": {k: round(min(v), 4) for k, v in times.items()},
                        "speedup_median": round(med["row_by_row"] / med["token_nll"], 2),
                        "max_abs_diff_nats_per_token": diff})
    from growlm.experiments.framework import provenance
    from growlm.training.flops import _cpu_key

    prov = provenance()
    report = {"benchmark": "compose_scoring", "commit": prov["commit"], "dirty": prov["dirty"],
                      "machine": _cpu_key().split("|")[0], "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "python": platform.python_version(),
                      "shape": {"d_model": args.d_model, "n_layer": args.n_layer, "vocab": sub.vocab_size,
                                "batch": args.batch, "seq": args.seq, "experts": 2},
                      "repeats": args.repeats, "results": results}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
