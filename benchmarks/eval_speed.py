"""MMLU 0-shot log-likelihood scoring speed of a demo-sized model (random weights); prints JSON.

    python benchmarks/eval_speed.py --questions 1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

import torch

from growlm.evaluate import multiple_choice as mc
from growlm.evaluate import tasks as T
from growlm.evaluate.scorer import Scorer
from growlm.model import Config, GrowLM
from growlm.substrate import Substrate, Tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--questions", type=int, default=1000, help="MMLU test questions sampled (0 = all 14,042)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--max-length", type=int, default=None, help="context window (default: the model's block_size)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GrowLM(Config.from_preset("demo", n_layer=args.n_layer), Substrate.build("glyph", "compact", 256))
    tok = Tokenizer.load("compact")
    items = T.load_mmlu(T.data_root(args.data_dir), "test")
    total = len(items)
    if args.questions:
        items = random.Random(0).sample(items, min(args.questions, total))
    scorer = Scorer(model, tok, args.batch_size, args.max_length, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    res = mc.score_loglik(scorer, "mmlu", items, [[] for _ in items])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    qps = len(items) / dt
    prompt_tokens = sum(len(tok.encode(mc.loglik_request("mmlu", it, [])[0])) for it in items)
    print(json.dumps({"questions": len(items), "seconds": round(dt, 2), "questions_per_s": round(qps, 2),
                      "cpu_seconds": round(cpu, 2),
                      "prompt_tokens_untruncated": prompt_tokens,
                      "full_mmlu_questions": total, "full_mmlu_seconds_extrapolated": round(total / qps, 1),
                      "acc": round(res["acc"]["value"], 4), "threads": args.threads, "batch_size": args.batch_size,
                      "max_length": scorer.max_length, "scoring_mode": scorer.mode, "d_model": 256,
                      "n_layer": args.n_layer, "vocab": tok.vocab_size, "torch": torch.__version__,
                      "cpu": platform.processor() or platform.machine()}, indent=1))


if __name__ == "__main__":
    main()
