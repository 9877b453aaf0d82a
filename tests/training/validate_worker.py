"""Run by tests/training/test_run.py, with plain python (one process) and under torchrun (several): training validation
of a seeded tiny model, recording what this process scored.

    [torchrun --nproc_per_node=2] tests/training/validate_worker.py DATA OUT

Writes OUT/rank-R.json: validate's result, the windows this rank's model saw, and the per-window nats that
score_split returned here (before the sum over processes), per language; OUT/exit-R.json: the process group's
threads still running after shutdown (none).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from worker_exit import group_threads

import growlm.training.validation as train_module
from growlm.data.tokens import open_data
from growlm.model import Config, GrowLM
from growlm.substrate import Substrate
from growlm.training.parallel import Distributed, shutdown
from growlm.training.plan import TrainSpec
from growlm.training.validation import validate

BATCH = 2  # windows per forward: several batches per language, so that each process has some


def main(data_path: str, out: str) -> None:
    dist = Distributed.setup("cpu")
    sub = Substrate.build("glyph", "compact", 32)
    torch.manual_seed(0)
    model = GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_head=2, n_layer=1,
                                      block_size=16), sub)
    rows = []
    model.blocks[0].register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    scored: dict[str, list[float]] = {}
    real = train_module.score_split

    def recording(model, data, lang, *args, **kwargs):
        s = real(model, data, lang, *args, **kwargs)
        scored[lang] = list(s.window_nats)
        return s

    train_module.score_split = recording
    train = TrainSpec(seq_len=16, val_tokens=200, precision="fp32")
    val = validate(model, open_data(data_path, "compact"), train, dist.device, batch=BATCH, dist=dist)
    Path(out, f"rank-{dist.rank}.json").write_text(json.dumps({"val": val, "rows": sum(rows), "nats": scored}))
    shutdown()  # barrier, then destroy the process group (none in one process)
    Path(out, f"exit-{dist.rank}.json").write_text(json.dumps(group_threads()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
