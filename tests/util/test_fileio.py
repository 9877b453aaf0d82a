"""Atomic files and directories, output-directory rules and the run lock."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from growlm.util import fileio


def test_atomic_file_replaces_or_leaves_no_trace(tmp_path):
    p = tmp_path / "a.json"
    fileio.atomic_write_text(p, "one")
    with pytest.raises(RuntimeError):
        def bad(tmp):
            open(tmp, "w").write("half")
            raise RuntimeError("disk died")

        fileio.atomic_file(p, bad)
    assert p.read_text() == "one" and sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]


def test_atomic_file_fsyncs_the_whole_file_before_the_rename(tmp_path, monkeypatch):
    """The data is durable before the new name points at it, and the rename is durable after: a power cut leaves the
    old file or the whole new one, never a renamed empty file."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", path, open(path, "rb").read() if os.path.isfile(path) else None))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    p = tmp_path / "a.json"
    fileio.atomic_write_bytes(p, b"new contents")
    assert p.read_bytes() == b"new contents"
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    tmp = events[1][1]
    assert events[1][2] == str(p) and os.path.dirname(tmp) == str(tmp_path) and tmp != str(p)
    assert events[0][1:] == (tmp, b"new contents")  # the temporary file, whole, before it is renamed
    assert events[2][1:] == (str(tmp_path), None)  # then the directory entry of the rename


def test_atomic_dir_fsyncs_files_and_directories(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(fileio.os, "fsync", spy)
    final = tmp_path / "d"
    with fileio.atomic_dir(final) as tmp:
        (tmp / "x.bin").write_bytes(b"x")
    assert (final / "x.bin").read_bytes() == b"x"
    assert any(s.endswith("x.bin") for s in synced)  # the file's data
    assert str(tmp_path) in synced  # the rename itself (the parent directory entry)
    assert sum(1 for s in synced if os.path.basename(s).startswith(".d.")) >= 1  # the new directory's entries


def test_atomic_dir_refuses_to_replace_foreign_files(tmp_path):
    final = tmp_path / "d"
    with fileio.atomic_dir(final, owned={"x.bin"}) as tmp:
        (tmp / "x.bin").write_bytes(b"1")
    (final / "mine.txt").write_text("keep")
    with pytest.raises(fileio.OutputDirError, match="mine.txt"):
        with fileio.atomic_dir(final, owned={"x.bin"}) as tmp:
            (tmp / "x.bin").write_bytes(b"2")
    assert (final / "x.bin").read_bytes() == b"1" and (final / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        fileio.atomic_write_text(tmp_path / "f", "x")
        with fileio.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "g").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750


def test_claim_output_dir(tmp_path):
    assert fileio.claim_output_dir(tmp_path / "new", "run") == tmp_path / "new"
    assert (tmp_path / "new" / fileio.MARKER).read_text() == "run\n"
    assert fileio.claim_output_dir(tmp_path / "new", "run") == tmp_path / "new"  # its own: fine
    with pytest.raises(fileio.OutputDirError, match="finetune"):
        fileio.claim_output_dir(tmp_path / "new", "finetune")  # another tool's
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "a.txt").write_text("a")
    with pytest.raises(fileio.OutputDirError, match="a.txt"):
        fileio.claim_output_dir(tmp_path / "user", "run")
    (tmp_path / "file").write_text("f")
    with pytest.raises(fileio.OutputDirError, match="not a directory"):
        fileio.claim_output_dir(tmp_path / "file", "run")


def test_inputs_are_never_outputs(tmp_path):
    src = tmp_path / "run" / "model"
    src.mkdir(parents=True)
    for bad in (src, tmp_path / "run", src / "sub"):
        with pytest.raises(fileio.OutputDirError, match="input"):
            fileio.check_not_input(bad, [src])
    fileio.check_not_input(tmp_path / "run2", [src])


def test_lock_is_exclusive_and_released(tmp_path):
    lock = fileio.DirLock(tmp_path)
    got = []

    def other():
        try:
            fileio.DirLock(tmp_path)
            got.append("acquired")
        except fileio.RunLockedError as e:
            got.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert "another growlm process" in got[0] and str(os.getpid()) in got[0]
    lock.release()
    again = fileio.DirLock(tmp_path)
    again.release()


def test_atomic_dir_never_deletes_a_users_old_directory(tmp_path):
    final = tmp_path / "E"
    mine = tmp_path / ".E.old"  # the name the old helper used for the version it replaced, then deleted
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for v in (b"1", b"2", b"3"):
        with fileio.atomic_dir(final, owned={"x.bin"}) as tmp:
            (tmp / "x.bin").write_bytes(v)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert (final / "x.bin").read_bytes() == b"3"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".E.old", "E"]  # none of growlm's temporary names left


def test_atomic_dir_puts_the_old_version_back_when_the_swap_fails(tmp_path, monkeypatch):
    final = tmp_path / "E"
    with fileio.atomic_dir(final) as tmp:
        (tmp / "x.bin").write_bytes(b"1")
    real = os.replace

    def fail_second(src, dst):
        if str(dst) == str(final) and ".E.old." not in str(src):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", fail_second)
    with pytest.raises(OSError):
        with fileio.atomic_dir(final) as tmp:
            (tmp / "x.bin").write_bytes(b"2")
    assert (final / "x.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E"]


def test_output_files_and_model_directories(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    for target in (model / "notes.json", model / "model.json", model / "sub" / "x.json"):
        with pytest.raises(fileio.OutputDirError, match="model directory"):
            fileio.check_output_file(target, lambda p: True)
    user = tmp_path / "notes.txt"
    user.write_text("mine")
    with pytest.raises(fileio.OutputDirError, match="not a file growlm wrote"):
        fileio.check_output_file(user, lambda p: False)
    assert fileio.check_output_file(user, lambda p: True) == user  # an earlier result of its own
    assert fileio.check_output_file(tmp_path / "new.json", lambda p: False) == tmp_path / "new.json"
