"""Resumable training state: a checkpoint directory (weights, optimiser, RNG, run state), every file hashed.

``save_checkpoint`` writes ``model.safetensors``, ``optimizer.safetensors``, ``rng.safetensors`` and
``state.json`` (the SHA-256 of each tensor file) atomically; ``load_checkpoint`` refuses a file whose hash
differs. The tensor files are bound to a substrate fingerprint as model directories are
(``growlm.model.saved``). ``rng_state``/``restore_rng`` and ``resumed_precision`` are what an exact resume
restores besides the tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from growlm.model.saved import SUBSTRATE_KEY, CheckpointError, read_json, read_tensors, write_tensors
from growlm.util.fileio import atomic_dir, displaced_dirs, remove_stale_displaced

# --------------------------------------------------------------------------- training state

TRAIN_FORMAT = "growlm-train-1"
CHECKPOINT_OWNED = {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}


def save_checkpoint(path: str | Path, model: torch.nn.Module | dict, optimizer: torch.optim.Optimizer | dict | None,
                    state: dict, rng: dict[str, torch.Tensor]) -> Path:
    """Atomically write a resumable checkpoint: weights, optimiser state, RNG states and ``state`` JSON.

    ``model`` and ``optimizer`` may be given as their state dicts (full ones, e.g. gathered from FSDP shards).

    Every tensor file is hashed into ``state.json`` and bound to ``state["substrate_fingerprint"]``.
    """
    path = Path(path)
    opt_tensors, groups = {}, []
    if optimizer is not None:
        sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        for i, st in sd["state"].items():
            for k, v in st.items():
                opt_tensors[f"state.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        groups = sd["param_groups"]
    fp = state.get(SUBSTRATE_KEY, "")
    with atomic_dir(path, owned=CHECKPOINT_OWNED) as tmp:
        files = {name: write_tensors(t, tmp / name, fp) for name, t in
                 [("model.safetensors", model if isinstance(model, dict) else model.state_dict()),
                  ("optimizer.safetensors", opt_tensors),
                  ("rng.safetensors", rng)]}
        (tmp / "state.json").write_text(json.dumps({"format": TRAIN_FORMAT, **state, "param_groups": groups,
                                                    "files": files}, indent=1), encoding="utf-8")
    remove_stale_displaced(path)  # a killed save's earlier version: superseded now
    return path


def find_checkpoint(run: str | Path) -> Path | None:
    """The latest complete checkpoint of a run (``checkpoints/latest``, or the copy a crash left mid-swap)."""
    base = Path(run) / "checkpoints"
    for cand in (base / "latest", *displaced_dirs(base / "latest"), base / ".latest.old"):
        if (cand / "state.json").exists():
            return cand
    return None


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict | None, dict[str, torch.Tensor]]:
    """Read and verify a checkpoint: (state JSON, model weights, optimiser state dict or None, RNG states)."""
    path = Path(path)
    state = read_json(path / "state.json", "checkpoint state")
    if state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a growlm training checkpoint (format {state.get('format')!r})")
    files, fp, desc = state.get("files") or {}, state.get(SUBSTRATE_KEY), path / "state.json"
    weights = read_tensors(path / "model.safetensors", "checkpoint weights", files.get("model.safetensors"), fp, desc)
    flat = read_tensors(path / "optimizer.safetensors", "optimiser state", files.get("optimizer.safetensors"), fp,
                        desc)
    rng = read_tensors(path / "rng.safetensors", "RNG state", files.get("rng.safetensors"), fp, desc)
    opt = None
    if state.get("param_groups"):
        per: dict[int, dict] = {}
        for key, v in flat.items():
            _, i, k = key.split(".", 2)
            per.setdefault(int(i), {})[k] = v
        opt = {"state": per, "param_groups": state["param_groups"]}
    return state, weights, opt, rng


def resumed_precision(setting: str, saved: dict, now: str, log) -> str:
    """The precision a resumed run goes on in: with ``auto``, the one it trained in (``saved["precision"]``), not
    this process's measurement, which a busy or other machine can flip (exact resume)."""
    was = saved.get("precision")
    if setting != "auto" or was is None or was == now:
        return now
    log(f"precision auto: going on in {was}, as the run trained so far (this machine would now choose {now})")
    return was


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["data"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
