"""``growlm rehash PATH...``: check model and checkpoint files written without hashes and record their SHA-256."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def targets(path: Path) -> list[Path]:
    """The model and checkpoint directories of ``path``: itself, or those of a run (model/, stages/, checkpoints/)."""
    if (path / "model.json").is_file() or (path / "state.json").is_file():
        return [path]
    found = [d for d in [path / "model", *sorted(path.glob("stages/stage-*")), *sorted(path.glob("checkpoints/*")),
                         *sorted(path.glob("checkpoints/.*"))]
             if (d / "model.json").is_file() or (d / "state.json").is_file()]
    if not found:
        raise FileNotFoundError(f"{path} is not a growlm model, checkpoint or run directory (no model.json, "
                                "state.json, model/, stages/ or checkpoints/)")
    return found


def rehash(d: Path) -> list[str]:
    """Load ``d`` unchecked (it must load: shapes, substrate), check its files and record their hashes."""
    from growlm.model.saved import IntegrityWarning, load_model, record_hashes, trusting_unhashed
    from growlm.training.checkpoint import CHECKPOINT_OWNED, load_checkpoint

    checkpoint = (d / "state.json").is_file()
    with trusting_unhashed(), warnings.catch_warnings():
        warnings.simplefilter("ignore", IntegrityWarning)
        load_checkpoint(d) if checkpoint else load_model(d)
    names = sorted(n for n in CHECKPOINT_OWNED if n.endswith(".safetensors")) if checkpoint else ["model.safetensors"]
    return record_hashes(d / ("state.json" if checkpoint else "model.json"), names)


def run(args: argparse.Namespace) -> int:
    for path in args.paths:
        for d in targets(Path(path)):
            done = rehash(d)
            print(f"{d}: recorded the SHA-256 of {', '.join(done)}" if done else f"{d}: every file already hashed")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("rehash", help="record the missing SHA-256 of model and checkpoint files written by an older "
                                      "growlm, after checking them (they load, their values are finite)",
                       description="Files whose JSON records no hash are refused on load (corrupted bytes would go "
                       "unnoticed) unless --trust-unhashed is given. Once you trust them, this checks each such file "
                       "(it loads and fits its model, holds only finite values, names its substrate) and records its "
                       "SHA-256, so every later load verifies it. Files that already have a hash are left alone.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="model, checkpoint or run directories")
    p.set_defaults(func=run)
