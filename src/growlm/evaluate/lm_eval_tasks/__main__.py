"""Print the folder of growlm's lm-eval task definitions: ``lm_eval --include_path $(python -m ...)``."""

from growlm.evaluate.lm_eval_tasks import TASKS_DIR

print(TASKS_DIR)
