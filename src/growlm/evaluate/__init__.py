"""Benchmarks for growlm models: log-likelihood multiple choice (lm-eval convention; acc, acc_norm, the gold
answer's bits per byte and margin), the paper's generation protocol, SQuAD exact match / F1, perplexity and bits
per character (``growlm.evaluate.bpc``, shared with training validation), and an lm-evaluation-harness adapter.

Models are duck-typed (see ``growlm.evaluate.scorer``): ``hidden_states(idx)`` + ``head`` is fastest; a model with
only ``forward(idx) -> logits`` works too. Benchmark data comes from local files (``growlm.evaluate.tasks``).
"""

from growlm.evaluate.runner import PROTOCOLS, TASKS, evaluate
from growlm.evaluate.scorer import Scorer

__all__ = ["evaluate", "Scorer", "TASKS", "PROTOCOLS"]
