"""Reports: the pictures a researcher would otherwise draw by hand from growlm runs.

``write_report(runs, out)`` reads each run's ``metrics.jsonl`` and its per-stage
``stages/stage-NN/eval.json`` files and writes PNGs plus ``out/report.md``:
loss against tokens with growth stages marked, benchmark scores and validation
bits per character against depth, an MMLU subject x depth heatmap, and (given a
table) experts against their compositions. A figure whose data is missing is
skipped with a note; it never stops the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches, ticker  # noqa: E402

from growlm.training.metrics import read_metrics  # noqa: E402
from growlm.util.fileio import check_not_input, claim_output_dir, staged_files  # noqa: E402

LANG_ORDER = ["en", "ru", "zh"]
KIND_COLORS = {"expert": "Blues", "composed": "Oranges", "finetuned": "Greens"}
STAGE_SHADES = {"lora": ("tab:purple", 0.12), "finetune": ("tab:green", 0.08)}
DPI = 130


@dataclass
class EvalPoint:
    """One stage's benchmark results: scores[task][metric] = (value, ci_lo, ci_hi); MMLU subject accuracies."""

    depth: int
    stage: int
    scores: dict[str, dict[str, tuple[float, float | None, float | None]]] = field(default_factory=dict)
    subjects: dict[str, float] = field(default_factory=dict)


@dataclass
class RunData:
    """Everything a report needs from one run directory."""

    path: Path
    name: str
    records: list[dict]
    evals: list[EvalPoint]

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("type") == kind]


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


# fields of a result that are counts or settings, not scores (perplexity duplicates bits_per_char's story)
NOT_SCORES = {"n", "count", "runs", "temperature", "new_tokens", "num_fewshot", "std", "tokens", "characters",
              "documents", "window", "perplexity", "nats_per_token"}


def parse_eval(data: dict, depth: int | None = None, stage: int | None = None) -> EvalPoint | None:
    """Read one ``eval.json`` object; None if its depth is unknown.

    Reads the layout ``growlm eval`` writes (depth and stage under ``model``, or top-level). Accepts
    ``results[task][metric] = value`` with ``metric_ci``/``metric_ci95`` = [lo, hi] beside it, or
    ``results[task][metric] = {"value", "ci95"}``, optionally one level down per protocol
    (``results[task]["loglik"]["acc"]``, named "loglik acc"); MMLU ``subjects`` = {subject: {"acc"}}."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}  # `growlm eval` writes them here
    depth = data.get("depth", model.get("depth", depth))
    if not isinstance(depth, int):
        return None
    stage = data.get("stage", model.get("stage", stage))
    point = EvalPoint(depth=depth, stage=stage if isinstance(stage, int) else -1)

    def read(task: str, res: dict, prefix: str) -> None:
        for metric, value in res.items():
            if metric in NOT_SCORES or metric.endswith(("_ci", "_ci95", "_stderr")):
                continue
            if metric == "subjects" and task == "mmlu" and isinstance(value, dict) and not point.subjects:
                for subject, sc in value.items():
                    acc = _num(sc.get("acc")) if isinstance(sc, dict) else _num(sc)
                    if acc is not None:
                        point.subjects[subject] = acc
            elif isinstance(value, dict) and "value" in value:
                ci = value.get("ci95", value.get("ci"))
                _add(task, prefix + metric, value.get("value"), ci)
            elif isinstance(value, dict) and not prefix:  # a protocol group: loglik, paper, standard
                read(task, value, f"{metric} ")
            else:
                _add(task, prefix + metric, value, res.get(f"{metric}_ci", res.get(f"{metric}_ci95")))

    def _add(task: str, metric: str, value, ci) -> None:
        v = _num(value)
        if v is None:
            return
        lo, hi = (_num(ci[0]), _num(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        point.scores.setdefault(task, {})[metric] = (v, lo, hi)

    for task, res in (data.get("results") or {}).items():
        if isinstance(res, dict):
            read(task, res, "")
    return point


def read_evals(run: Path) -> list[EvalPoint]:
    """The parsed ``stages/stage-NN/eval.json`` files of a run, in stage order (missing ones skipped)."""
    points = []
    for f in sorted(run.glob("stages/stage-*/eval.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{f}: unreadable eval results ({e}); re-run `growlm eval` for that stage") from None
        meta = {}
        if (f.parent / "model.json").exists():
            try:
                meta = json.loads((f.parent / "model.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                meta = {}
        p = parse_eval(data, depth=meta.get("depth"), stage=meta.get("stage")) if isinstance(data, dict) else None
        if p is not None:
            points.append(p)
    return points


def load_run(path: str | Path) -> RunData:
    """Read a run directory; an empty or missing one is an error."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    metrics = path / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.exists() else []
    evals = read_evals(path)
    if not records and not evals:
        raise ValueError(f"{path} has no metrics.jsonl records and no stages/stage-NN/eval.json: "
                         "is it a growlm run directory (written by `growlm grow`)?")
    return RunData(path=path, name=path.name or str(path), records=records, evals=evals)


# --------------------------------------------------------------------------- figures


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _ema(values: list[float], alpha: float) -> list[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else alpha * m + (1 - alpha) * v
        out.append(m)
    return out


def _fmt_tokens(x: float, _pos=None) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:g}{unit}"
    return f"{x:g}"


def plot_loss(runs: list[RunData], out_png: Path) -> Path | None:
    """Training loss against tokens, growth stages marked, validation bpc on a second axis; None if no data."""
    runs = [r for r in runs if r.of_type("train")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(10, 5.4))
    ax2, single, labelled = None, len(runs) == 1, set()
    for run, color in zip(runs, _colors(len(runs))):
        train = sorted(run.of_type("train"), key=lambda r: r.get("tokens", 0))
        xs = [r.get("tokens", 0) for r in train]
        ys = [r.get("loss", math.nan) for r in train]
        label = "train loss" if single else f"{run.name}: train loss"
        if len(xs) > 50:  # raw curve faint, smoothed curve on top
            ax.plot(xs, ys, color=color, alpha=0.25, lw=0.8)
            ax.plot(xs, _ema(ys, 0.9), color=color, lw=1.6, label=label + " (EMA 0.9)")
        else:
            ax.plot(xs, ys, color=color, lw=1.6, label=label)
        _mark_stages(ax, run, color, max(xs) if xs else 0, labelled, single)
        val = sorted((r for r in run.of_type("val") + run.of_type("stage_end") if _num(r.get("val_bpc_mean"))
                      is not None), key=lambda r: r.get("tokens", 0))
        if val:
            ax2 = ax2 or ax.twinx()
            ax2.plot([r.get("tokens", 0) for r in val], [r["val_bpc_mean"] for r in val], "o--",
                     color="tab:red" if single else color, mfc="white", ms=4, lw=0.8,
                     label="val bpc (mean over languages)" if single else f"{run.name}: val bpc")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("training loss (nats/token)")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_fmt_tokens))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("validation bits per character", color="tab:red" if single else "black")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    for kind, (c, a) in STAGE_SHADES.items():
        if any(s.get("kind") == kind for r in runs for s in r.of_type("stage")):
            handles.append(patches.Patch(color=c, alpha=a * 2.5))
            labels.append(f"{kind} stage")
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.9)
    fig.suptitle("Training loss with growth stages" + ("" if single else f" ({len(runs)} runs)"))
    return _save(fig, out_png)


def _mark_stages(ax, run: RunData, color, x_end: float, labelled: set, single: bool) -> None:
    """Vertical line at each stage start (labelled once per position and name), LoRA/fine-tune stages shaded."""
    stages = sorted(run.of_type("stage"), key=lambda s: s.get("tokens", 0))
    for i, s in enumerate(stages):
        x0 = s.get("tokens", 0)
        x1 = stages[i + 1].get("tokens", x_end) if i + 1 < len(stages) else x_end
        if s.get("kind") in STAGE_SHADES:
            c, a = STAGE_SHADES[s["kind"]]
            ax.axvspan(x0, x1, color=c, alpha=a, lw=0)
        ax.axvline(x0, color="0.35" if single else color, ls=":", lw=0.9)
        text = f"{s.get('name', f'stage {i}')} (d={s.get('depth', '?')})"
        if (x0, text) not in labelled:
            labelled.add((x0, text))
            ax.annotate(text, xy=(x0, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                        textcoords="offset points", rotation=45, fontsize=7, ha="left", va="bottom", color="0.2")


def _save(fig, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png


def last_eval_per_depth(run: RunData) -> list[EvalPoint]:
    """One eval per depth, in depth order: the last stage at that depth (LoRA/fine-tune supersede growth)."""
    by_depth: dict[int, EvalPoint] = {}
    for p in sorted(run.evals, key=lambda p: p.stage):
        by_depth[p.depth] = p
    return [by_depth[d] for d in sorted(by_depth)]


BITS_METRICS = {"gold_bpb", "bpb_margin", "bits_per_char"}


def is_bits_metric(metric: str) -> bool:
    """Bits per byte / character (gold_bpb, bpb_margin, bits_per_char): drawn apart from accuracies."""
    return metric.rsplit(" ", 1)[-1] in BITS_METRICS


def plot_benchmarks(runs: list[RunData], out_png: Path) -> Path | None:
    """Each benchmark metric against depth with 95% confidence bands; one panel per task and scale (scores,
    bits per byte), so that accuracies and bits never share an axis. None if no evals."""
    panels = sorted({(t, is_bits_metric(m)) for r in runs for p in r.evals for t, sc in p.scores.items() for m in sc})
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    single = len(runs) == 1
    for ax, (task, bits) in zip(axes.flat, panels):
        for run, run_color in zip(runs, _colors(len(runs))):
            points = last_eval_per_depth(run)
            metrics = sorted({m for p in points for m in p.scores.get(task, {}) if is_bits_metric(m) == bits})
            for k, metric in enumerate(metrics):
                # one run: a colour per metric; several: a colour per run; a line style and marker per metric, the
                # later ones thinner and smaller and drawn on top, so that equal scores (acc = acc_norm) still show
                # one line each
                color = _colors(len(metrics))[k] if single else run_color
                pts = [(p.depth, *p.scores[task][metric]) for p in points if metric in p.scores.get(task, {})]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=styles[k % len(styles)],
                        marker=markers[k % len(markers)], ms=max(3.0, 8 - 1.5 * k), lw=max(0.8, 2.4 - 0.5 * k),
                        mfc="none" if k == 0 else color, color=color, zorder=2 + k,
                        label=metric if single else f"{run.name} {metric}")
                band = [p for p in pts if p[2] is not None and p[3] is not None]
                if band:
                    ax.fill_between([p[0] for p in band], [p[2] for p in band], [p[3] for p in band],
                                    color=color, alpha=0.15, lw=0)
        ax.set_title(f"{task} (bits)" if bits else task)
        ax.set_xlabel("depth (blocks)")
        ax.set_ylabel("bits per byte / character (lower is better)" if bits else "score (higher is better)")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Benchmarks against depth (shaded: 95% confidence interval)")
    return _save(fig, out_png)


def bpc_by_depth(run: RunData) -> dict[int, dict]:
    """The last ``stage_end`` record at each depth (a LoRA stage at the same depth supersedes the grow stage)."""
    out: dict[int, dict] = {}
    for r in sorted(run.of_type("stage_end"), key=lambda r: (r.get("stage", 0), r.get("tokens", 0))):
        if isinstance(r.get("depth"), int) and isinstance(r.get("val_bpc"), dict):
            out[r["depth"]] = r
    return dict(sorted(out.items()))


def plot_bpc_depth(runs: list[RunData], out_png: Path) -> Path | None:
    """Validation bits per character by language against depth (from ``stage_end`` records); None if none."""
    data = [(run, bpc_by_depth(run)) for run in runs]
    if not any(d for _, d in data):
        return None
    langs = sorted({lang for _, d in data for r in d.values() for lang in r["val_bpc"]},
                   key=lambda x: (LANG_ORDER.index(x) if x in LANG_ORDER else 99, x))
    fig, axes = plt.subplots(1, len(langs), figsize=(4.2 * len(langs), 3.8), squeeze=False)
    for ax, lang in zip(axes.flat, langs):
        for (run, d), color in zip(data, _colors(len(data))):
            pts = [(k, _num(r["val_bpc"].get(lang))) for k, r in d.items()]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=run.name)
        ax.set_title(f"{lang}")
        ax.set_xlabel("depth (blocks)")
        ax.set_ylabel("validation bits per character")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Validation bits per character at the end of each depth")
    return _save(fig, out_png)


def plot_mmlu_heatmap(run: RunData, out_png: Path) -> Path | None:
    """MMLU accuracy per subject (rows) and depth (columns), like the paper's Figure 6; None if no subjects."""
    by_depth = {p.depth: p.subjects for p in last_eval_per_depth(run) if p.subjects}
    if not by_depth:
        return None
    depths = sorted(by_depth)
    subjects = sorted({s for d in by_depth.values() for s in d})
    grid = [[by_depth[d].get(s, math.nan) for d in depths] for s in subjects]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.75 * len(depths)), max(3.0, 1.2 + 0.22 * len(subjects))))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(0.5, max(max(r) for r in grid if r)))
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_yticks(range(len(subjects)), [s.replace("_", " ") for s in subjects], fontsize=7)
    ax.set_xlabel("depth (blocks)")
    if len(depths) * len(subjects) <= 400:
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.35 else "black")
    fig.colorbar(im, ax=ax, label="accuracy", fraction=0.05)
    ax.set_title(f"MMLU by subject and depth: {run.name}", fontsize=10)
    return _save(fig, out_png)


def plot_composition(table: dict, out_png: Path) -> Path | None:
    """Bar chart of validation bpc on en/ru/zh for experts, compositions and fine-tuned compositions."""
    rows = [r for r in (table.get("rows") or []) if isinstance(r, dict) and isinstance(r.get("bpc"), dict)]
    if not rows:
        return None
    langs = sorted({lang for r in rows for lang in r["bpc"]},
                   key=lambda x: (LANG_ORDER.index(x) if x in LANG_ORDER else 99, x))
    kinds = [r.get("kind", "expert") for r in rows]
    colors, seen = [], {}
    for k in kinds:  # one hue per kind, a shade per model within it
        n_kind = kinds.count(k)
        i = seen[k] = seen.get(k, -1) + 1
        colors.append(plt.get_cmap(KIND_COLORS.get(k, "Greys"))(0.45 + 0.4 * i / max(1, n_kind - 1)
                                                                  if n_kind > 1 else 0.65))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.55 * len(rows) * len(langs)), 4.4))
    for j, (r, c) in enumerate(zip(rows, colors)):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(langs))]
        vals = [_num(r["bpc"].get(lang)) for lang in langs]
        bars = ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None],
                      width * 0.92, color=c, edgecolor="0.3", lw=0.5,
                      label=f"{r.get('name', '?')} ({r.get('kind', 'expert')})")
        ax.bar_label(bars, fmt="%.2f", fontsize=6.5, padding=1, rotation=90 if len(rows) > 4 else 0)
    ax.set_xticks(range(len(langs)), langs)
    ax.set_ylabel("validation bits per character (lower is better)")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Experts against their compositions")
    return _save(fig, out_png)


# --------------------------------------------------------------------------- markdown


def bpc_table(runs: list[RunData]) -> str | None:
    """Markdown table: final validation bpc at each depth of each run."""
    rows = [(run, d, r) for run in runs for d, r in bpc_by_depth(run).items()]
    if not rows:
        return None
    langs = sorted({lang for _, _, r in rows for lang in r["val_bpc"]},
                   key=lambda x: (LANG_ORDER.index(x) if x in LANG_ORDER else 99, x))
    head = ["run", "depth", "stage", "tokens", *langs, "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, depth, r in rows:
        vals = [_num(r["val_bpc"].get(lang)) for lang in langs]
        known = [v for v in vals if v is not None]
        mean = _num(r.get("val_bpc_mean")) or (sum(known) / len(known) if known else None)
        cells = [run.name, str(depth), str(r.get("stage", "")), f"{int(r.get('tokens', 0)):,}",
                 *[f"{v:.3f}" if v is not None else "–" for v in vals], f"{mean:.3f}" if mean is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLE_METRICS = ("acc", "acc_norm", "gold_bpb", "bpb_margin")


def benchmark_table(runs: list[RunData]) -> str | None:
    """Markdown table: log-likelihood multiple-choice scores at each depth (accuracy and the gold answer's bits
    per byte with its margin over the best wrong answer, each with its 95% interval)."""
    rows = []
    for run in runs:
        for p in last_eval_per_depth(run):
            for task, sc in sorted(p.scores.items()):
                cells = [sc.get(f"loglik {m}") for m in TABLE_METRICS]
                if any(cells):
                    rows.append([run.name, str(p.depth), task, *(_cell(c) for c in cells)])
    if not rows:
        return None
    head = ["run", "depth", "task", *TABLE_METRICS]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def _cell(score: tuple[float, float | None, float | None] | None) -> str:
    if score is None:
        return "–"
    v, lo, hi = score
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{v:.3f}"


def samples_table(run: RunData) -> str | None:
    """Markdown table of ``RUN/samples.json`` (a seeded sample per stage, written by the demo), if present."""
    path = run.path / "samples.json"
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"samples file {path} is unreadable: {e}") from None
    if not rows:
        return None
    r0 = rows[0]
    lines = [f"Prompt `{r0['prompt']}`, {r0['max_tokens']} tokens, temperature {r0['temperature']}, "
             f"top-k {r0['top_k']}, seed {r0['seed']}.", "", "| stage | depth | continuation |", "|---|---|---|"]
    for r in rows:
        text = r["sample"].replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ⏎ ")
        lines.append(f"| {r['stage']} | {r['depth']} | {text} |")
    return "\n".join(lines)


def _unique_names(runs: list[RunData]) -> None:
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = str(r.path)


def write_report(runs: list[Path], out: Path, composition: Path | dict | None = None) -> Path:
    """Write PNGs and ``out/report.md`` for one or more run directories; returns the Markdown path."""
    if not runs:
        raise ValueError("no run directories given; pass at least one RUN")
    data = [load_run(r) for r in runs]
    _unique_names(data)
    out = Path(out)
    check_not_input(out, runs, "report directory")
    claim_output_dir(out, "report", legacy=lambda d: (d / "report.md").is_file())
    with staged_files(out) as tmp:
        path = _write_report_files(data, tmp, composition)
    return out / path.name


def _write_report_files(data: list[RunData], out: Path, composition: Path | dict | None) -> Path:
    md = ["# growlm report", "", "Runs: " + ", ".join(f"`{r.path}`" for r in data), ""]

    def figure(title: str, png: Path | None, missing: str) -> None:
        md.extend([f"## {title}", ""])
        md.append(f"![{title}]({png.name})" if png else f"_Skipped: {missing}._")
        md.append("")

    figure("Training loss", plot_loss(data, out / "loss.png"), "no `train` records in metrics.jsonl")
    figure("Validation bits per character against depth", plot_bpc_depth(data, out / "bpc_depth.png"),
           "no `stage_end` records with `val_bpc` in metrics.jsonl")
    table = bpc_table(data)
    md.extend(["### Final validation bpc per depth", "", table or "_No `stage_end` records._", ""])
    for run in data:
        samples = samples_table(run)
        if samples:
            md.extend([f"### What the model writes at each depth: {run.name}", "", samples, ""])
    figure("Benchmarks against depth", plot_benchmarks(data, out / "benchmarks.png"),
           "no `stages/stage-NN/eval.json` files (run `growlm eval --all-stages --save`)")
    scores = benchmark_table(data)
    if scores:
        md.extend(["### Log-likelihood scores per depth", "",
                   "gold_bpb: the gold answer's bits per UTF-8 byte (lower is better); bpb_margin: the best wrong "
                   "answer's minus the gold's (positive: the gold is preferred); [95% interval].", "", scores, ""])
    for run in data:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in run.name)
        figure(f"MMLU subjects against depth: {run.name}", plot_mmlu_heatmap(run, out / f"mmlu_{slug}.png"),
               "no per-subject MMLU scores in the eval.json files")
    if composition is not None:
        if not isinstance(composition, dict):
            path = Path(composition)
            try:
                composition = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"composition table {path} is unreadable: {e}") from None
        figure("Experts against their compositions", plot_composition(composition, out / "composition.png"),
               "the composition table has no rows with `bpc`")
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")  # staged: moved into place atomically by the caller
    return path
