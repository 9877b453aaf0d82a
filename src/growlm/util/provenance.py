"""Which code made a result: the git commit of the checkout growlm runs from, and whether it had local changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # src/growlm/util/provenance.py -> the checkout (an editable install)


def git_commit(root: str | Path = REPO) -> tuple[str, bool | None]:
    """(HEAD's commit, whether tracked files differ from it) of the git checkout at ``root``; ("", None) where
    ``root`` is not a git checkout or git cannot be run (an installed wheel, no git)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "", None
    return commit, bool(git("status", "--porcelain", "--untracked-files=no"))
