"""A run directory held for writing: empty or growlm's own, and locked against a second writer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from growlm.model.saved import MODEL_OWNED
from growlm.training.checkpoint import CHECKPOINT_OWNED, find_checkpoint
from growlm.util.fileio import MARKER, DirLock, OutputDirError, claim_output_dir, foreign_entries


def is_legacy_run(d: Path) -> bool:
    """A run directory written before growlm marked its outputs: a saved plan next to its training state."""
    return (d / "plan.json").is_file() and ((d / "checkpoints").is_dir() or (d / "metrics.jsonl").is_file())


def is_legacy_finetune(d: Path) -> bool:
    """A fine-tune directory written before markers: its metrics and model, nothing else."""
    return {p.name for p in d.iterdir()} <= {"metrics.jsonl", "model"} and (d / "model" / "model.json").is_file()


LEGACY = {"grow": is_legacy_run, "finetune": is_legacy_finetune}  # how each tool's unmarked output looks


def check_run_exists(run: str | Path) -> Path:
    """``run`` as a Path, or an error saying that it does not exist or is not a growlm run."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run {run} does not exist; start it with `growlm grow RECIPE --out {run}`")
    if not (run / "plan.json").is_file():
        raise FileNotFoundError(f"{run} is not a growlm run directory (it has no plan.json)")
    return run


def check_writable(run: Path) -> None:
    """Refuse, before any work, a run directory (or its checkpoints/, stages/) where no file can be created."""
    for d in (run, run / "checkpoints", run / "stages"):
        if not d.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(dir=d, prefix=".growlm-probe.")
        except OSError as e:
            raise OutputDirError(f"{d} is not writable ({e.strerror}): growlm could not save checkpoints or models "
                                 "there; make it writable (or copy the run elsewhere) and run again") from None
        os.close(fd)
        os.unlink(probe)


def check_own_outputs(run: Path) -> None:
    """Refuse, before any work, a run whose model or checkpoint directories hold files growlm did not write (they
    would be refused only when the trained model is saved)."""
    for d in [run / "model", *sorted(run.glob("stages/stage-*")), run / "checkpoints" / "latest"]:
        if not d.is_dir():
            continue
        extra = foreign_entries(d, CHECKPOINT_OWNED if d.parent.name == "checkpoints" else MODEL_OWNED)
        if extra:
            raise OutputDirError(f"{d} holds files growlm did not write ({', '.join(extra[:5])}); it would replace "
                                 "that directory when it saves there: move them away and run again")


class RunDir:
    """Claim ``out`` for ``tool`` (it must be missing, empty or that tool's own) and lock it until ``close()``.

    With ``resume`` the directory must already be a run. Only the process that writes (rank 0) claims
    and locks; the others pass ``enabled=False``. ``legacy`` recognises an unmarked directory as ``tool``'s own
    (default: ``LEGACY``'s for the tool).
    """

    def __init__(self, out: str | Path, tool: str, resume: bool = False, enabled: bool = True,
                 legacy: Callable[[Path], bool] | None = None):
        self.path = Path(out)
        self.lock = None
        if not enabled:
            return
        if resume:
            check_run_exists(self.path)
            if (self.path / MARKER).is_file() and (self.path / MARKER).read_text().strip() != tool:
                raise OutputDirError(f"{self.path} is not the output of `growlm {tool}`")
        else:
            claim_output_dir(self.path, tool, legacy=legacy or LEGACY.get(tool))
        check_writable(self.path)
        check_own_outputs(self.path)
        self.lock = DirLock(self.path)

    def started(self) -> bool:
        """Whether the run got far enough to keep: a checkpoint or a final model."""
        return find_checkpoint(self.path) is not None or (self.path / "model" / "model.json").exists()

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
