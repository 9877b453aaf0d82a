"""Growth: plans, stages, freezing, LoRA phases and parameter budgets (arXiv 2507.07129, section 3.2).

A growth *plan* is data: a TOML recipe mapping onto ``Recipe`` (model,
substrate, data, train) and an ordered list of ``Stage``s. A stage adds
``add`` fresh blocks (initialised ``fresh``, ``identity`` or ``copy``), or
starts a LoRA phase; it trains the newest ``train_newest`` blocks (and the head
unless ``train_head = false``; a baseline's trainable embedding unless
``train_embedding = false``) for ``steps`` optimiser steps or ``tokens`` tokens,
on a named data mixture, at its own learning rate (the head may be held still,
then warmed up, apart from the blocks: ``head_freeze_steps``, ``head_warmup_steps``). A LoRA phase puts adapters
on the frozen blocks and merges them back when the phase ends.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from growlm.model import Config, GrowLM, lora
from growlm.model.saved import read_json, resolve_model_dir
from growlm.substrate import SubstratePlan, Vocabulary
from growlm.training.loggers import LOGGERS
from growlm.util.fields import AT_LEAST_0, AT_LEAST_1, POSITIVE, check_fields
from growlm.util.fileio import atomic_write_text

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"  # the recipes shipped in the package


def _from_dict(cls, d: dict, where: str):
    """Build a recipe part, refusing unknown keys, wrong types and out-of-range values by name."""
    if not isinstance(d, dict):
        raise ValueError(f"[{where}] must be a table, got {d!r}")
    return cls(**check_fields(cls, d, where, RANGES.get(cls.__name__)))


@dataclass(frozen=True)
class Stage:
    """One step of a growth plan."""

    name: str = ""
    add: int = 0  # fresh blocks stacked on top when the stage starts
    init: str = "fresh"  # how new blocks start: fresh | identity | copy
    train_newest: int = 1  # the newest k blocks train fully
    train_head: bool = True  # the LM head (and final norm) train
    train_embedding: bool = True  # a trainable embedding (baselines only) trains; false freezes it from here on
    lora: lora.LoRASpec | None = None  # a LoRA phase: adapters on the frozen blocks, merged at the end
    steps: int = 0  # optimiser steps (or give tokens)
    tokens: int = 0  # tokens to train on; converted to steps with the global batch
    lr: float | None = None  # peak learning rate (default: [train].lr)
    warmup_steps: int | None = None  # default: [train].warmup_steps
    mixture: str = "all"  # a name from [data.mixtures], or "all"
    # the head (LM head and final norm) apart from the blocks: no update for its first head_freeze_steps, then its
    # rate ramps linearly from 0 to the stage's over head_warmup_steps (on top of the stage's own schedule)
    head_freeze_steps: int = 0
    head_warmup_steps: int = 0

    @property
    def kind(self) -> str:
        return "lora" if self.lora else "grow"

    def validate(self, index: int) -> None:
        where = f"stage {index} ({self.name or 'unnamed'})"
        if self.init not in ("fresh", "identity", "copy"):
            raise ValueError(f"{where}: init must be fresh, identity or copy, got {self.init!r}")
        if self.add < 0 or self.train_newest < 0:
            raise ValueError(f"{where}: add and train_newest must be >= 0")
        if self.train_newest == 0 and not self.train_head and self.lora is None:
            raise ValueError(f"{where} trains nothing: set train_newest > 0, train_head = true or a [lora] phase")
        if (self.head_freeze_steps or self.head_warmup_steps) and not self.train_head:
            raise ValueError(f"{where}: head_freeze_steps and head_warmup_steps schedule the head, which "
                             "train_head = false freezes; drop them or set train_head = true")
        if bool(self.steps) == bool(self.tokens):
            raise ValueError(f"{where}: give exactly one of steps or tokens (got steps={self.steps}, "
                             f"tokens={self.tokens})")


PARALLEL = ("ddp", "fsdp")
# [train] keys that choose how a run executes, not what it computes: a run may resume under other values
# (checkpoints hold full, unsharded state), so they stay out of the plan's fingerprint.
EXECUTION_ONLY = ("parallel", "activation_checkpointing", "loggers")
# stage keys added after runs existed: left out of the fingerprint at their default, so those runs still resume
LATER_STAGE_KEYS = {"head_freeze_steps": 0, "head_warmup_steps": 0}
LATER_TRAIN_KEYS = {"skip_bad_batches": 0}  # the same for [train] keys


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation and logging settings shared by all stages."""

    batch_size: int = 16  # sequences per optimiser step (global, across processes and accumulation)
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 1337
    log_every: int = 10
    val_every: int = 100  # 0 = only at stage ends
    val_tokens: int = 32768  # validation tokens per language
    ckpt_every: int = 100  # 0 = only at stage ends
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: str | bool = "auto"  # auto (CUDA yes, CPU no: growlm.training.loop.COMPILE_AUTO) | true | false
    loss_chunk: int = 0  # rows per chunk of the head's loss; 0 = automatic
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated model) | "fsdp" (FSDP2, each block sharded)
    activation_checkpointing: bool = False  # recompute each trained block in backward: less memory, ~1/3 more compute
    loggers: list[str] = field(default_factory=list)  # beside metrics.jsonl: "tensorboard", "wandb" (optional extras)
    # a step whose loss or gradient norm is not finite stops the run (0), or is skipped, up to this many times a run
    skip_bad_batches: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))  # a TOML array arrives as a list
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"[train] betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if str(self.compile).lower() not in ("auto", "true", "false"):
            raise ValueError(f"compile must be auto, true or false, got {self.compile!r}")
        unknown = sorted(set(self.loggers) - set(LOGGERS))
        if unknown:
            raise ValueError(f"[train] loggers: unknown {unknown}; choose from {list(LOGGERS)}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"[train] parallel must be one of {sorted(PARALLEL)}, got {self.parallel!r}")
        # the numeric ranges a recipe is held to, for a TrainSpec built in Python too (e.g. val_every = -1)
        ranges = RANGES["TrainSpec"]
        check_fields(type(self), {k: getattr(self, k) for k in ranges}, "train", ranges)


@dataclass(frozen=True)
class DataSpec:
    """Where the token files are and which mixtures the stages may name."""

    path: str = "default"  # a `growlm prepare` directory, or "default" (the embedded corpus, prepared on demand)
    mixtures: dict[str, dict[str, float]] = field(default_factory=dict)


# the allowed range of every numeric recipe field, by recipe part
RANGES = {
    "Stage": {"add": AT_LEAST_0, "train_newest": AT_LEAST_0, "steps": AT_LEAST_0, "tokens": AT_LEAST_0,
              "lr": POSITIVE, "warmup_steps": AT_LEAST_0, "head_freeze_steps": AT_LEAST_0,
              "head_warmup_steps": AT_LEAST_0},
    "TrainSpec": {"batch_size": AT_LEAST_1, "seq_len": AT_LEAST_1, "grad_accum": AT_LEAST_1, "lr": POSITIVE,
                  "min_lr_ratio": (0, 1, True), "warmup_steps": AT_LEAST_0, "weight_decay": AT_LEAST_0,
                  "grad_clip": AT_LEAST_0, "seed": AT_LEAST_0, "log_every": AT_LEAST_1, "val_every": AT_LEAST_0,
                  "val_tokens": AT_LEAST_1, "ckpt_every": AT_LEAST_0, "loss_chunk": AT_LEAST_0,
                  "skip_bad_batches": AT_LEAST_0},
    "LoRASpec": {"rank": AT_LEAST_1, "alpha": POSITIVE},
}


def _check_mixtures(mixtures: dict) -> None:
    for name, mix in mixtures.items():
        if not isinstance(mix, dict) or not mix:
            raise ValueError(f"[data.mixtures] {name} must be a table of language = weight, got {mix!r}")
        for lang, w in mix.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
                raise ValueError(f"[data.mixtures] {name}.{lang} must be a finite number >= 0, got {w!r}")
        if sum(mix.values()) <= 0:
            raise ValueError(f"[data.mixtures] {name}: the weights sum to 0; give at least one language a weight > 0")


@dataclass(frozen=True)
class Recipe:
    """A whole growth plan: model, substrate, data, training settings and stages (frozen once validated: a variant
    is a new recipe, ``dataclasses.replace`` or ``from_dict``)."""

    name: str
    model: dict  # a Config preset name under "preset" plus field overrides; n_layer = depth before stage 0
    substrate: SubstratePlan  # kind, vocab, options (d_model comes from the model)
    data: DataSpec
    train: TrainSpec
    stages: list[Stage]
    source: str = ""  # the TOML text it was read from, if any
    raw: dict = field(default_factory=dict)  # the parsed recipe (saved as plan.json in every run)

    @classmethod
    def from_dict(cls, d: dict, name: str = "recipe", source: str = "") -> Recipe:
        """Validate and build a recipe from parsed TOML."""
        known = {"name", "description", "model", "substrate", "data", "train", "stages"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe section(s) {sorted(unknown)}; valid sections are {sorted(known)}")
        for key in ("name", "description"):
            if key in d and not isinstance(d[key], str):
                raise ValueError(f"recipe {key} must be a string, got {d[key]!r}")
        for key in ("model", "substrate", "data", "train"):
            if not isinstance(d.get(key, {}), dict):
                raise ValueError(f"[{key}] must be a table, got {d[key]!r}")
        if not isinstance(d.get("stages", []), list):
            raise ValueError(f"stages must be an array of tables ([[stages]]), got {d['stages']!r}")
        stages = []
        for i, s in enumerate(d.get("stages", [])):
            if not isinstance(s, dict):
                raise ValueError(f"[stages.{i}] must be a table, got {s!r}")
            s = {**s, "name": f"stage-{i}"} if s.get("name", "") == "" else dict(s)
            if "lora" in s:
                s["lora"] = _from_dict(lora.LoRASpec, s["lora"], f"stages.{i}.lora")
            st = _from_dict(Stage, s, f"stages.{i}")
            st.validate(i)
            stages.append(st)
        if not stages:
            raise ValueError("the recipe has no [[stages]]; a growth plan needs at least one stage")
        recipe = cls(name=d.get("name", name), model=dict(d.get("model", {})),
                     substrate=SubstratePlan.from_dict(d["substrate"]) if "substrate" in d else SubstratePlan(),
                     data=_from_dict(DataSpec, d.get("data", {}), "data"),
                     train=_from_dict(TrainSpec, d.get("train", {}), "train"), stages=stages, source=source,
                     raw=d)
        _check_mixtures(recipe.data.mixtures)
        if not isinstance(recipe.model.get("preset", "demo"), str):
            raise ValueError(f"[model] preset must be a string, got {recipe.model['preset']!r}")
        cfg = recipe.config()  # validates the model section
        if recipe.train.seq_len > cfg.block_size:
            raise ValueError(f"[train] seq_len = {recipe.train.seq_len} is longer than [model] block_size = "
                             f"{cfg.block_size}, the longest context the model is built for; lower seq_len or "
                             "raise block_size")
        for st in stages:
            if st.mixture != "all" and st.mixture not in recipe.data.mixtures:
                raise ValueError(f"stage {st.name} names mixture {st.mixture!r}; [data.mixtures] defines "
                                 f"{sorted(recipe.data.mixtures)} (or use 'all')")
        return recipe

    @classmethod
    def load(cls, name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """Read a recipe (TOML, or the plan.json a run saved), or a shipped recipe by name (``demo``, ...), with
        ``overrides`` (``train.lr=1e-3``, ``stages.1.steps=50``: see :func:`apply_overrides`) applied first."""
        data, text, path = cls._read(name_or_path)
        if overrides:
            data, text = apply_overrides(data, overrides), ""  # the TOML text no longer describes the plan
        return cls.from_dict(data, name=data.get("name", path.stem), source=text if path.suffix == ".toml" else "")

    @classmethod
    def load_raw(cls, name_or_path: str | Path) -> dict:
        """The parsed recipe file, not yet validated (to derive variants of a shipped recipe)."""
        return cls._read(name_or_path)[0]

    @staticmethod
    def _read(name_or_path: str | Path) -> tuple[dict, str, Path]:
        path = resolve_recipe(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"recipe {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"recipe {path} is not valid {path.suffix[1:].upper()}: {e}") from None
        return data, text, path

    def config(self) -> Config:
        """The model config before the first stage (n_layer = starting depth, usually 0; with ``init_from``, the
        saved model's)."""
        m = dict(self.model)
        if "init_from" in m:
            return self._saved_config(m)
        preset = m.pop("preset", "demo")
        m.setdefault("n_layer", 0)
        if "vocab" in m:
            raise ValueError("[model] has no 'vocab' key: the vocabulary is set in [substrate]")
        return Config.from_preset(preset, **{**m, "vocab_size": len(Vocabulary.load(self.substrate.vocab))})

    def _saved_config(self, m: dict) -> Config:
        """``[model] init_from``: the config of the saved model the plan starts from (its depth included)."""
        extra = sorted(set(m) - {"init_from"})
        if extra:
            raise ValueError(f"[model] init_from takes the architecture from the saved model; remove {extra}")
        d = resolve_model_dir(m["init_from"])
        meta = read_json(d / "model.json", "model description")
        if meta.get("kind", "growlm") != "growlm":
            raise ValueError(f"[model] init_from: {d} holds a {meta.get('kind')!r} model; a growth plan starts "
                             "from a single grown model (a run's model/ or stages/stage-NN/)")
        cfg = Config.from_dict(meta["config"])
        vocab = len(Vocabulary.load(self.substrate.vocab))
        if cfg.vocab_size != vocab:
            raise ValueError(f"[model] init_from: {d} has a vocabulary of {cfg.vocab_size} ids, the plan's "
                             f"[substrate] vocab has {vocab}")
        return cfg

    def settings(self) -> dict:
        """Everything that determines the run, as plain data (not comments or formatting)."""
        train = {k: v for k, v in asdict(self.train).items()
                 if k not in EXECUTION_ONLY and LATER_TRAIN_KEYS.get(k, object()) != v}
        stages = [{k: v for k, v in asdict(s).items() if LATER_STAGE_KEYS.get(k, object()) != v}
                  for s in self.stages]
        return {"model": self.model, "substrate": self.substrate.to_dict(), "data": asdict(self.data),
                "train": train, "stages": stages}

    def fingerprint(self) -> str:
        """Hash of ``settings()``."""
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True, default=str).encode()).hexdigest()

    def diff(self, other: Recipe) -> list[str]:
        """Keys (``train.lr``, ``stages[2]``) in which two recipes differ, for refusal messages."""
        a, b = self.settings(), other.settings()
        sa, sb = a.pop("stages"), b.pop("stages")
        out = [f"{k}.{kk}" for k in a for kk in sorted(set(a[k]) | set(b[k])) if a[k].get(kk) != b[k].get(kk)]
        n = max(len(sa), len(sb))
        return out + [f"stages[{i}]" for i in range(n) if sa[i:i + 1] != sb[i:i + 1]]

    def stage_steps(self, stage: Stage) -> int:
        """Optimiser steps of a stage (tokens are converted with the global batch: ``batch_size`` sequences per
        step, split into ``grad_accum`` micro-batches and over the processes, never multiplied by them)."""
        if stage.steps:
            return stage.steps
        per_step = self.train.batch_size * self.train.seq_len
        return max(1, -(-stage.tokens // per_step))


def _toml_value(text: str):
    """A TOML value (``1e-3``, ``true``, ``"x"``, ``[0.9, 0.95]``, ``{rank = 4}``); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of a parsed recipe with ``KEY=VALUE`` overrides set (``train.lr=1e-3``, ``stages.1.steps=50``,
    ``data.path=data/mine``): dotted keys into tables, numbers into ``[[stages]]``; the value is read as TOML,
    else taken as a string. The result is checked by the same rules as the file (``Recipe.from_dict``)."""
    out = json.loads(json.dumps(raw))  # a deep copy of plain data
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. train.lr=1e-3 or "
                             "stages.1.steps=50")
        node, where = out, []
        for part in parts[:-1]:
            where.append(part)
            if isinstance(node, list):
                node = _stage_at(node, part, ".".join(where))
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ValueError(f"--set {item!r}: {'.'.join(where)} is a value, not a table")
        last = parts[-1]
        if isinstance(node, list):
            raise ValueError(f"--set {item!r}: name a key of the stage ({key}.steps=...), not the stage itself")
        node[last] = _toml_value(value.strip())
    return out


def _stage_at(stages: list, index: str, where: str) -> dict:
    if not index.isdigit() or int(index) >= len(stages):
        raise ValueError(f"--set: {where}: the recipe has stages 0 .. {len(stages) - 1}")
    return stages[int(index)]


def recipe_from_template(template: str, out: str | Path, data: str | None = None,
                         overrides: list[str] | None = None) -> Path:
    """Write a new recipe ``out`` (.toml) started from a shipped one: its text and comments, named after ``out``,
    with ``[data] path = data`` if given; ``overrides`` are checked (not written) so a bad one fails here. The
    result is loaded back to check it; ``out`` must not exist."""
    out = Path(out)
    if out.suffix != ".toml":
        raise ValueError(f"{out}: a recipe file ends in .toml")
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another name (nothing was written)")
    if template not in shipped_recipes():
        raise FileNotFoundError(f"no shipped recipe {template!r}; shipped recipes: {shipped_recipes()}")
    text = (RECIPE_DIR / f"{template}.toml").read_text(encoding="utf-8")
    text = re.sub(r'(?m)^name = "[^"\n]*"', f"name = {json.dumps(out.stem)}", text, count=1)
    if data is not None:
        section = re.search(r"(?ms)^\[data\]\n(.*?)(?=^\[)", text)
        if section is None or not re.search(r"(?m)^path = ", section.group(1)):
            raise ValueError(f"recipe {template!r} has no [data] path line to replace")
        body = re.sub(r'(?m)^path = .*$', f"path = {json.dumps(str(data))}  # a `growlm prepare` directory",
                      section.group(1), count=1)
        text = text[:section.start(1)] + body + text[section.end(1):]
    header = f"# Started from the shipped recipe {template!r} (growlm init-recipe); edit freely.\n"
    Recipe.from_dict(apply_overrides(tomllib.loads(text), overrides or []), name=out.stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, header + text)
    return out


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """The recipe file a name or path means: a bare name of a shipped recipe (``demo``) is the shipped one even
    where a file or folder of that name exists here (a warning says so; ``./demo`` names the local one);
    anything else is a path."""
    text = str(name_or_path)
    shipped = RECIPE_DIR / f"{text}.toml"
    bare = "/" not in text and "\\" not in text and not Path(text).suffix
    if bare and shipped.is_file():
        if Path(text).exists():
            warnings.warn(f"recipe {text!r}: using the shipped recipe, not ./{text} here (give ./{text} for that)",
                          stacklevel=3)
        return shipped
    path = Path(text)
    if path.is_dir():
        raise IsADirectoryError(f"recipe {text!r} is a directory, not a recipe file (.toml, or a run's plan.json); "
                                f"shipped recipes: {shipped_recipes()}")
    if not path.exists():
        raise FileNotFoundError(f"recipe {text!r} not found; shipped recipes: {shipped_recipes()}")
    return path


def preflight(recipe: Recipe, data, world: int = 1) -> None:
    """Refuse, before any run directory exists, what would otherwise fail only after a stage has trained.

    ``data`` is the run's ``TokenData``: every stage's mixture must name its languages and find
    seq_len + 1 training tokens in each, and every language needs a validation split longer than
    seq_len within ``val_tokens`` (validation runs on all of them at every stage end).
    """
    t = recipe.train
    if t.batch_size % (t.grad_accum * world):
        raise ValueError(f"[train] batch_size {t.batch_size} is not divisible by grad_accum {t.grad_accum} x "
                         f"processes {world}; make it a multiple of {t.grad_accum * world}")
    where = getattr(data, "root", "the token directory")
    for st in recipe.stages:
        weights = recipe.data.mixtures.get(st.mixture) if st.mixture != "all" else None
        try:
            mix = data.mixture(weights)
        except KeyError as e:  # KeyError quotes its message; unwrap it
            raise ValueError(f"stage {st.name}: mixture {st.mixture!r} {e.args[0]}") from None
        for lang, w in mix.items():
            n = data.tokens(lang, "train").size
            if w > 0 and n <= t.seq_len + 1:
                raise ValueError(f"stage {st.name} trains on {lang!r}, whose train split in {where} has {n} tokens; "
                                 f"[train] seq_len = {t.seq_len} needs more than {t.seq_len + 1}")
    for lang in data.languages:
        n = data.tokens(lang, "val").size
        if n == 0:
            raise ValueError(f"{lang!r} has an empty validation split in {where}: `growlm prepare` held out no "
                             "document of it; give it more documents, a larger --val-fraction, or (a few long .txt "
                             "files) cut them into more documents with `growlm prepare --doc-chars` (smaller) or "
                             "--doc-separator")
        used = min(n, t.val_tokens)
        if used - 1 < t.seq_len:
            raise ValueError(f"{lang!r}: validation uses {used} tokens (the split has {n}, [train] val_tokens = "
                             f"{t.val_tokens}), fewer than seq_len + 1 = {t.seq_len + 1}; lower seq_len or raise "
                             "val_tokens, or hold out more text")


def parameter_budget(cfg: Config, train_newest: int = 1, substrate_table: int | None = None) -> dict[str, int]:
    """Parameter counts of the paper's three regimes for a model of ``cfg.n_layer`` blocks.

    ``fully_trainable``: every weight including the embedding; ``frozen_interface``:
    monolithic training on the frozen substrate (all blocks, final norm, head);
    ``grown_active``: a growth stage training the newest ``train_newest`` blocks,
    the final norm and the head. With ``substrate_table`` (the frozen table the author stores
    per token: V x d_model for a glyph substrate, the V x k code table for a binary one),
    ``author_total`` counts the model as the paper does: blocks, final norm, head and that table.
    """
    with torch.device("meta"):
        model = GrowLM(cfg)
    block = sum(p.numel() for p in model.blocks[0].parameters()) if len(model.blocks) else 0
    top = sum(p.numel() for p in model.head.parameters()) + sum(p.numel() for p in model.norm.parameters())
    emb = cfg.vocab_size * cfg.d_model
    k = min(train_newest, cfg.n_layer)
    out = {"fully_trainable": emb + cfg.n_layer * block + top, "frozen_interface": cfg.n_layer * block + top,
           "grown_active": k * block + top, "embedding": emb, "per_block": block, "head_and_norm": top,
           "n_layer": cfg.n_layer, "train_newest": k}
    if substrate_table is not None:
        out.update(substrate_table=substrate_table, author_total=cfg.n_layer * block + top + substrate_table)
    return out
