"""Metric loggers beside ``metrics.jsonl``: TensorBoard and Weights & Biases (optional extras).

Chosen in ``[train] loggers = ["tensorboard", "wandb"]`` or by ``growlm grow --logger``. Every record
``MetricsLog`` writes is passed on: its numbers become scalars tagged ``<type>/<key>`` (nested tables
flattened: ``val/val_bpc/en``) at the record's global ``step``. TensorBoard's events go to
``RUN/tensorboard``; a resumed run drops the events after the step it resumes from (``purge_step``), as
``metrics.jsonl`` is cut back, so the curves are those of one uninterrupted run. Weights & Biases runs
``RUN/wandb`` under one id kept in ``RUN/wandb_id`` and resumes it.
"""

from __future__ import annotations

from pathlib import Path

LOGGERS = ("tensorboard", "wandb")


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record by tag (``train/loss``, ``val/val_bpc/en``); step and type left out."""
    out: dict[str, float] = {}
    base = prefix or str(record.get("type", "metrics"))
    for k, v in record.items():
        if k in ("type", "step"):
            continue
        if isinstance(v, dict):
            out.update(scalars(v, f"{base}/{k}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{base}/{k}"] = float(v)
    return out


class TensorBoardLogger:
    """Scalars to a TensorBoard event file under ``RUN/tensorboard``."""

    def __init__(self, run: Path, resume_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter  # deferred: optional (tensorboard)
        except ImportError:
            raise ImportError("the tensorboard logger needs tensorboard: pip install 'growlm[tensorboard]'") from None
        self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Scalars to a Weights & Biases run (project ``growlm``, or $WANDB_PROJECT), resumed under one id."""

    def __init__(self, run: Path, config: dict, resume_step: int | None = None):
        try:
            import wandb  # deferred: optional (wandb)
        except ImportError:
            raise ImportError("the wandb logger needs wandb: pip install 'growlm[wandb]'") from None
        id_file = run / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(dir=str(run), id=run_id, name=run.name, resume="allow", config=config)
        self.resume_step = resume_step or 0

    def log(self, record: dict) -> None:
        step = int(record.get("step", 0))
        if step < self.resume_step:  # W&B cannot rewrite history: steps before the resume point are kept
            return
        self.run.log(scalars(record), step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def open_loggers(names: list[str], run: Path, config: dict, resume_step: int | None = None) -> list:
    """The loggers named (``tensorboard``, ``wandb``) for the run directory ``run``."""
    unknown = sorted(set(names) - set(LOGGERS))
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; choose from {list(LOGGERS)}")
    out: list = []
    for name in dict.fromkeys(names):
        out.append(TensorBoardLogger(run, resume_step) if name == "tensorboard"
                   else WandbLogger(run, config, resume_step))
    return out
