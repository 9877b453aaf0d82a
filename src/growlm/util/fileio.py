"""Files growlm writes: atomic files and directories, content hashes, output-directory rules, the run lock.

Every file is written to a temporary name in its final directory, flushed and
fsynced, given the permissions a plain ``open`` would under the user's umask,
renamed into place, and the directory is fsynced so the rename survives a
power cut. A directory is built the same way, under a temporary name, and
swapped in whole. growlm writes only into directories that are empty or its
own, never into its inputs, and replaces only files it wrote itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl  # POSIX only: the run-directory lock
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None


class OutputDirError(ValueError):
    """An output path would overwrite or delete something growlm did not write, or one of its inputs."""


class RunLockedError(OutputDirError):
    """Another process is writing the same run directory."""


def umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file or directory the permissions a plain create would have (mkstemp and safetensors use 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def fsync_dir(path: str | Path) -> None:
    """Make the entries (creations, renames) of a directory durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def append_durable(path: str | Path, line: str) -> None:
    """Append one line to a log file and fsync it, so a crash keeps every line appended before it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_file(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it over ``path``; no trace on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fsync_file(tmp)
        default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a temporary file and a rename."""
    atomic_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_file(path, lambda tmp: Path(tmp).write_bytes(data))


def foreign_entries(path: Path, owned: Iterable[str]) -> list[str]:
    """Names in directory ``path`` that are not in ``owned``, sorted."""
    owned = set(owned)
    return sorted(p.name for p in path.iterdir() if p.name not in owned)


@contextmanager
def atomic_dir(final: str | Path, owned: Iterable[str] | None = None):
    """Yield a temporary directory that replaces ``final`` whole on success (and vanishes on failure).

    ``owned``: the names growlm writes in such a directory; an existing ``final`` holding anything
    else is refused before any work, so nothing growlm did not write is ever deleted.
    """
    final = Path(final)
    if final.exists():
        if not final.is_dir():
            raise OutputDirError(f"{final} exists and is not a directory")
        if owned is not None and (extra := foreign_entries(final, owned)):
            raise OutputDirError(f"{final} holds files growlm did not write ({', '.join(extra[:5])}); "
                                 "refusing to replace it: move them away or choose another directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        default_mode(tmp, directory=True)
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_file(f)
        fsync_dir(tmp)
        old = None
        if final.exists():
            # a fresh name of our own (never a fixed one: a user's `.NAME.old` is not ours to delete); the empty
            # directory mkdtemp makes is replaced by the rename
            prefix = OLD_PREFIX.format(name=final.name) + f"{os.getpid()}."
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix))
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)  # put the previous version back
            raise
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


OLD_PREFIX = ".{name}.old."  # + pid + random: where atomic_dir moves the version it replaces, for one rename


def displaced_dirs(final: str | Path) -> list[Path]:
    """Earlier versions of ``final`` that ``atomic_dir`` moved aside and a crash left behind, newest first."""
    final = Path(final)
    found = [d for d in final.parent.glob(OLD_PREFIX.format(name=final.name) + "*") if d.is_dir()]
    return sorted(found, key=lambda d: d.stat().st_mtime, reverse=True)


def remove_stale_displaced(final: str | Path) -> list[str]:
    """Delete ``displaced_dirs(final)`` whose process is gone (a crash's leftovers); return their names."""
    final = Path(final)
    removed = []
    for d in displaced_dirs(final):
        pid = d.name[len(OLD_PREFIX.format(name=final.name)):].split(".")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


STAGING_PREFIX = ".growlm-staging."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_staging(out: Path) -> list[str]:
    """Delete ``out``'s staging directories left by killed growlm processes (named by their pid); return their names.

    A staging directory whose process still runs, or whose name carries no pid (written by an
    older growlm, which may still be running), is left alone.
    """
    removed = []
    for d in out.glob(STAGING_PREFIX + "*"):
        pid = d.name[len(STAGING_PREFIX):].split(".")[0]
        if d.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def is_staging(name: str) -> bool:
    """True for the name of a staging directory of ``staged_files``."""
    return name.startswith(STAGING_PREFIX)


@contextmanager
def staged_files(out: str | Path):
    """Yield a hidden temporary directory inside ``out``; on success move each file written there into ``out``.

    Each file replaces its namesake atomically; nothing else in ``out`` is touched. On failure
    the temporary directory vanishes and ``out`` is as it was.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f"{STAGING_PREFIX}{os.getpid()}."))
    try:
        yield tmp
        files = sorted(f for f in tmp.iterdir() if f.is_file())
        for f in files:
            fsync_file(f)
            default_mode(f)
        for f in files:
            os.replace(f, out / f.name)
        fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in 4 MB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- output directories

MARKER = ".growlm-output"  # names the tool that created a directory (a run, a fine-tune, ...)
LOCK_NAME = ".growlm.lock"


def check_not_input(out: str | Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """Refuse an output that is, contains or lies inside one of the inputs."""
    o = Path(out).resolve()
    for src in inputs:
        s = Path(src).resolve()
        if o == s or s in o.parents or o in s.parents:
            raise OutputDirError(f"{what} {out} is (or holds, or lies inside) the input {src}; growlm never writes "
                                 "into its inputs: choose another directory")


def claim_output_dir(out: str | Path, tool: str, legacy: Callable[[Path], bool] | None = None) -> Path:
    """Make ``out`` the output directory of ``tool``: it must be missing, empty or ``tool``'s own.

    A directory is ``tool``'s own when growlm created it for ``tool`` (a marker file records that),
    or when ``legacy(out)`` recognises one written before markers existed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a directory; choose a directory for the output")
    marker = out / MARKER
    if out.is_dir() and foreign_entries(out, {LOCK_NAME}):  # a lock file alone is a killed run's leftover
        owner = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
        if owner == tool or (owner is None and legacy is not None and legacy(out)):
            return out
        if owner is not None:
            raise OutputDirError(f"{out} is the output of `growlm {owner}`, not of `growlm {tool}`; choose a new "
                                 "or empty directory")
        extra = foreign_entries(out, ())
        raise OutputDirError(f"{out} is not empty and holds files growlm did not write ({', '.join(extra[:5])}"
                             f"{', ...' if len(extra) > 5 else ''}); choose a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, tool + "\n")
    return out


def growlm_dir_kind(d: Path) -> str | None:
    """What growlm wrote directory ``d`` as ("a growlm model directory", ...), or None for any other directory."""
    if (d / "model.json").is_file() and (d / "model.safetensors").exists():
        return "a growlm model directory"
    if (d / "state.json").is_file() and (d / "model.safetensors").exists():
        return "a growlm training checkpoint"
    if (d / MARKER).is_file():
        return f"the output of `growlm {(d / MARKER).read_text(encoding='utf-8').strip()}`"
    return None


def check_not_in_model(path: str | Path, what: str = "output") -> None:
    """Refuse a path that is, or lies inside, a growlm model or checkpoint directory: a file written there would
    change a model (or stop it loading) behind the hashes that guard it."""
    p = Path(path).absolute()
    for d in (p, *p.parents):
        kind = growlm_dir_kind(d) if d.is_dir() else None
        if kind is not None and not kind.startswith("the output"):
            raise OutputDirError(f"{what} {path} is (or lies inside) {kind}, {d}; growlm never writes other files "
                                 "into a model or checkpoint: choose a path outside it")


def check_output_file(path: str | Path, ours: Callable[[Path], bool], what: str = "--out") -> Path:
    """``path`` may receive a file growlm writes: it is missing, or a file ``ours(path)`` recognises as growlm's
    (an earlier result), and it lies in no model or checkpoint directory. Returns it as a Path."""
    path = Path(path)
    check_not_in_model(path, what)
    if path.is_dir():
        raise OutputDirError(f"{what} {path} is a directory; name the file to write")
    if path.exists() and not ours(path):
        raise OutputDirError(f"{what} {path} exists and is not a file growlm wrote; refusing to overwrite it: move it "
                             "away or choose another file")
    return path


class DirLock:
    """An exclusive lock on a directory (``DIR/.growlm.lock``), held until ``release()`` or process exit.

    ``flock`` belongs to the open file, so the kernel drops it when the holder dies: a lock file
    left behind by a killed run never blocks the next one.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_NAME
        self.f = open(self.path, "a+", encoding="utf-8")
        if fcntl is None:
            return
        try:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            holder = self.f.read().strip() or "unknown"
            self.f.close()
            raise RunLockedError(f"another growlm process is writing {self.path.parent} ({holder}); wait for it "
                                 "to finish or stop it, or choose another directory") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()}\n")
        self.f.flush()

    def release(self) -> None:
        if not self.f.closed:
            self.f.close()  # closing drops the flock

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
