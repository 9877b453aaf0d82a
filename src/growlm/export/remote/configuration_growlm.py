"""Configuration of a growlm model exported for ``transformers`` (written by ``growlm export``; no growlm needed).

A model is one or more *experts* (growlm decoders on one frozen token substrate) and a *method* that fuses
their logits: ``single`` (one expert), ``average``, ``prob``, ``adapter``, ``router`` or ``posterior``.
"""

from transformers import PretrainedConfig


class GrowLMConfig(PretrainedConfig):
    """experts: one dict per expert (block, d_model, n_head, n_layer, hidden, bias, norm_bias, head_bias, norm_eps,
    rope_base, own_embedding); method, weights (normalised), rank (adapter) and window (posterior) of the fusion."""

    model_type = "growlm"

    def __init__(self, vocab_size: int = 16384, hidden_size: int = 64, experts: list | None = None,
                 method: str = "single", weights: list | None = None, rank: int = 8, window: int = 0,
                 max_position_embeddings: int = 1024, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.experts = list(experts or [])
        self.method, self.rank, self.window = method, rank, window
        self.weights = list(weights) if weights is not None else [1.0 / max(1, len(self.experts))] * len(self.experts)
        self.max_position_embeddings = max_position_embeddings
        self.num_hidden_layers = sum(e.get("n_layer", 0) for e in self.experts)
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("use_cache", False)  # decoding recomputes the prefix: there is no KV cache
        super().__init__(**kwargs)
