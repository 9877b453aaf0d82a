"""Model directories: safetensors for tensors, JSON for the rest, verified on every load.

A *model directory* holds ``model.safetensors`` (weights; a frozen embedding is
not stored, it is rebuilt from the substrate spec and checked against the
fingerprint) and ``model.json`` (format, kind, the kind's description, the
substrate fingerprint and the SHA-256 of the weights file). The weights file
carries the substrate fingerprint in its own metadata, so a description copied
from another model cannot relabel them. A *run directory* (written by
``growlm grow``) holds ``model/`` (the final model), ``stages/stage-NN/`` (the
model at the end of each stage) and ``checkpoints/`` (resumable training state,
written by ``growlm.training.checkpoint`` with these tensor files).

Model kinds register themselves (``register_kind``): a class with a ``kind``
name, ``save_meta()`` and ``from_saved(dir, meta, state, substrate)``. This
module knows no kind by name. Directories in another format that growlm can
read back (a Hugging Face export, ``growlm.export``) register themselves too
(``register_format``): ``resolve_model_dir``, ``read_model_meta`` and
``load_model`` then accept them wherever a model directory is expected.
"""

from __future__ import annotations

import contextvars
import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from growlm.util.fileio import (
    OutputDirError,
    atomic_dir,
    atomic_write_text,
    default_mode,
    foreign_entries,
    sha256_file,
)

FORMAT = "growlm-model-1"
SUBSTRATE_KEY = "substrate_fingerprint"  # in the safetensors metadata of every weights file
MODEL_OWNED = {"model.json", "model.safetensors", "eval.json"}  # what growlm writes in a model directory

__all__ = ["FORMAT", "CheckpointError", "IntegrityWarning", "OutputDirError", "KINDS", "register_kind", "save_model",
           "load_model", "resolve_model_dir", "read_json", "read_model_meta", "read_tensors", "record_hashes",
           "register_format", "sha256_file", "trusting_unhashed"]


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted, foreign or does not fit."""


class IntegrityWarning(UserWarning):
    """A file was loaded without a recorded hash to check it against (only inside ``trusting_unhashed()``)."""


_TRUST_UNHASHED: contextvars.ContextVar[bool] = contextvars.ContextVar("growlm_trust_unhashed", default=False)


@contextmanager
def trusting_unhashed():
    """Inside the ``with``, a tensor file with no recorded SHA-256 loads with an ``IntegrityWarning``; outside, it is
    refused (``growlm --trust-unhashed``; ``growlm rehash`` records the hashes once the files are checked)."""
    token = _TRUST_UNHASHED.set(True)
    try:
        yield
    finally:
        _TRUST_UNHASHED.reset(token)


# --------------------------------------------------------------------------- model kinds

KINDS: dict[str, type] = {}


def register_kind(cls: type) -> type:
    """Register a model class for ``save_model``/``load_model`` (usable as a decorator).

    The class names its ``kind``; instances describe themselves with ``save_meta()`` (a JSON dict
    with at least ``substrate_fingerprint``); ``cls.from_saved(dir, meta, state, substrate)`` rebuilds
    one from that description and its weights.
    """
    KINDS[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class ForeignFormat:
    """A directory format growlm reads back: found by its ``marker`` file; ``describe(dir)`` gives the growlm
    model description (what model.json would hold), ``load(dir, substrate)`` the model."""

    marker: str
    describe: Callable[[Path], dict]
    load: Callable[[Path, object], torch.nn.Module]


FORMATS: list[ForeignFormat] = []


def register_format(marker: str, describe: Callable[[Path], dict],
                    load: Callable[[Path, object], torch.nn.Module]) -> None:
    """Let ``load_model`` (and everything built on it) read directories holding ``marker`` in another format."""
    FORMATS[:] = [f for f in FORMATS if f.marker != marker] + [ForeignFormat(marker, describe, load)]


def _foreign(d: Path) -> ForeignFormat | None:
    if (d / "model.json").exists():
        return None
    return next((f for f in FORMATS if (d / f.marker).is_file()), None)


def _kind_of(model: torch.nn.Module) -> type:
    for c in type(model).__mro__:
        if KINDS.get(getattr(c, "kind", None)) is c:
            return c
    raise CheckpointError(f"cannot save a {type(model).__name__}: no model kind is registered for it "
                          f"(registered: {sorted(KINDS)}); register it with growlm.model.saved.register_kind")


# --------------------------------------------------------------------------- reading and writing


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies, as safetensors wants them."""
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, fingerprint: str) -> dict:
    """Write a safetensors file bound to a substrate fingerprint; returns its record (sha256, bytes)."""
    try:
        save_file(_cpu(tensors), str(path), metadata={"format": "pt", SUBSTRATE_KEY: fingerprint or ""})
    except (SafetensorError, OSError) as e:  # safetensors names no file (a full disk: "File too large")
        raise OSError(f"{path} could not be written ({e}); is the disk full? Nothing was replaced") from None
    default_mode(path)  # safetensors writes 0600 whatever the umask
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_json(path: Path, what: str = "file") -> dict:
    """Read a JSON object, turning every failure into a ``CheckpointError`` that names the file."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{what} {path} exists but cannot be read ({e.strerror}); check its permissions") \
            from None
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{what} {path} is unreadable or truncated: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} is not a JSON object")
    return data


def read_tensors(path: Path, what: str = "weights", record: dict | None = None, fingerprint: str | None = None,
                 described_by: Path | str = "its description") -> dict[str, torch.Tensor]:
    """Load a safetensors file and check it against ``record`` (its SHA-256) and the substrate ``fingerprint``.

    Every failure is a ``CheckpointError`` naming the file. Without a record (files written by an
    older growlm) the file loads with an ``IntegrityWarning``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} file {path} does not exist")
    try:
        digest = sha256_file(path)  # also tells an unreadable file from a missing one (safetensors cannot)
    except OSError as e:
        raise CheckpointError(f"{what} file {path} exists but cannot be read ({e.strerror}); check its "
                              "permissions") from None

    def relabelled(saved: str | None) -> None:
        if fingerprint is not None and saved is not None and saved != fingerprint:
            raise CheckpointError(f"{what} file {path} was written for substrate {saved[:12] or '<none>'} but "
                                  f"{described_by} names substrate {fingerprint[:12] or '<none>'}: the description "
                                  "does not belong to these weights (copied from another model?)")

    if record is None and not _TRUST_UNHASHED.get():
        raise CheckpointError(f"{what} file {path} has no recorded SHA-256 in {described_by} (written by an older "
                              "growlm, or the record was removed), so corrupted bytes would go unnoticed; check it, "
                              f"then record its hashes with `growlm rehash {path.parent}`, or load it unchecked with "
                              "--trust-unhashed (in Python: `with trusting_unhashed(): ...`)")
    if record is not None and digest != record.get("sha256"):
        relabelled(_saved_fingerprint(path))  # the more telling reason, when the header still says it
        size, written = path.stat().st_size, record.get("bytes")
        why = (f"is corrupt or truncated: it has {size} bytes, {written} were written" if written not in (None, size)
               else f"is corrupt: it does not match the SHA-256 recorded in {described_by}")
        raise CheckpointError(f"{what} file {path} {why}; it changed after it was written: restore it, or resume "
                              "from an earlier checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{what} file {path} is corrupt or truncated ({e}); "
                              "restore it or resume from an earlier checkpoint") from None
    relabelled(meta.get(SUBSTRATE_KEY))
    if record is None:
        warnings.warn(f"{what} file {path} has no recorded SHA-256 in {described_by} (written by an older growlm), "
                      "so its integrity cannot be checked (--trust-unhashed); record one with `growlm rehash`",
                      IntegrityWarning, stacklevel=3)
    return tensors


def _saved_fingerprint(path: Path) -> str | None:
    """The substrate fingerprint in a safetensors file's metadata, or None if its header is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(SUBSTRATE_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


# --------------------------------------------------------------------------- model directories


def check_model_output(path: str | Path, kind: str | None = None) -> None:
    """``path`` may receive a model: missing, empty, or a growlm model directory holding only growlm's files
    (and, given ``kind``, a model of that kind: a composition never replaces a grown model)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path} exists and is not a directory; choose a directory for the model")
    if not path.is_dir() or not any(path.iterdir()):
        return
    extra = foreign_entries(path, MODEL_OWNED)
    meta = read_json(path / "model.json") if (path / "model.json").is_file() else {}
    if extra or meta.get("format") != FORMAT:
        names = extra or sorted(p.name for p in path.iterdir())
        raise OutputDirError(f"{path} is not empty and holds files growlm did not write ({', '.join(names[:5])}); "
                             "choose a new or empty directory")
    if kind is not None and meta.get("kind") != kind:
        raise OutputDirError(f"{path} holds a growlm model of kind {meta.get('kind')!r}, not an earlier {kind!r} "
                             "one; choose a new or empty directory")


def save_model(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write a model directory atomically (weights + JSON) for any registered model kind.

    An existing directory is replaced only if it is a growlm model directory holding nothing else.
    """
    path = Path(path)
    check_model_output(path)
    kind = _kind_of(model)
    meta = {"format": FORMAT, **model.save_meta(), **(extra or {})}
    meta["kind"] = kind.kind
    with atomic_dir(path, owned=MODEL_OWNED) as tmp:
        record = write_tensors(model.state_dict(), tmp / "model.safetensors", meta.get(SUBSTRATE_KEY, ""))
        meta["files"] = {"model.safetensors": record}
        (tmp / "model.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return path


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or the final model of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / "model.json").exists():
        return path
    if _foreign(path) is not None:
        return path
    if (path / "model" / "model.json").exists():
        return path / "model"
    stages = sorted((path / "stages").glob("stage-*")) if (path / "stages").exists() else []
    if stages:
        return stages[-1]
    raise CheckpointError(f"{path} is not a growlm model or run directory (no model.json, model/ or stages/)"
                          + (f", nor a directory growlm export wrote (no {', '.join(f.marker for f in FORMATS)})"
                             if FORMATS else ""))


def read_model_meta(path: str | Path) -> dict:
    """The model description of a model directory (its model.json) or of a registered format's directory."""
    d = resolve_model_dir(path)
    fmt = _foreign(d)
    return fmt.describe(d) if fmt is not None else read_json(d / "model.json", "model description")


def load_model(path: str | Path, substrate=None, map_location: str = "cpu") -> torch.nn.Module:
    """Load a model directory (or a run's final model), verifying its weights and substrate."""
    d = resolve_model_dir(path)
    fmt = _foreign(d)
    if fmt is not None:
        return fmt.load(d, substrate).to(map_location)
    meta = read_json(d / "model.json", "model description")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{d} is not a growlm model (format {meta.get('format')!r}, expected {FORMAT!r})")
    cls = KINDS.get(meta.get("kind"))
    if cls is None:
        raise CheckpointError(f"{d}: unknown model kind {meta.get('kind')!r}; known kinds: {sorted(KINDS)}")
    state = read_tensors(d / "model.safetensors", "weights", (meta.get("files") or {}).get("model.safetensors"),
                         meta.get(SUBSTRATE_KEY), d / "model.json")
    return cls.from_saved(d, meta, state, substrate).to(map_location)


def record_hashes(desc: str | Path, names: list[str]) -> list[str]:
    """Record the SHA-256 of the tensor files ``names`` (beside the JSON ``desc``) that have none, after checking
    each: it reads whole, its values are finite and it names the substrate ``desc`` names. Returns those recorded.

    A check cannot tell bytes flipped into other finite values: record hashes only for files you trust."""
    desc = Path(desc)
    meta = read_json(desc)
    files = dict(meta.get("files") or {})
    todo = [n for n in names if n not in files]
    for name in todo:
        path = desc.parent / name
        with trusting_unhashed(), warnings.catch_warnings():
            warnings.simplefilter("ignore", IntegrityWarning)
            tensors = read_tensors(path, name, None, meta.get(SUBSTRATE_KEY), desc)
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise CheckpointError(f"{path} holds non-finite values ({', '.join(bad[:3])}): corrupt, or from a run "
                                  "that diverged; no hash recorded")
        files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if todo:
        meta["files"] = files
        atomic_write_text(desc, json.dumps(meta, indent=1))
    return todo
