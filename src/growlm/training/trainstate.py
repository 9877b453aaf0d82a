"""The one owner of a run's resumable training state: what a resume restores and what a checkpoint saves.

A growth run (``growlm.training.run``) and a fine-tune (``growlm.training.finetune``) keep their latest state in
``OUT/checkpoints/latest`` (the files: ``growlm.training.checkpoint``, atomic and hashed). ``Checkpointer`` reads it
back (the plan fingerprint and the trainable set checked, then the run state, precision, optimiser, RNG and metrics
offset restored) and writes it (the weights gathered on every rank, written by rank 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from growlm.model.saved import CheckpointError
from growlm.training.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    restore_rng,
    resumed_precision,
    rng_state,
    save_checkpoint,
)
from growlm.training.loop import RunState
from growlm.training.metrics import MetricsLog
from growlm.training.parallel import Distributed


@dataclass
class Resumed:
    """A checkpoint read back: where it was, its state JSON, weights and optimiser state, and the run state."""

    path: Path
    saved: dict
    weights: dict[str, torch.Tensor]
    optimizer: dict | None
    state: RunState


class Checkpointer:
    """Saves and resumes one run's training state in ``out/checkpoints/latest``.

    ``fingerprint`` is ``(key, value)``: the plan's fingerprint, saved under ``key`` and compared on resume, where a
    difference raises ``refusal()``. ``precision`` is the one the run trains in; a resume may change it (an ``auto``
    run goes on in the precision it trained in).
    """

    def __init__(self, out: str | Path, dist: Distributed, metrics: MetricsLog, generator: torch.Generator,
                 fingerprint: tuple[str, str], refusal: Callable[[], Exception], setting: str, precision: str,
                 log: Callable[[str], None] = print):
        self.out, self.dist, self.metrics, self.generator = Path(out), dist, metrics, generator
        self.fingerprint, self.refusal, self.setting, self.precision, self.log = (fingerprint, refusal, setting,
                                                                                  precision, log)

    def resume(self, fit: Callable[[Resumed], None], optimizer: torch.optim.Optimizer | None = None,
               trainable: set[str] | None = None) -> Resumed | None:
        """Restore the latest checkpoint; None where the run has none yet.

        The plan fingerprint (and ``trainable``, the names of the parameters that train, when given) must match;
        ``fit`` then puts the weights into the caller's model (a growth run builds it, a fine-tune loads its
        trainable parameters); last the optimiser (when given), the RNG states and the metrics offset are restored.
        """
        path = find_checkpoint(self.out)
        if path is None:
            return None
        saved, weights, opt, rng = load_checkpoint(path)
        key, value = self.fingerprint
        if saved.get(key) != value:
            raise self.refusal()
        if trainable is not None and set(weights) != trainable:
            raise CheckpointError(f"checkpoint {path} holds {sorted(set(weights) ^ trainable)[:4]}... that do "
                                  "not match the model's trainable parameters")
        resumed = Resumed(path, saved, weights, opt, RunState(**saved["run"]))
        self.precision = resumed_precision(self.setting, saved, self.precision, self.log)
        fit(resumed)
        if optimizer is not None:
            self.dist.load_optimizer_state(optimizer, opt)
        restore_rng(rng, self.generator, self.dist.device)
        self.metrics.truncate(int(saved.get("metrics_offset", self.metrics.offset())))
        return resumed

    def save(self, state: RunState, optimizer: torch.optim.Optimizer | None, trainee: torch.nn.Module,
             extra: dict, trainable_only: bool = False) -> None:
        """Write the resumable state, atomically replacing the previous checkpoint.

        Every rank calls it: the full weights and optimiser state of ``trainee`` (a sharded copy under FSDP) are
        gathered collectively, then rank 0 writes them with ``extra`` in the state JSON. ``trainable_only`` saves
        just the parameters that train (a fine-tune: its replicas hold the same ones, nothing to gather).
        """
        self.dist.barrier()
        if trainable_only:
            weights, opt = {n: p.detach() for n, p in trainee.named_parameters() if p.requires_grad}, optimizer
        else:
            weights, opt = self.dist.full_state(trainee, optimizer)  # every rank: gathering is collective
        if self.dist.main:
            key, value = self.fingerprint
            save_checkpoint(self.out / "checkpoints" / "latest", weights, opt,
                            {"run": asdict(state), key: value, **extra, "metrics_offset": self.metrics.offset(),
                             "precision": self.precision}, rng_state(self.generator, self.dist.device))
        self.dist.barrier()
