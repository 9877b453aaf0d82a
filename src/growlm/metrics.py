"""Metrics as JSON lines: one object per line, a ``type`` key, appended and flushed as they happen."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """Append-only JSONL metrics file that can be cut back to a checkpointed offset on resume."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def offset(self) -> int:
        """Current size of the file in bytes (stored in checkpoints)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        """Drop everything written after ``offset`` (records of steps a resumed run will redo)."""
        if self.enabled and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(offset)

    def write(self, record: dict) -> None:
        """Append one record."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


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
