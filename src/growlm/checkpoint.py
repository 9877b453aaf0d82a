"""Model directories and checkpoints: safetensors for tensors, JSON for the rest, atomic writes.

A *model directory* holds ``model.safetensors`` (weights; the frozen embedding
is not stored, it is rebuilt from the substrate spec and checked against the
fingerprint) and ``model.json`` (format, kind, config, substrate spec and
fingerprint). A *run directory* (written by ``growlm grow``) holds
``model/`` (the final model), ``stages/stage-NN/`` (the model at the end of
each stage) and ``checkpoints/`` (resumable training state).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from growlm.model import Config, GrowLM
from growlm.substrate import Substrate

FORMAT = "growlm-model-1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(path: str | Path, directory: bool = False) -> None:
    """Give a temporary file or directory the permissions a plain create would have (mkstemp uses 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, foreign or does not fit."""


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies, as safetensors wants them."""
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _atomic_file(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the result, and rename it over ``path``; no trace on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    _atomic_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors`` save through a temporary file and a rename."""
    cpu = _cpu(tensors)
    _atomic_file(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def atomic_dir(final: Path):
    """Context manager: yields a temporary directory that replaces ``final`` on success."""
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}."))
        _publish(self.tmp, directory=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path, what: str = "file") -> dict:
    """Read a JSON object, turning every failure into a ``CheckpointError`` that names the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{what} {path} is unreadable or truncated: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} is not a JSON object")
    return data


def read_tensors(path: Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning failures into a ``CheckpointError`` that names the file."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{what} file {path} does not exist") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{what} file {path} is corrupt or truncated ({e}); "
                              "restore it or resume from an earlier checkpoint") from None


def model_meta(model: GrowLM) -> dict:
    """The JSON description saved next to a GrowLM's weights."""
    return {"format": FORMAT, "kind": "growlm", "config": model.cfg.to_dict(),
            "substrate": model.substrate_spec, "substrate_fingerprint": model.substrate_fingerprint}


def save_model(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write a model directory atomically (weights + JSON); works for GrowLM and composed models."""
    path = Path(path)
    meta = model.save_meta() if hasattr(model, "save_meta") else model_meta(model)
    meta.update(extra or {})
    with atomic_dir(path) as tmp:
        save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=1))
    return path


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or the final model of a run directory."""
    path = Path(path)
    if (path / "model.json").exists():
        return path
    if (path / "model" / "model.json").exists():
        return path / "model"
    stages = sorted((path / "stages").glob("stage-*")) if (path / "stages").exists() else []
    if stages:
        return stages[-1]
    raise CheckpointError(f"{path} is not a growlm model or run directory (no model.json, model/ or stages/)")


def load_model(path: str | Path, substrate: Substrate | None = None, map_location: str = "cpu") -> torch.nn.Module:
    """Load a model directory (or a run's final model); checks the substrate fingerprint."""
    d = resolve_model_dir(path)
    meta = read_json(d / "model.json", "model description")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{d} is not a growlm model (format {meta.get('format')!r}, expected {FORMAT!r})")
    kind = meta.get("kind")
    if kind == "composed":
        from growlm.compose import load_composed

        return load_composed(d, meta, map_location=map_location)
    if kind != "growlm":
        raise CheckpointError(f"{d}: unknown model kind {kind!r}")
    state = read_tensors(d / "model.safetensors")
    return build_growlm(meta, state, substrate, where=str(d)).to(map_location)


def build_growlm(meta: dict, state: dict[str, torch.Tensor], substrate: Substrate | None = None,
                 where: str = "checkpoint") -> GrowLM:
    """A GrowLM from its saved description and weights, on the substrate the description names."""
    cfg = Config.from_dict(meta["config"])
    if substrate is None:
        substrate = Substrate.from_spec(meta["substrate"])
    substrate.check_same(meta["substrate_fingerprint"], f"model at {where}")
    model = GrowLM(cfg, substrate)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {where} do not fit the saved config: {e}") from None
    return model


# --------------------------------------------------------------------------- training state

TRAIN_FORMAT = "growlm-train-1"


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict, rng: dict[str, torch.Tensor]) -> Path:
    """Atomically write a resumable checkpoint: weights, optimiser state, RNG states and ``state`` JSON."""
    path = Path(path)
    opt_tensors, groups = {}, []
    if optimizer is not None:
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for k, v in st.items():
                opt_tensors[f"state.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        groups = sd["param_groups"]
    with atomic_dir(path) as tmp:
        save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_cpu(opt_tensors), str(tmp / "optimizer.safetensors"))
        save_file(_cpu(rng), str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"format": TRAIN_FORMAT, **state, "param_groups": groups},
                                                   indent=1))
    return path


def find_checkpoint(run: str | Path) -> Path | None:
    """The latest complete checkpoint of a run (``checkpoints/latest``, or the copy a crash left mid-swap)."""
    base = Path(run) / "checkpoints"
    for cand in (base / "latest", base / ".latest.old"):
        if (cand / "state.json").exists():
            return cand
    return None


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict | None, dict[str, torch.Tensor]]:
    """Read a checkpoint: (state JSON, model weights, optimiser state dict or None, RNG states)."""
    path = Path(path)
    state = read_json(path / "state.json", "checkpoint state")
    if state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a growlm training checkpoint (format {state.get('format')!r})")
    weights = read_tensors(path / "model.safetensors", "checkpoint weights")
    flat = read_tensors(path / "optimizer.safetensors", "optimiser state")
    rng = read_tensors(path / "rng.safetensors", "RNG state")
    opt = None
    if state.get("param_groups"):
        per: dict[int, dict] = {}
        for key, v in flat.items():
            _, i, k = key.split(".", 2)
            per.setdefault(int(i), {})[k] = v
        opt = {"state": per, "param_groups": state["param_groups"]}
    return state, weights, opt, rng
