"""Peak memory of ``growlm prepare`` on one very long line: a single-line .txt and a one-line .jsonl.

Each case runs ``growlm.data.prepare.prepare`` in a fresh Python process and reports that process's peak
resident set (``ru_maxrss``), the size of the input and the baseline of a process that only imports growlm
and loads the tokenizer, as JSON:

    python benchmarks/prepare_memory.py                 # 60 MB lines, compact vocabulary
    python benchmarks/prepare_memory.py --mb 20 --cases txt
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, json
from growlm.substrate import Tokenizer
Tokenizer.load(sys.argv[3])
if sys.argv[1] != "-":
    from growlm.data.prepare import prepare
    prepare(sys.argv[1], sys.argv[2], vocab=sys.argv[3], log=lambda m: None)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_line(mb: float, seed: int = 0) -> str:
    """About ``mb`` MB of words and digits with no line break."""
    rng = random.Random(seed)
    words = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
             "growth substrate frozen layer model token 1984 2025 naïve café").split()
    parts, size = [], 0
    while size < mb * 1e6:
        w = rng.choice(words)
        parts.append(w)
        size += len(w.encode()) + 1
    return " ".join(parts) + "."


def run_child(corpus: str, out: str, vocab: str) -> dict:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, corpus, out, vocab], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=60, help="size of the line in MB")
    ap.add_argument("--vocab", default="compact", help="vocabulary to tokenise with")
    ap.add_argument("--cases", default="txt,jsonl", help="comma-separated: txt, jsonl")
    args = ap.parse_args()
    line = make_line(args.mb)
    report = {"python": platform.python_version(), "machine": platform.machine(), "vocab": args.vocab,
              "baseline": run_child("-", "-", args.vocab), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            src = Path(tmp) / case
            src.mkdir()
            f = src / f"big.{case}"
            f.write_text(json.dumps({"text": line}) + "\n" if case == "jsonl" else line, encoding="utf-8")
            report["cases"][case] = {"input_mb": round(f.stat().st_size / 1e6, 1),
                                     **run_child(str(src), str(Path(tmp) / f"out-{case}"), args.vocab)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
