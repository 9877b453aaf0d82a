"""Speed and memory of ``growlm prepare``; prints JSON.

    python benchmarks/prepare_speed.py [--vocab compact] [--repeats 3] [--out docs/data/prepare_speed.json]

* throughput: characters per second of ``prepare`` on the embedded corpus against the
  tokenizer's raw batch encoding (``Tokenizer.encode_batch``, the same batches of about
  ``BATCH_CHARS`` characters) of the same text on the same machine; best of ``--repeats``;
* peak memory: peak RSS growth of a ``prepare`` process over its start (imports, tokenizer
  loaded) for corpora of 1x, 4x and 16x the embedded corpus, built by repetition with every copy
  of a document made different (a copy number in front), so the split and the tokens vary;
* scaling: ``prepare`` of the 1x corpus with the tokenizer on 1 and 2 threads (RAYON_NUM_THREADS),
  and the time for 10B tokens on 16 cores projected two ways: linear scaling in cores at the
  per-core efficiency measured from 1 to 2 threads (the assumption asked for), and Amdahl's law
  with the serial share fitted to the same two times (more conservative).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

_CHILD = """
import json, resource, sys, time, warnings
sys.path.insert(0, {src!r})
from growlm.data.prepare import prepare
from growlm.substrate import Tokenizer
Tokenizer.load({vocab!r}).encode_batch(["warm up"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
warnings.simplefilter("ignore")
t = time.perf_counter()
meta = prepare({corpus!r}, {out!r}, vocab={vocab!r})
dt = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
chars = sum(s["characters"] for s in meta["shards"])
tokens = sum(s["tokens"] for s in meta["shards"])
print(json.dumps({{"seconds": dt, "characters": chars, "tokens": tokens, "rss_start_mb": before / 1024,
                  "rss_peak_mb": after / 1024, "rss_growth_mb": (after - before) / 1024}}))
"""


def _prepare_in_child(corpus: Path, out: Path, vocab: str, threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    code = _CHILD.format(src=str(ROOT / "src"), vocab=vocab, corpus=str(corpus), out=str(out))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _write_corpus(root: Path, docs: list[tuple[str, str]], copies: int) -> Path:
    """``copies`` varied copies of every document, one jsonl per language."""
    root.mkdir(parents=True)
    files = {}
    for k in range(copies):
        for lang, text in docs:
            f = files.get(lang) or files.setdefault(lang, open(root / f"{lang}.jsonl", "w", encoding="utf-8"))
            f.write(json.dumps({"text": f"[{k}] {text}" if k else text}, ensure_ascii=False) + "\n")
    for f in files.values():
        f.close()
    return root


def _raw_throughput(docs: list[str], vocab: str, repeats: int) -> dict:
    from growlm.data.prepare import BATCH_CHARS
    from growlm.substrate import Tokenizer

    tok = Tokenizer.load(vocab)
    batches, cur, size = [], [], 0
    for d in docs:
        cur.append(d)
        size += len(d)
        if size >= BATCH_CHARS:
            batches.append(cur)
            cur, size = [], 0
    if cur:
        batches.append(cur)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            tok.encode_batch(b)
        best = min(best, time.perf_counter() - t)
    chars = sum(len(d) for d in docs)
    return {"seconds": best, "characters": chars, "chars_per_s": chars / best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default="compact")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    from growlm.data.documents import default_corpus_dir, load_documents
    from growlm.util.provenance import git_commit

    docs = list(load_documents(default_corpus_dir()))
    res: dict = {"vocab": args.vocab, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                 "processor": platform.processor() or platform.uname().machine, "python": platform.python_version()}
    res["commit"] = git_commit(ROOT)[0][:7] or None
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        res["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = _raw_throughput([t for _, t in docs], args.vocab, args.repeats)
        corpus1 = _write_corpus(tmp / "x1", docs, 1)
        runs = [_prepare_in_child(corpus1, tmp / f"p{i}", args.vocab) for i in range(args.repeats)]
        prep = min(runs, key=lambda r: r["seconds"])
        res["throughput"] = {
            "raw_encode_batch_chars_per_s": round(raw["chars_per_s"]),
            "prepare_chars_per_s": round(prep["characters"] / prep["seconds"]),
            "prepare_over_raw": round(prep["characters"] / prep["seconds"] / raw["chars_per_s"], 3),
            "characters": prep["characters"], "tokens": prep["tokens"],
            "prepare_seconds": round(prep["seconds"], 3), "raw_seconds": round(raw["seconds"], 3),
        }
        res["memory"] = {}
        for copies in (1, 4, 16):
            corpus = corpus1 if copies == 1 else _write_corpus(tmp / f"x{copies}", docs, copies)
            r = _prepare_in_child(corpus, tmp / f"m{copies}", args.vocab)
            res["memory"][f"{copies}x"] = {"characters": r["characters"], "tokens": r["tokens"],
                                           "rss_growth_mb": round(r["rss_growth_mb"], 1),
                                           "rss_peak_mb": round(r["rss_peak_mb"], 1),
                                           "seconds": round(r["seconds"], 2)}
        scale = {}
        for threads in (1, 2):
            rs = [_prepare_in_child(corpus1, tmp / f"t{threads}-{i}", args.vocab, threads) for i in range(args.repeats)]
            scale[threads] = min(rs, key=lambda r: r["seconds"])
        t1, t2 = scale[1]["seconds"], scale[2]["seconds"]
        tok_per_s_1 = scale[1]["tokens"] / t1
        efficiency = t1 / (2 * t2)  # per-core efficiency from 1 to 2 threads
        linear_16 = tok_per_s_1 * 16 * efficiency
        serial = max(0.0, min(1.0, 2 * t2 / t1 - 1))  # Amdahl: T(n) = T1 (s + (1 - s) / n)
        amdahl_16 = tok_per_s_1 / (serial + (1 - serial) / 16)
        res["scaling"] = {
            "tokens_per_s_1_thread": round(tok_per_s_1), "tokens_per_s_2_threads": round(scale[2]["tokens"] / t2),
            "per_core_efficiency_1_to_2": round(efficiency, 3), "amdahl_serial_share": round(serial, 3),
            "projected_hours_10B_tokens_16_cores_linear": round(1e10 / linear_16 / 3600, 2),
            "projected_hours_10B_tokens_16_cores_amdahl": round(1e10 / amdahl_16 / 3600, 2),
            "assumption": "linear: 16 cores run at 16x the 1-thread rate times the per-core efficiency measured "
                          "from 1 to 2 threads; amdahl: the serial share fitted to the 1- and 2-thread times; "
                          "the same text mix and vocabulary; reading from local disk not the bottleneck",
        }
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
