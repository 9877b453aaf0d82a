"""Score a growlm model with lm-eval's growlm_* tasks (``--model growlm``, and ``--model hf`` on a given export) and
with ``growlm eval`` on the same questions; print every task's acc and acc_norm from each as JSON.

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python scripts/lm_eval_agreement.py RUN [--hf EXPORT] [--limit 10]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="growlm run or model directory")
    p.add_argument("--hf", help="its Hugging Face export (growlm export RUN OUT)")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--tasks", default=None, help="growlm task names, comma-separated (default: all twelve)")
    a = p.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager

    import growlm.evaluate.lm_eval_adapter  # noqa: F401  registers growlm where no .pth is installed
    from growlm.evaluate import evaluate
    from growlm.evaluate.lm_eval_tasks import TASKS_DIR
    from growlm.evaluate.tasks import MC_TASKS
    from growlm.model.saved import load_model, read_json, resolve_model_dir
    from growlm.substrate import Tokenizer

    tasks = a.tasks.split(",") if a.tasks else list(MC_TASKS)
    d = resolve_model_dir(a.run)
    model, tok = load_model(d), Tokenizer.load(read_json(d / "model.json")["substrate"]["vocab"])
    ours = evaluate(model, tok, tasks, limit=a.limit, progress=False)["results"]
    out = {t: {"growlm_eval": [ours[t]["loglik"]["acc"]["value"], ours[t]["loglik"]["acc_norm"]["value"]]}
           for t in tasks}
    runs = [("lm_eval_growlm", "growlm", f"pretrained={d}")]
    if a.hf:
        runs.append(("lm_eval_hf", "hf", f"pretrained={a.hf},dtype=float32"))
    for key, name, args in runs:
        res = lm_eval.simple_evaluate(model=name, model_args=args, tasks=[f"growlm_{t}" for t in tasks],
                                      limit=a.limit, device="cpu", batch_size=8,
                                      task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False))
        for t in tasks:
            r = res["results"][f"growlm_{t}"]
            out[t][key] = [r["acc,none"], r.get("acc_norm,none")]
    print(json.dumps({"limit": a.limit, "acc_and_acc_norm": out}, indent=1))


if __name__ == "__main__":
    main()
