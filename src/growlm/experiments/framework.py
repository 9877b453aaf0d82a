"""The study runner behind ``growlm experiment NAME``: all seeds of a study, raw JSON, a 95%-interval table, a plot.

How a study plugs in (one module per study in ``src/growlm/experiments/``; nothing else to edit: every module of
the package that is not a helper is imported when a study is looked up, see ``load_studies``)::

    from growlm.experiments.common import last_stage, measure, plan, plan_flops, size, train
    from growlm.experiments.framework import SeedContext, Study, register

    STEPS = {"quick": 2, "default": 200, "cpu10x": 300, "gpu": 2000}  # one entry per scale (framework.SCALES)

    def run(ctx: SeedContext) -> list[dict]:
        # Train and measure everything for ONE seed, ``ctx.seed`` (0..N-1; ``plan`` turns it into the recipe's
        # training seed). ``ctx.shape``: the scale (quick = seconds, what the tests run; default; cpu10x; gpu), the
        # key of the study's own dicts (``size(ctx)`` gives the shared shapes); ``ctx.work``: this seed's own
        # directory for growth runs and models (kept, so an interrupted study resumes; ``train`` reuses a finished
        # run of the same plan); ``ctx.log``: progress lines; ``ctx.data``: the token files (``"default"`` = the
        # embedded corpus). Return one row per arm: the group keys (strings or numbers) and numeric metrics;
        # ``measure(ctx, stage_dir, raw)`` gives validation-split AND held-out bits per character per language
        # (``val_bpc_en``, ..., ``heldout_bpc_en``, ..., and their means ``val_bpc``, ``heldout_bpc``);
        # ``plan_flops(raw)`` gives the plan's training FLOPs as it trains.
        raw = plan(ctx, [{"name": "grow-1", "add": 1, "train_newest": 1, "steps": STEPS[ctx.shape]}])
        run_dir = train(ctx, raw, "arm-a")
        return [{"arm": "a", **measure(ctx, last_stage(run_dir), raw), **plan_flops(raw)}]

    STUDY = register(Study(
        name="my-study",                      # ``growlm experiment my-study``
        title="one line: what it measures",
        claim="the paper's claim it tests, with the paper's number",
        run=run,
        metrics=("val_bpc", "heldout_bpc", "train_flops"),   # summarised over seeds: mean, SD, 95% t-interval
        group=("arm",),                       # row keys that name one table row (the same in every seed)
        plot_x=None,                          # or a numeric group key to plot against (e.g. "depth")
        notes=("method notes printed under the table",),
    ))

A study should fit, all seeds included, in about 20 minutes of both cores of a 2-core CPU at its default size
(with their controls, composition now takes ~38 and grown-vs-monolithic ~28 CPU minutes for 3 seeds at one
thread: the committed seeds' ``cpu_s``; two studies run side by side use both cores), have a ``quick`` shape
that a test runs in seconds, and entries for the ``cpu10x`` and ``gpu`` scales (tests/experiments/test_scales.py
holds every run of them to its FLOPs range). ``run_study`` runs seeds 0..N-1 (default 3) and writes into
``--out``: ``seed-N.json`` per seed (the rows, with commit, dirty flag, machine, command, torch version, wall and CPU
seconds), ``summary.json`` (per group and metric: n, mean, sample SD, the 95% t-interval over seeds), ``table.md``
and ``plot.png``. A seed whose raw JSON was made by this very study (``study_fingerprint``: the study's module and
common.py, the scale, the held-out texts and the data) is read back, not rerun; any other is reported and rerun.
``growlm experiment report`` turns the committed summaries under ``docs/data/experiments/`` into docs/results.md
(``growlm.experiments.results``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import pkgutil
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from growlm.experiments.heldout import CURRENT as HELDOUT_VERSION
from growlm.training.flops import cpu_model
from growlm.training.rundir import RunDir
from growlm.util.fileio import LOCK_NAME, atomic_file, atomic_write_text, check_not_input
from growlm.util.provenance import git_commit

# two-sided 95% quantiles of Student's t, by degrees of freedom (1..30); beyond 30 the normal's 1.96 is within 4%
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


# The sizes every study runs at (``--scale``; ``common.SIZES`` holds the shared model shapes, each study its own
# steps and depths keyed by these names): quick = seconds (the tests), default = today's CPU size, cpu10x = about 10x
# its FLOPs per run, gpu = about 1e16 FLOPs per run on one CUDA device in bf16.
SCALES = ("quick", "default", "cpu10x", "gpu")


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; the scales are {', '.join(SCALES)}")
    return scale


@dataclass
class SeedContext:
    """What a study's ``run`` gets for one seed."""

    seed: int
    work: Path  # a directory of this seed's own (growth runs, models); kept, so an interrupted study resumes
    scale: str = "default"  # one of SCALES: the key of the study's size dicts (``ctx.shape``)
    quick: bool = False  # scale == "quick" (True given here selects it: the older spelling)
    log: Callable[..., None] = print
    progress: bool = False
    data: str = "default"  # token files the study trains on (a `growlm prepare` directory, or the embedded corpus)

    def __post_init__(self) -> None:
        if self.quick:
            self.scale = "quick"
        check_scale(self.scale)
        self.quick = self.scale == "quick"

    @property
    def shape(self) -> str:
        """The key of the study's per-scale dicts (``DEPTH[ctx.shape]``)."""
        return self.scale

    @property
    def device(self) -> str:
        """Where this scale trains: ``cuda`` for ``gpu`` (refused where there is none), else the CPU."""
        return "cuda" if self.scale == "gpu" else "cpu"


@dataclass(frozen=True)
class Verdict:
    """One row of results.md's verdict tables: a claim, where it is stated, the paper's number, growlm's measurement
    (with its rule) and the verdict.

    ``source`` is ``"paper"`` for a claim of the paper (or of the author's prior paper, model cards or code: ``cite``
    says which) and ``"growlm"`` for growlm's own hypotheses and controls, which get a table of their own."""

    claim: str
    paper: str  # the paper's number or words ("–" where it has none)
    measured: str  # growlm's measurement and the rule that decides the verdict
    verdict: str  # one of VERDICTS
    source: str = "paper"  # "paper" | "growlm"
    cite: str = ""  # where the claim is stated: "v1 §4.2, Fig. 4", "v3 abstract", "prior paper (arXiv 2507.04886)"
    scale: str = "default"  # whose data judged it: results.md counts the default scale's rows and each other's apart


VERDICTS = ("reproduced", "not reproduced at this scale", "not testable here", "not run yet")


def decide(ok: bool) -> str:
    """The verdict of a rule that holds (``ok``) or does not."""
    return VERDICTS[0] if ok else VERDICTS[1]


@dataclass(frozen=True)
class Study:
    """A registered study: ``run(ctx) -> list of rows`` for one seed; the runner does the rest."""

    name: str
    title: str  # one line: what it measures
    claim: str  # the paper's claim it tests (shown above the table)
    run: Callable[[SeedContext], list[dict]]
    metrics: tuple[str, ...]  # numeric row keys summarised over seeds (mean and 95% interval)
    group: tuple[str, ...] = ("arm",)  # row keys that name one table row (same across seeds)
    plot_x: str | None = None  # a numeric key of ``group``: plot each metric against it, one line per other group
    notes: tuple[str, ...] = field(default_factory=tuple)  # method notes printed under the table
    paper: str = ""  # the paper's number for the claim (the "Does it reproduce the paper?" table)
    # summary -> the verdict rows this study gives (``Verdict``); the rule belongs in the measurement text
    verdict: Callable[[dict], list[Verdict]] | None = None


STUDIES: dict[str, Study] = {}


PLOT_METRICS = 4  # the plot shows a study's first metrics (its headline ones); the table shows all
RESERVED = ("report",)  # subcommands of ``growlm experiment``, not studies
HELPERS = ("common", "framework", "heldout", "results")  # modules of the package that are no study


def register(study: Study) -> Study:
    """Add a study to the registry (``growlm experiment NAME`` finds it by name)."""
    if study.name in RESERVED:
        raise ValueError(f"{study.name!r} is a subcommand of growlm experiment; give the study another name")
    old = STUDIES.get(study.name)
    if old is not None and old.run.__module__ != study.run.__module__:
        raise ValueError(f"a study named {study.name!r} is registered twice ({old.run.__module__} and "
                         f"{study.run.__module__})")
    STUDIES[study.name] = study
    return study


def load_studies() -> dict[str, Study]:
    """Import every study module of ``growlm.experiments`` (each registers itself); the registry."""
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package's folder (no self-import)
        if not mod.name.startswith("_") and mod.name not in HELPERS:
            importlib.import_module(f"growlm.experiments.{mod.name}")
    return STUDIES


def get_study(name: str) -> Study:
    load_studies()
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; the studies are: {', '.join(sorted(STUDIES))} "
                         "(growlm experiment --list)")
    return STUDIES[name]


# --------------------------------------------------------------------------- statistics


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 values (df >= 1), got df={df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_interval(values: list[float]) -> dict:
    """Mean, sample standard deviation and the 95% t-interval half-width over seeds (n = 1: no interval)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def summarise(study: Study, seeds: dict[int, list[dict]]) -> list[dict]:
    """One row per group: each metric's mean and interval over the seeds that reported it, and the per-seed values
    (``values``, in seed order, None where a seed lacks it) for paired comparisons."""
    order: list[tuple] = []
    values: dict[tuple, dict[str, list[float | None]]] = {}
    ordered = sorted(seeds)
    for i, seed in enumerate(ordered):
        for r in seeds[seed]:
            missing = [k for k in study.group if k not in r]
            if missing:
                raise ValueError(f"study {study.name}: a row lacks its group key(s) {missing}: {r}")
            key = tuple(r[k] for k in study.group)
            if key not in values:
                order.append(key)
                values[key] = {m: [None] * len(ordered) for m in study.metrics}
            for m in study.metrics:
                if r.get(m) is not None:
                    values[key][m][i] = float(r[m])
    out = []
    for key in order:
        row = dict(zip(study.group, key))
        for m, vs in values[key].items():
            present = [v for v in vs if v is not None]
            if present:
                row[m] = {**mean_interval(present), "values": vs}
        out.append(row)
    return out


def cell(summary: dict, metric: str, **group) -> dict | None:
    """The summary cell of ``metric`` in the row whose group keys equal ``group`` (None if absent)."""
    for r in summary["rows"]:
        if all(r.get(k) == v for k, v in group.items()):
            return r.get(metric)
    return None


def paired(a: dict | None, b: dict | None) -> dict | None:
    """Mean and 95% t-interval of the per-seed differences a - b (seeds where both were measured)."""
    if not a or not b:
        return None
    d = [x - y for x, y in zip(a["values"], b["values"]) if x is not None and y is not None]
    return mean_interval(d) if d else None


# --------------------------------------------------------------------------- provenance


def provenance(argv: list[str] | None = None) -> dict:
    """Commit (with a dirty flag), machine, command and library versions of this process."""
    commit, dirty = git_commit()
    return {"commit": commit or "unknown (not a git checkout)", "dirty": dirty,
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
            "python": platform.python_version(), "torch": torch.__version__,
            "command": " ".join(["growlm", *(argv if argv is not None else sys.argv[1:])]),
            "heldout_texts": HELDOUT_VERSION}


# --------------------------------------------------------------------------- the runner


def study_fingerprint(study: Study, scale: str, data: str) -> str:
    """What a seed's raw JSON was made by: the SHA-256 of the study's module and of ``common.py`` (the shared shapes
    and training), the scale, the held-out texts' version and the data (its name, and a prepared directory's
    ``meta.json``, which lists every shard's SHA-256). A seed file whose fingerprint differs is rerun."""
    h = hashlib.sha256()
    module = sys.modules.get(study.run.__module__)
    source = getattr(module, "__file__", None)
    for path in ([Path(source)] if source else []) + [Path(__file__).with_name("common.py")]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    meta = Path(data) / "meta.json"
    h.update(json.dumps({"study": study.name, "scale": scale, "heldout_texts": HELDOUT_VERSION, "data": str(data),
                         "data_meta": meta.read_text(encoding="utf-8") if data != "default" and meta.is_file()
                         else None}, sort_keys=True).encode())
    return h.hexdigest()


STUDY_OUTPUTS = ("summary.json", "table.md", "plot.png")  # what run_study writes besides seed-N.json and work/


def holds_only_seeds_of(d: Path, name: str) -> bool:
    """Whether directory ``d`` holds nothing but study ``name``'s outputs, with at least one seed file: seed files
    of ``--only-seed`` runs copied into a new directory, to be read back together."""
    seeds = [p for p in d.iterdir() if p.name.startswith("seed-") and p.suffix == ".json"]
    if not seeds or any(p.name not in (*STUDY_OUTPUTS, LOCK_NAME) and p not in seeds for p in d.iterdir()):
        return False
    for p in seeds:
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        if not isinstance(raw, dict) or raw.get("study") != name:
            return False
    return True


SEEDS = 3  # seeds per study (growlm experiment --seeds): results.md judges a scaled study on all of them


def run_study(name: str, out: str | Path, seeds: int = SEEDS, quick: bool = False, argv: list[str] | None = None,
              progress: bool = False, data: str = "default", log=print, work: str | Path | None = None,
              scale: str | None = None, only_seed: int | None = None) -> dict | None:
    """Run every seed of study ``name`` into ``out``; write raw JSON per seed, summary.json, table.md, plot.png.

    ``scale`` is one of SCALES (``quick=True``: the older spelling of ``scale="quick"``; default: "default").
    ``work`` holds the seeds' growth runs and models (default ``out/work``); a seed whose ``seed-N.json`` was made
    by this very study (``study_fingerprint``: its code, scale, held-out texts and data) is read, not rerun, so an
    interrupted study continues where it stopped; any other seed file is reported and rerun. ``only_seed``: run (or
    read back) that one seed of 0..seeds-1 and write only its ``seed-N.json`` (returns None): the seeds of a study can
    run in several processes or on several machines, each into its own ``out``; copying the seed files into one
    directory and running the study there without ``only_seed`` reads them all back and writes the summary.
    """
    study = get_study(name)
    scale = check_scale(scale or ("quick" if quick else "default"))
    if quick and scale != "quick":
        raise ValueError(f"quick=True and scale={scale!r} disagree: give one of them")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if only_seed is not None and not 0 <= only_seed < seeds:
        raise ValueError(f"--only-seed must be one of the seeds 0..{seeds - 1}, got {only_seed}")
    if SeedContext(seed=0, work=Path("."), scale=scale).device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--scale {scale} trains on a CUDA device and this machine has none; run it on a GPU "
                             "machine, or pick --scale cpu10x")
    out = Path(out)
    if data != "default":  # the token files are an input: neither the output nor the work directory may touch them
        check_not_input(out, [data], "--out")
        check_not_input(work or out / "work", [data], "--work")
    fingerprint = study_fingerprint(study, scale, str(data))
    # missing, empty, an earlier experiment's, or seed files of this study copied together; locked while we write
    rundir = RunDir(out, "experiment", legacy=lambda d: holds_only_seeds_of(d, name))
    try:
        prov = provenance(argv)
        per_seed: dict[int, list[dict]] = {}
        for seed in range(seeds) if only_seed is None else [only_seed]:
            raw_path = out / f"seed-{seed}.json"
            if raw_path.is_file():
                raw = json.loads(raw_path.read_text(encoding="utf-8"))
                if raw.get("study_fingerprint") == fingerprint:
                    per_seed[seed] = raw["rows"]
                    log(f"seed {seed}: read {raw_path}")
                    continue
                log(f"{raw_path.name} is from an older version of the study (or another scale or data: its "
                    f"fingerprint {str(raw.get('study_fingerprint'))[:12]} is not {fingerprint[:12]}): rerunning")
            log(f"== {name} seed {seed + 1}/{seeds}{'' if scale == 'default' else f' ({scale})'}")
            seed_work = Path(work or out / "work") / f"{scale}-seed-{seed}"
            seed_work.mkdir(parents=True, exist_ok=True)
            t0, c0 = time.perf_counter(), time.process_time()
            rows = study.run(SeedContext(seed=seed, scale=scale, work=seed_work, log=log, progress=progress,
                                         data=str(data)))
            raw = {"study": name, "seed": seed, "scale": scale, "quick": scale == "quick", "data": str(data),
                   "study_fingerprint": fingerprint, **prov, "wall_s": round(time.perf_counter() - t0, 1),
                   "cpu_s": round(time.process_time() - c0, 1), "rows": rows}
            atomic_write_text(raw_path, json.dumps(raw, indent=1, ensure_ascii=False))
            per_seed[seed] = rows
        if only_seed is not None:
            return None
        summary = {"study": name, "title": study.title, "claim": study.claim, "scale": scale,
                   "quick": scale == "quick", "seeds": seeds, "study_fingerprint": fingerprint, **prov,
                   "group": list(study.group), "metrics": list(study.metrics), "notes": list(study.notes),
                   "rows": summarise(study, per_seed)}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
        atomic_write_text(out / "table.md", markdown_table(summary) + "\n")
        plot_summary(summary, out / "plot.png")
        return summary
    finally:
        rundir.close()


def summary_scale(summary: dict) -> str:
    """The scale a summary (or seed file) was made at; files from before scales say only ``quick``."""
    return summary.get("scale") or ("quick" if summary.get("quick") else "default")


def fmt(cell: dict | None, digits: int = 4) -> str:
    """``mean ± half-width`` (or the mean alone for one seed)."""
    if not cell:
        return "–"
    m = cell["mean"]
    if abs(m) >= 1 and m == int(m) and (not cell["ci95"] or cell["ci95"][1] == m) and abs(m) < 1e6:
        return f"{int(m)}" + (" ± 0" if cell["ci95"] else "")  # counts (steps, tokens) the same in every seed
    if abs(m) >= 1e6:
        return f"{m:.3g}" + (f" ± {(cell['ci95'][1] - m):.2g}" if cell["ci95"] else "")
    return f"{m:.{digits}f}" + (f" ± {(cell['ci95'][1] - m):.{digits}f}" if cell["ci95"] else "")


TABLE_METRICS = 10  # metric columns per Markdown table: wider studies (per task, per language) get several tables


def markdown_table(summary: dict) -> str:
    """The summary as Markdown: provenance, claim, and one row per group (mean ± 95% t-interval half-width)."""
    group, metrics = summary["group"], summary["metrics"]
    scale = summary_scale(summary)
    lines = [f"**{summary['title']}** ({summary['study']}{'' if scale == 'default' else ', ' + scale}; "
             f"{summary['seeds']} seed(s); mean ± 95% t-interval half-width over seeds)", "",
             f"Paper's claim: {summary['claim']}"]
    tables = max(1, math.ceil(len(metrics) / TABLE_METRICS))
    width = max(1, math.ceil(len(metrics) / tables))  # tables of equal width, at most TABLE_METRICS metrics each
    for i in range(0, len(metrics), width):  # a wide study's metrics in several tables, its groups in each
        part = metrics[i:i + width]
        lines += ["", "| " + " | ".join(group + part) + " |", "|" + "---|" * (len(group) + len(part))]
        for r in summary["rows"]:
            lines.append("| " + " | ".join([str(r[g]) for g in group] + [fmt(r.get(m)) for m in part]) + " |")
    lines += ["", f"commit `{summary['commit']}`{' (uncommitted changes)' if summary.get('dirty') else ''}; "
              f"machine: {summary['machine']}; torch {summary['torch']}; command: `{summary['command']}`; held-out "
              f"texts {summary.get('heldout_texts', 'v1')}"]
    lines += [f"- {n}" for n in summary.get("notes", [])]
    return "\n".join(lines)


def plot_summary(summary: dict, path: Path) -> None:
    """The first metrics against ``plot_x`` (one line per arm) or one point per group, with 95% interval error bars;
    the commit, machine and command that made the data are printed under the plot."""
    import matplotlib  # deferred: ~0.5 s with pyplot, needed only to plot a finished study, not to list or look one up

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, rows, group = summary["metrics"][:PLOT_METRICS], summary["rows"], summary["group"]
    study = STUDIES.get(summary["study"])
    x = study.plot_x if study else None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        def err(r, m=m):
            c = r.get(m)
            return 0.0 if not c or not c["ci95"] else c["ci95"][1] - c["mean"]

        if x:
            others = [g for g in group if g != x]
            lines: dict[str, list[dict]] = {}
            for r in rows:
                lines.setdefault(" ".join(str(r[g]) for g in others) or m, []).append(r)
            for label, rs in lines.items():
                rs = sorted((r for r in rs if r.get(m)), key=lambda r: r[x])
                ax.errorbar([r[x] for r in rs], [r[m]["mean"] for r in rs], yerr=[err(r) for r in rs],
                            marker="o", capsize=3, label=label)
            ax.set_xlabel(x)
            if len(lines) > 1:
                ax.legend(fontsize=7)
        else:
            rs = [r for r in rows if r.get(m)]
            ax.errorbar(range(len(rs)), [r[m]["mean"] for r in rs], yerr=[err(r) for r in rs], fmt="o", capsize=3)
            ax.set_xticks(range(len(rs)), [" ".join(str(r[g]) for g in group) for r in rs], rotation=30,
                          ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
    fig.suptitle(f"{summary['title']} ({summary['seeds']} seeds, 95% t-intervals)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.text(0.005, 0.005, f"commit {str(summary.get('commit', '?'))[:12]}{' (dirty)' if summary.get('dirty') else ''}"
             f"; {summary.get('machine', '?')}; `{summary.get('command', '?')}`", fontsize=6, color="0.35")
    atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
