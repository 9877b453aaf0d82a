"""Rank, explained variance, distinct rows after the first norm and build time of every substrate kind; prints JSON.

    python benchmarks/substrate_stats.py --threads 2 --out docs/substrate_stats.json

Each substrate is built without the cache (the build time is a cold build, Unifont already parsed)
on the listed vocabularies at d_model 1024. ``distinct_after_*``: rows still distinct after
``F.layer_norm`` (the ``paper`` block's first read) or ``F.rms_norm`` (``llama``), rounded to 1e-4.
``explained_variance``: for glyph kinds the share of the pixels' variance kept by the top k
components, otherwise the matrix's own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from growlm.substrate import Substrate, unifont
from growlm.util.fileio import atomic_file
from growlm.util.provenance import git_commit

SETTINGS = [("glyph", {}), ("glyph16", {}), ("binary", {}), ("binary", {"lift": "repeat"}), ("random", {})]


def stats(kind: str, vocab: str, d_model: int, options: dict) -> dict:
    t = time.perf_counter()
    s = Substrate.build(kind, vocab, d_model, cache=False, **options)
    built = time.perf_counter() - t
    info = s.info()
    return {"kind": kind, "vocab": vocab, "d_model": d_model, "options": s.spec.options,
            "build_seconds": round(built, 1), "rank": info["rank"], "explained_variance": info["explained_variance"],
            "identical_rows": info["identical_rows"], "distinct_after_layer_norm": info["distinct_after_layer_norm"],
            "distinct_after_rms_norm": info["distinct_after_rms_norm"], "vocab_size": s.vocab_size,
            "content_sha256": s.content_sha256, "fingerprint": s.fingerprint}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", nargs="+", default=["bmp65k", "bvv241-2-3"])
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", nargs="+", help="only these kinds")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    unifont.load_unifont()  # parsed once, outside the timings
    rows = [stats(kind, vocab, args.d_model, opts) for vocab in args.vocab for kind, opts in SETTINGS
            if not args.kinds or kind in args.kinds]
    root = Path(__file__).resolve().parent.parent
    commit, dirty = git_commit(root)
    out = {"benchmark": "substrate_stats", "command": "python benchmarks/substrate_stats.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if v is not None and k != "out"),
           "commit": commit + ("+uncommitted" if dirty else ""),
           "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__},
           "rows": rows}
    text = json.dumps(out, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        atomic_file(args.out, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


if __name__ == "__main__":
    main()
