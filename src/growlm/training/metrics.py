"""Metrics as JSON lines: one object per line, a ``type`` key, appended and flushed as they happen."""

from __future__ import annotations

import json
import os
from pathlib import Path

from growlm.model.saved import CheckpointError
from growlm.util.fileio import append_durable


class MetricsLog:
    """Append-only JSONL metrics file that can be cut back to a checkpointed offset on resume."""

    def __init__(self, path: str | Path, enabled: bool = True, loggers: list | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.loggers = list(loggers or [])  # also given every record (growlm.training.loggers)

    def offset(self) -> int:
        """Current size of the file in bytes (stored in checkpoints)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        """Drop everything written after ``offset`` (records of steps a resumed run will redo).

        An offset past the end of the file, or inside a line, means the file was cut or replaced
        since the checkpoint: refused (truncating there would pad with NUL bytes or split a record).
        """
        if not (self.enabled and self.path.exists()):
            return
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if offset > 0:
                f.seek(min(offset, size) - 1)
            if offset > size or (offset > 0 and f.read(1) != b"\n"):
                raise CheckpointError(
                    f"{self.path} has {size} bytes but the checkpoint recorded {offset} bytes of whole records: it "
                    "was cut or replaced since; restore it, or move it away to resume with a fresh metrics log")
            f.truncate(offset)

    def write(self, record: dict) -> None:
        """Append one record."""
        if not self.enabled:
            return
        append_durable(self.path, json.dumps(record, ensure_ascii=False))
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        """Close the loggers beside the file (their last events written)."""
        for logger in self.loggers:
            logger.close()
        self.loggers = []


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics file; a corrupt line is an error naming the file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: corrupt metrics line ({e.msg})") from None
    return out
