"""growlm.util.provenance: the commit and dirty flag that results record."""

from __future__ import annotations

import subprocess

from growlm.util.provenance import git_commit


def git(root, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_commit_and_dirty_flag_of_a_checkout_and_none_outside_one(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == (head, False)
    (repo / "untracked.txt").write_text("not tracked: not dirty\n")
    assert git_commit(repo) == (head, False)
    (repo / "a.txt").write_text("two\n")
    assert git_commit(repo) == (head, True)
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_commit(outside) == ("", None)
