"""Run under torchrun by tests/training/test_parallel.py: FSDP runs of one recipe, one of them interrupted and resumed.

    torchrun --nproc_per_node=2 tests/training/parallel_worker.py RECIPE OUT STOP_STEP

OUT/fsdp: a whole run. OUT/stopped: the same run stopped right after its checkpoint at global step
STOP_STEP, copied (rank 0) to OUT/stopped-copy for a one-process resume, then resumed under FSDP. OUT/exit-R.json: the
process group's threads still running in rank R after shutdown (none).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist
from worker_exit import group_threads

from growlm.training.parallel import shutdown
from growlm.training.plan import Recipe
from growlm.training.run import Run, grow


class Stop(Exception):
    pass


def main(recipe: str, out: str, stop_step: int) -> None:
    out = Path(out)
    quiet = dict(progress=False, log=lambda *a, **k: None, device="cpu")
    grow(recipe, out / "fsdp", **quiet)

    checkpoint = Run.checkpoint

    def stop_after(self, optimizer, trainee=None):
        checkpoint(self, optimizer, trainee)
        if self.state.step == stop_step and optimizer is not None:  # mid-stage, optimiser state saved
            raise Stop

    Run.checkpoint = stop_after
    try:
        grow(recipe, out / "stopped", **quiet)
        raise SystemExit(f"the run did not reach a mid-stage checkpoint at step {stop_step}")
    except Stop:
        pass
    Run.checkpoint = checkpoint
    if dist.get_rank() == 0:
        shutil.copytree(out / "stopped", out / "stopped-copy")
    dist.barrier()
    grow(Recipe.load(out / "stopped" / "plan.json"), out / "stopped", resume=True, **quiet)
    rank = dist.get_rank()
    shutdown()  # every rank done before any tears the group down
    (out / f"exit-{rank}.json").write_text(json.dumps(group_threads()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
