"""Growth: plans, stages, freezing, LoRA phases and parameter budgets (arXiv 2507.07129, section 3.2)."""

from __future__ import annotations

import torch

from growlm.model import Config, GrowLM


def parameter_budget(cfg: Config, train_newest: int = 1) -> dict[str, int]:
    """Parameter counts of the paper's three regimes for a model of ``cfg.n_layer`` blocks.

    ``fully_trainable``: every weight including the embedding; ``frozen_interface``:
    monolithic training on the frozen substrate (all blocks, final norm, head);
    ``grown_active``: a growth stage training the newest ``train_newest`` blocks,
    the final norm and the head.
    """
    with torch.device("meta"):
        model = GrowLM(cfg)
    block = sum(p.numel() for p in model.blocks[0].parameters()) if len(model.blocks) else 0
    top = sum(p.numel() for p in model.head.parameters()) + sum(p.numel() for p in model.norm.parameters())
    emb = cfg.vocab_size * cfg.d_model
    k = min(train_newest, cfg.n_layer)
    return {"fully_trainable": emb + cfg.n_layer * block + top, "frozen_interface": cfg.n_layer * block + top,
            "grown_active": k * block + top, "embedding": emb, "per_block": block, "head_and_norm": top,
            "n_layer": cfg.n_layer, "train_newest": k}
