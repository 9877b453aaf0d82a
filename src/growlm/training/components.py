"""What a growth run is built from, each part built once from the recipe: ``build_components``.

The device and process group, the substrate, the token data, the precision, the run directory (claimed and
locked), the metrics log, the data RNG, the checkpointer, and the model with the run state: new, or as the
latest checkpoint left them. ``growlm.training.run.Run`` then only drives the stages through the loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from growlm.data.tokens import TokenData, open_data
from growlm.model import Config, GrowLM
from growlm.model.saved import CheckpointError, load_model
from growlm.substrate import Substrate, SubstrateSpec
from growlm.training import flops, plan, stages
from growlm.training.loggers import open_loggers
from growlm.training.loop import RunState
from growlm.training.metrics import MetricsLog
from growlm.training.parallel import Distributed
from growlm.training.plan import Recipe
from growlm.training.rundir import RunDir
from growlm.training.trainstate import Checkpointer, Resumed
from growlm.util.alloc import tune_allocator
from growlm.util.fileio import atomic_write_text


@dataclass
class Components:
    """One growth run's parts; ``model``, ``state`` and ``opt_state`` (a resumed stage's optimiser) go on changing."""

    recipe: Recipe
    out: Path
    dist: Distributed
    substrate: Substrate
    data: TokenData
    rundir: RunDir
    metrics: MetricsLog
    generator: torch.Generator
    checkpointer: Checkpointer
    log: Callable[[str], None]
    model: GrowLM | None = None
    state: RunState = field(default_factory=RunState)
    opt_state: dict | None = None

    @property
    def precision(self) -> str:
        """The precision the run trains in (on resume, the one it trained in so far)."""
        return self.checkpointer.precision

    def close(self) -> None:
        """Close the loggers and release the run directory's lock."""
        self.metrics.close()
        self.rundir.close()


def build_components(recipe: Recipe, out: str | Path, resume: bool = False, device: str | None = None,
                     log: Callable[[str], None] = print, loggers: list[str] | None = None) -> Components:
    """Build a growth run's parts from its recipe, claiming the run directory ``out``; with ``resume``, as the
    latest checkpoint left them (or from the start where the run stopped before its first). ``loggers`` replace the
    recipe's ``[train] loggers``."""
    out, train = Path(out), recipe.train
    tune_allocator()
    dist = Distributed.setup(device, train.parallel)
    log = log if dist.main else (lambda *a, **k: None)
    substrate = recipe.substrate.build(recipe.config().d_model)
    data = None
    if dist.main:  # the first use of the default corpus tokenises it: once, on rank 0, the others wait
        data = open_data(recipe.data.path, substrate.spec.vocab)
        if dist.device.type == "cpu":
            flops.cpu_peak()  # measured once (alone, not raced by the other ranks) and cached for them
    dist.barrier()
    # "auto" is a measurement: every rank must take rank 0's decision, or replicas would train differently
    precision = dist.agree(flops.resolve_precision(train.precision, dist.device))
    if data is None:
        data = open_data(recipe.data.path, substrate.spec.vocab)
    plan.preflight(recipe, data, dist.world)  # before the run directory is created
    rundir = RunDir(out, "grow", resume=resume, enabled=dist.main)  # claimed and locked
    metrics = None
    try:
        generator = torch.Generator().manual_seed(train.seed)
        metrics = MetricsLog(out / "metrics.jsonl", enabled=dist.main)
        checkpointer = Checkpointer(out, dist, metrics, generator, ("recipe_fingerprint", recipe.fingerprint()),
                                    lambda: _plan_refusal(recipe, out), train.precision, precision, log)
        parts = Components(recipe, out, dist, substrate, data, rundir, metrics, generator, checkpointer, log)
        resumed = checkpointer.resume(lambda r: _fit(parts, r)) if resume else None
        if resumed is None:
            _start(parts, resume)
        else:
            parts.state = resumed.state
            parts.opt_state = resumed.optimizer if parts.state.stage_started else None
            log(f"resuming {out} at stage {parts.state.stage} step {parts.state.stage_step} "
                f"(global step {parts.state.step}, {parts.state.tokens:,} tokens)")
        names = train.loggers if loggers is None else loggers
        if names and dist.main:
            metrics.loggers = open_loggers(names, out, recipe.raw, resume_step=parts.state.step if resume else None)
    except BaseException:
        if metrics is not None:
            metrics.close()
        rundir.close()
        raise
    return parts


def _plan_refusal(recipe: Recipe, out: Path) -> ValueError:
    saved = out / "plan.json"
    diff = recipe.diff(Recipe.load(saved)) if saved.exists() else ["(saved plan missing)"]
    return ValueError(f"cannot resume {out} with a different plan: it differs in {diff}; "
                      f"resume with the run's own plan ({saved}) or start a new run")


def _start(parts: Components, resume: bool) -> None:
    """A new model (or the plan's ``init_from``) and a fresh run directory."""
    recipe, out, dist = parts.recipe, parts.out, parts.dist
    if resume:  # it stopped before its first checkpoint: nothing to keep, start it over
        if Recipe.load(out / "plan.json").fingerprint() != recipe.fingerprint():
            raise _plan_refusal(recipe, out)
        parts.log(f"{out} stopped before its first checkpoint: starting it from the beginning")
    if parts.rundir.started():
        raise ValueError(f"{out} already holds a run; continue it with --resume, or choose a new --out")
    torch.manual_seed(recipe.train.seed)
    source = recipe.model.get("init_from")
    if source:  # the plan grows a saved model further (load_model checks it sits on the plan's substrate)
        parts.model = load_model(source, substrate=parts.substrate).to(dist.device)
        parts.log(f"starting from {source}: depth {len(parts.model.blocks)}")
    else:
        parts.model = GrowLM(recipe.config(), parts.substrate).to(dist.device)
    if dist.main:
        parts.metrics.truncate(0)  # a run that died before its first checkpoint starts over
        atomic_write_text(out / "plan.json", json.dumps(recipe.raw, indent=1, ensure_ascii=False))
        if recipe.source:
            atomic_write_text(out / "plan.toml", recipe.source)
    dist.barrier()


def _fit(parts: Components, resumed: Resumed) -> None:
    """The model a checkpoint holds, on this plan's substrate: mid-stage, frozen and adapted as the stage was."""
    ckpt, saved, at, substrate = resumed.path, resumed.saved, resumed.state, parts.substrate
    substrate.check_same(saved.get("substrate_fingerprint", ""), f"checkpoint {ckpt}")
    if SubstrateSpec.from_dict(saved["substrate"]) != substrate.spec:
        raise ValueError(f"checkpoint {ckpt} was made on substrate {saved['substrate']}, "
                         f"the plan gives {substrate.spec.to_dict()}")
    stage = parts.recipe.stages[at.stage] if at.stage < len(parts.recipe.stages) else None
    if stage is not None and at.stage_started:
        # mid-stage: freeze and attach adapters as the stage did, then load (adapters included)
        model = GrowLM(Config.from_dict(saved["config"]), substrate)
        stages.apply_stage(model, stage)
        try:
            model.load_state_dict(resumed.weights, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {ckpt} does not fit its plan: {e}") from None
    else:
        meta = {k: saved[k] for k in ("config", "substrate", "substrate_fingerprint")}
        model = GrowLM.from_saved(ckpt, meta, resumed.weights, substrate)
    parts.model = model.to(parts.dist.device)
