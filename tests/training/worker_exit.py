"""For the torchrun test workers: what of the process group still runs in a process after it was shut down."""

from __future__ import annotations

from pathlib import Path


def group_threads() -> list[str]:
    """Names of this process's gloo threads (Linux; [] where /proc is missing): none once the group is destroyed.

    A group that outlives ``destroy_process_group`` (something still holds it) keeps these running until the
    interpreter exits, and tearing them down then can abort the process."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            continue
    return sorted(n for n in names if "gloo" in n)
