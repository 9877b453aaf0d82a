"""docs/results.md, written from committed raw JSON by one command: ``growlm experiment report``.

Sources, all under ``docs/`` (nothing is copied by hand; a source that is missing is reported as "not run yet"
with the command that makes it):

- ``data/experiments/NAME/summary.json`` (+ ``plot.png``) for every registered study, in ``ORDER`` first, and its
  other scales' at ``data/experiments/NAME-SCALE/`` (``SCALED``: the directory names ``growlm experiment --scale``
  gives by default), each in a section of its own after the study's and with verdict rows labelled by its scale;
- parameter budgets of the paper's models, counted from the code on the meta device when the report is written;
- benchmark JSON: ``data/substrate_stats.json``, ``growth_speed.json``, ``residual_init.json``,
  ``data/prepare_speed.json`` (each names its own commit and machine where its script records them).

The verdicts come in two tables: the paper's own claims (where each is stated, the paper's number, growlm's
measurement, the verdict; counted in the header) and growlm's own hypotheses and controls. A study's ``verdict`` hook
turns its summary into ``Verdict`` rows, a study without a summary gives "not run yet", and claims this scale cannot
test say so.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from growlm.experiments.common import SIZES
from growlm.experiments.framework import (
    SEEDS,
    VERDICTS,
    Study,
    Verdict,
    fmt,
    load_studies,
    markdown_table,
    provenance,
    summary_scale,
)
from growlm.model import Config
from growlm.substrate.binary import code_bits
from growlm.training.plan import parameter_budget
from growlm.util.fileio import atomic_write_text, check_output_file

ORDER = ("substrates", "grown-vs-monolithic", "insertion-spike", "composition", "depth", "continual")
DATA = Path("data") / "experiments"  # relative to the docs directory
SCALED = ("cpu10x", "gpu")  # scales rendered beside the default one, from DATA / "NAME-SCALE"

# Claims no CPU-scale experiment can test: (claim, where stated, the paper's number, why not here)
NOT_TESTABLE = [
    ("Grown 1 -> 6 layers, MMLU rises with depth (d_model 4096, ~9B tokens)", "v1 §4.2, Fig. 5-6",
     "18.08% -> 21.63%",
     "multiple-choice accuracy sits at chance at CPU scale; study depth measures gold-answer bits per byte instead"),
    ("SQuAD appears only at depth", "v1 §4.2, Fig. 5", "1.21% at 1 layer, 3.75% at 3, 5.55% at 6",
     "extractive QA needs a model far beyond CPU scale"),
    ("16-layer binary-substrate model after 68.9B tokens", "v3 abstract", "28.92% MMLU", "68.9B tokens"),
]


def _params_rows() -> list[Verdict]:
    """The paper's parameter counts, counted from growlm's code now (meta device, no memory)."""
    v = 65536
    b9 = parameter_budget(Config.from_preset("paper", vocab_size=v, d_model=1024, n_layer=9), train_newest=3)
    b16 = parameter_budget(Config.from_preset("paper", vocab_size=v, d_model=1024, n_layer=16), train_newest=1,
                           substrate_table=v * code_bits(v))
    m = 1e6
    got9 = f"{b9['grown_active'] / m:.1f}M / {b9['frozen_interface'] / m:.1f}M / {b9['fully_trainable'] / m:.1f}M"
    ok9 = (round(b9["grown_active"] / m, 1), round(b9["frozen_interface"] / m, 1),
           round(b9["fully_trainable"] / m, 1)) == (105.0, 180.5, 247.6)
    ok16 = round(b16["author_total"] / m, 1) == 269.7
    return [Verdict("Active trainable parameters, 9 layers at d_model 1024: grown (3 newest) / monolithic frozen / "
                    "fully trainable", "105.0M / 180.5M / 247.6M",
                    f"{got9} (`growlm params --preset paper --d-model 1024 --n-layer 9 --vocab bmp65k --train-newest "
                    "3`)", VERDICTS[0] if ok9 else VERDICTS[1], cite="v3 abstract"),
            Verdict("16-layer binary-substrate model size, code table counted", "269.7M",
                    f"{b16['author_total'] / m:.1f}M (`growlm params --preset paper --d-model 1024 --n-layer 16 "
                    "--vocab bmp65k --substrate binary`)", VERDICTS[0] if ok16 else VERDICTS[1], cite="v3 abstract")]


def _summaries(docs: Path, studies: dict[str, Study]) -> dict[str, dict]:
    out = {}
    for name in studies:
        p = docs / DATA / name / "summary.json"
        if p.is_file():
            out[name] = json.loads(p.read_text(encoding="utf-8"))
    return out


def _scaled_summaries(docs: Path, studies: dict[str, Study]) -> dict[str, dict[str, dict]]:
    """name -> scale -> the summary at ``DATA/NAME-SCALE/`` for the scales in ``SCALED`` that have one; a summary
    there that records another scale is refused (it would be labelled and counted as the wrong scale)."""
    out: dict[str, dict[str, dict]] = {}
    for name in studies:
        for scale in SCALED:
            p = docs / DATA / f"{name}-{scale}" / "summary.json"
            if not p.is_file():
                continue
            summary = json.loads(p.read_text(encoding="utf-8"))
            if summary_scale(summary) != scale:
                raise ValueError(f"{p} records scale {summary_scale(summary)!r}, not {scale!r}: a {name}-{scale} "
                                 f"directory holds the {scale} scale's data (growlm experiment {name} --scale {scale} "
                                 f"--out {p.parent}); move the summary where its scale belongs")
            out.setdefault(name, {})[scale] = summary
    return out


def _judged(study: Study, summary: dict, scale: str = "default") -> list[Verdict]:
    """A study's verdict rows on one summary: a quick one's say "not run yet" (no evidence); a cpu10x or gpu one's
    measurement is prefixed with its scale; ``scale`` is the one the header counts the rows under."""
    rows = []
    made_at = summary_scale(summary)
    for v in study.verdict(summary):
        if made_at == "quick":
            v = replace(v, measured=v.measured + " (quick shape only)", verdict=VERDICTS[3])
        elif made_at != "default" and summary.get("seeds", 0) < SEEDS:  # a scaled study still under way
            v = replace(v, measured=f"{made_at}, {summary.get('seeds', 0)} of {SEEDS} seeds so far (judged once all "
                        f"have run): {v.measured}", verdict=VERDICTS[3])
        elif made_at != "default":
            v = replace(v, measured=f"{made_at}: {v.measured}")
        rows.append(replace(v, scale=scale))
    return rows


def _ordered(studies: dict[str, Study]) -> list[str]:
    return [n for n in ORDER if n in studies] + sorted(n for n in studies if n not in ORDER)


def _run_command(name: str) -> str:
    return f"growlm experiment {name} --out docs/{(DATA / name).as_posix()} --work runs/experiments/{name}"


def verdict_rows(studies: dict[str, Study], summaries: dict[str, dict],
                 scaled: dict[str, dict[str, dict]] | None = None) -> list[Verdict]:
    """Every verdict row: each study's (or "not run yet"), then its rows at each other scale with data (``scaled``:
    name -> scale -> summary), the parameter counts and the claims not testable here."""
    rows: list[Verdict] = []
    for name in _ordered(studies):
        s = studies[name]
        if name not in summaries:
            rows.append(Verdict(s.claim, s.paper or "–", f"not run yet (`{_run_command(name)}`)", VERDICTS[3]))
        elif s.verdict is None:
            rows.append(Verdict(s.claim, s.paper or "–", f"see [{name}](#{name})", "no verdict rule"))
        else:
            rows += _judged(s, summaries[name])
        for scale, summary in (scaled or {}).get(name, {}).items():
            if s.verdict is None:
                rows.append(Verdict(s.claim, s.paper or "–", f"{scale}: see [{name} at {scale} scale]"
                                    f"(#{name}-{scale})", "no verdict rule", scale=scale))
            else:
                rows += _judged(s, summary, scale)
    rows += _params_rows()
    rows += [Verdict(c, p, why, VERDICTS[2], cite=cite) for c, cite, p, why in NOT_TESTABLE]
    return rows


def verdict_counts(rows: list[Verdict]) -> str:
    """'N reproduced, M not reproduced at this scale, ...' over ``rows``."""
    return ", ".join(f"{sum(r.verdict == v for r in rows)} {v}" for v in VERDICTS if any(r.verdict == v for r in rows))


def scale_counts(rows: list[Verdict]) -> str:
    """``verdict_counts`` of the default scale's rows, then of each other scale's (``; at cpu10x: ...``)."""
    text = verdict_counts([r for r in rows if r.scale == "default"])
    return text + "".join(f"; at {s}: {verdict_counts([r for r in rows if r.scale == s])}"
                          for s in SCALED if any(r.scale == s for r in rows))


def reproduce_table(studies: dict[str, Study], summaries: dict[str, dict],
                    scaled: dict[str, dict[str, dict]] | None = None) -> list[str]:
    """The two verdict tables: the paper's claims (counted, each scale apart) and growlm's own hypotheses and
    controls."""
    rows = verdict_rows(studies, summaries, scaled)
    paper = [r for r in rows if r.source == "paper"]
    own = [r for r in rows if r.source != "paper"]
    lines = [f"### The paper's claims: {scale_counts(paper)}", "",
             "| claim | stated in | paper | growlm, at its scale | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r.claim} | {r.cite or '–'} | {r.paper} | {r.measured} | **{r.verdict}** |" for r in paper]
    lines += ["", f"### growlm's own hypotheses and controls: {scale_counts(own)}", "",
              "Not claims of the paper: controls its argument needs, or readings stricter than its words.", "",
              "| hypothesis | paper | growlm, at its scale | verdict |", "|---|---|---|---|"]
    lines += [f"| {r.claim} | {r.paper} | {r.measured} | **{r.verdict}** |" for r in own]
    return lines + scale_changes(rows)


def scale_changes(rows: list[Verdict]) -> list[str]:
    """Per other scale with data, a table of every claim judged there and at the default scale: both verdicts and
    whether the verdict holds or flips (each scaled row paired with the default row of the same claim, in order)."""
    lines = []
    for scale in SCALED:
        left = [r for r in rows if r.scale == "default"]
        pairs = []
        for r in (r for r in rows if r.scale == scale and r.verdict != VERDICTS[3]):
            match = next((d for d in left if (d.claim, d.source) == (r.claim, r.source)), None)
            if match is not None:
                left.remove(match)
                pairs.append((match, r))
        if not pairs:
            continue
        held = sum(d.verdict == r.verdict for d, r in pairs)
        lines += ["", f"### From the default scale to {scale}: {held} verdict(s) hold, {len(pairs) - held} flip", "",
                  f"| claim | whose | default | {scale} | change |", "|---|---|---|---|---|"]
        lines += [f"| {d.claim} | {'the paper' if d.source == 'paper' else 'growlm'} | {d.verdict} | {r.verdict} | "
                  f"{'holds' if d.verdict == r.verdict else '**flips**'} |" for d, r in pairs]
    return lines


def _records(rows: list[dict]) -> list[str]:
    """A list of flat dicts as a Markdown table (scalar values only, columns in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (dict, list))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return lines


def _provenance_line(d: dict, default_cmd: str) -> str:
    machine = d.get("machine") or d.get("cpu_model") or "not recorded"
    return f"commit `{d.get('commit', 'not recorded')}`; machine: {machine}; command: `{d.get('command', default_cmd)}`"


def _substrate_row(r: dict) -> dict:
    """One substrate_stats row for a table: options and explained variance spelled out, hashes shortened."""
    row = {k: v for k, v in r.items() if k not in ("options", "explained_variance", "content_sha256", "fingerprint")}
    row["options"] = ", ".join(f"{k}={v}" for k, v in (r.get("options") or {}).items()) or "-"
    ev = r.get("explained_variance") or {}
    row["explained variance (top 256 / 512 / 1024)"] = " / ".join(str(ev.get(k, "-")) for k in ("256", "512", "1024"))
    row["fingerprint"] = str(r.get("fingerprint", ""))[:12]
    return row


def _spread(c) -> str:
    """A benchmark's ``{median, min, max}`` as ``median (min-max)``; a plain value as itself."""
    if isinstance(c, dict) and "median" in c:
        return f"{c['median']} ({c['min']}-{c['max']})"
    return "-" if c is None else str(c)


def _speed_row(mode: str, v: dict) -> dict:
    """One growth_speed mode (medians over rounds, min-max in brackets)."""
    return {"mode": mode, "speed vs mono": _spread(v.get("speed_vs_mono")),
            "FLOP-bound speed vs mono": _spread(v.get("flop_bound_speed_vs_mono")),
            "speed / FLOP bound": _spread(v.get("speed_over_flop_bound")), "MFU": _spread(v.get("mfu")),
            "matmuls' own MFU": _spread(v.get("gemm_mfu")), "matmuls' time share": _spread(v.get("gemm_time_share")),
            "tokens/s": _spread(v.get("tok_per_s")), "peak MiB": _spread(v.get("peak_mib")),
            "minor faults / step": _spread(v.get("minor_faults_per_step")),
            "kernel time share": _spread(v.get("kernel_time_share"))}


def benchmark_sections(docs: Path) -> list[str]:
    out: list[str] = []
    p = docs / "data" / "substrate_stats.json"
    out += ["## Substrates: rank, explained variance, distinct rows after the first norm", ""]
    if p.is_file():
        d = json.loads(p.read_text(encoding="utf-8"))
        rows = d.get("rows") or d.get("results") or d.get("substrates") or []
        out += _records([_substrate_row(r) for r in rows]) if isinstance(rows, list) else \
            [f"```json\n{json.dumps(rows, indent=1)}\n```"]
        out += ["", _provenance_line(d, "python benchmarks/substrate_stats.py")]
    else:
        out.append("not run yet: `python benchmarks/substrate_stats.py --threads 2 --out "
                   "docs/data/substrate_stats.json`")
    p = docs / "growth_speed.json"
    out += ["", "## Training speed: a growth stage against monolithic training", ""]
    if p.is_file():
        d = json.loads(p.read_text(encoding="utf-8"))
        for r in d.get("results", []):
            shape = ", ".join(f"{k} {v}" for k, v in r.items() if not isinstance(v, (dict, list)))
            modes = r.get("modes") or [_speed_row(m, v) for m, v in (r.get("summary") or {}).items()]
            out += [f"{shape}:", "", *_records(modes), ""]
        out.append(_provenance_line(d, "python benchmarks/growth_speed.py") + f"; torch {d.get('torch', '?')}, "
                   f"{d.get('threads', '?')} threads. Raw: [growth_speed.json](growth_speed.json)")
    else:
        out.append("not run yet: `python benchmarks/growth_speed.py`")
    p = docs / "compile_speed.json"
    out += ["", "## torch.compile on CPU: eager against compiled steps", ""]
    if p.is_file():
        d = json.loads(p.read_text(encoding="utf-8"))
        out += _records([{"setting": r["setting"], "timed pairs": r.get("timed_pairs"),
                          "first compiled step (s)": (r.get("warmup_compiled_steps_s") or ["-"])[0],
                          "eager step median (s)": r["eager_step_s"]["median"],
                          "compiled step median (s)": r["compiled_step_s"]["median"],
                          "eager / compiled, median (min-max)": "{median} ({min}-{max})".format(
                              **r["speedup_eager_over_compiled"])} for r in d.get("results", [])])
        out += ["", f"shape {json.dumps(d.get('shape', {}))}; "
                + _provenance_line(d, "python benchmarks/compile_speed.py")
                + ". Raw: [compile_speed.json](compile_speed.json)"]
    else:
        out.append("not run yet: `python benchmarks/compile_speed.py > docs/compile_speed.json`")
    p = docs / "data" / "compose_scoring.json"
    out += ["", "## Scoring composed models: the whole batch without [B, T, V] tensors against row by row", ""]
    if p.is_file():
        d = json.loads(p.read_text(encoding="utf-8"))
        out += _records([{"method": r["method"], "row by row, median s": r["seconds_median"]["row_by_row"],
                          "token_nll, median s": r["seconds_median"]["token_nll"],
                          "speed-up (median)": r["speedup_median"],
                          "largest difference (nats/token)": r["max_abs_diff_nats_per_token"]}
                         for r in d.get("results", [])])
        out += ["", f"shape {json.dumps(d.get('shape', {}))}, {d.get('repeats')} interleaved repeats; "
                + _provenance_line(d, "python benchmarks/compose_scoring.py")
                + ". Raw: [compose_scoring.json](data/compose_scoring.json)"]
    else:
        out.append("not run yet: `python benchmarks/compose_scoring.py > docs/data/compose_scoring.json`")
    p = docs / "residual_init.json"
    out += ["", "## Residual-write initialisation scaled for the depth after insertion vs the final depth", ""]
    if p.is_file():
        d = json.loads(p.read_text(encoding="utf-8"))
        out += _records([{"setting": k, **v} for k, v in d.get("summary", {}).items()])
        out += ["", _provenance_line(d, f"python {d.get('script', 'benchmarks/residual_init.py')}") +
                f"; arguments {json.dumps(d.get('args', {}))}. Raw: [residual_init.json](residual_init.json)"]
    else:
        out.append("not run yet: `python benchmarks/residual_init.py`")
    p = docs / "data" / "prepare_speed.json"
    out += ["", "## Data preparation speed and memory", ""]
    if p.is_file():
        d = json.loads(p.read_text(encoding="utf-8"))
        out += _records([{"measure": "throughput", **d.get("throughput", {})}])
        out += ["", *_records([{"corpus": k, **v} for k, v in d.get("memory", {}).items()])]
        out += ["", *_records([{k: v for k, v in d.get("scaling", {}).items() if k != "assumption"}])]
        out += ["", _provenance_line(d, "python benchmarks/prepare_speed.py") +
                ". Raw: [prepare_speed.json](data/prepare_speed.json)"]
    else:
        out.append("not run yet: `python benchmarks/prepare_speed.py`")
    return out


def _study_section(docs: Path, folder: str, summary: dict) -> list[str]:
    """One summary's section body: its table, plot and raw data, from ``DATA/folder``."""
    lines = []
    if summary_scale(summary) == "quick":
        lines += ["**Quick shape (a smoke run of the machinery, not evidence).**", ""]
    lines += [markdown_table(summary)]
    if (docs / DATA / folder / "plot.png").is_file():
        lines += ["", f"![{folder}]({(DATA / folder / 'plot.png').as_posix()})"]
    lines += ["", f"Raw data: [{(DATA / folder).as_posix()}/]({(DATA / folder).as_posix()}/) (seed-N.json per seed, "
              "summary.json)."]
    return lines


TITLE = "# Measured results"


def render(docs: str | Path = "docs", argv: list[str] | None = None) -> str:
    """The text of docs/results.md from the raw JSON under ``docs``."""
    docs = Path(docs)
    studies = load_studies()
    summaries = _summaries(docs, studies)
    scaled = _scaled_summaries(docs, studies)
    prov = provenance(argv or ["experiment", "report"])
    lines = [TITLE, "",
             "Written by `growlm experiment report` from the raw JSON committed under `docs/` — do not edit by "
             "hand; rerun the command after adding data. Every table names the commit, machine and command that "
             "produced its data. Intervals are 95% t-intervals over seeds (mean ± half-width); bpc = bits per "
             "character, lower is better; \"held-out\" = the shipped public-domain texts that no training source "
             "contains (src/growlm/experiments/heldout_texts/SOURCES.md). Each study names the held-out texts it was "
             "measured on: v1 = the earlier single passages (3,888 / 5,193 / 2,394 characters), v2 = the longer "
             "texts (several documents per language) that later runs score, with the sampling error over documents "
             "(heldout_doc_hw_LANG: the half-width of a 95% bootstrap interval over documents) beside the interval "
             "over seeds.", "",
             f"Report written at commit `{prov['commit']}`{' (uncommitted changes)' if prov['dirty'] else ''}.", "",
             "## Does it reproduce the paper?", "",
             "Each claim of arXiv 2507.07129 that growlm can measure, where it is stated (v1 = the full text; v2 and "
             "v3 = their abstracts; the prior paper = arXiv 2507.04886), the paper's number, growlm's measurement "
             "at CPU scale (a few hundred thousand tokens per run, d_model 64: far below the paper's) and a verdict "
             "by the rule the study states. \"Not reproduced at this scale\" says what this scale shows, not what "
             "the paper's scale would. growlm's own hypotheses and controls are in a second table.", ""]
    if scaled:
        lines += [f"Rows whose measurement starts with a scale's name ({', '.join(f'{s}:' for s in SCALED)}) judge "
                  "the same claim by the same rule on that scale's data (docs/data/experiments/NAME-SCALE/, its own "
                  "section below: `growlm experiment NAME --scale SCALE`); the headers count each scale apart.", ""]
    lines += reproduce_table(studies, summaries, scaled)
    for name in _ordered(studies):
        s = studies[name]
        lines += ["", f"## {name}", "", f"<a id=\"{name}\"></a>", ""]
        if name not in summaries:
            lines += [f"{s.title}.", "", f"Not run yet. Run: `{_run_command(name)}`"]
        else:
            lines += _study_section(docs, name, summaries[name])
        for scale, summary in scaled.get(name, {}).items():
            lines += ["", f"## {name} at {scale} scale", "", f"<a id=\"{name}-{scale}\"></a>", "",
                      scale_shape(scale), "", *_study_section(docs, f"{name}-{scale}", summary)]
    lines += ["", *benchmark_sections(docs), ""]
    return "\n".join(lines)


def scale_shape(scale: str) -> str:
    """One line naming a scale's shared shape (``common.SIZES``), for the head of its sections: the method notes of a
    study are written once, and where they name a width, a length or a count of stages they give the default
    scale's."""
    size = SIZES[scale]
    parts = [f"d_model {size['d_model']}", f"{size['n_head']} heads", f"seq_len {size['seq_len']}",
             f"batch {size['batch_size']}", f"lr {size['lr']:g}", f"{size['warmup_steps']} warm-up steps",
             f"{size['val_tokens']:,} validation tokens per language"]
    if "precision" in size:
        parts.append(size["precision"])
    default = SIZES["default"]["d_model"]
    return (f"Shape at this scale (`experiments.common.SIZES[\"{scale}\"]`): {', '.join(parts)}. Where the notes "
            "under the table name a width, a sequence length or a number of stages, they describe the default scale "
            f"(d_model {default}); the numbers in the tables are this scale's.")


def is_results_page(path: Path) -> bool:
    """Whether ``path`` is a page ``render`` wrote (its heading and the line naming the command)."""
    try:
        head = path.read_text(encoding="utf-8")[:2000]
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith(TITLE) and "Written by `growlm experiment report`" in head


def write_results(path: str | Path = "docs/results.md", argv: list[str] | None = None) -> Path:
    """Write docs/results.md (``path``; its directory holds the raw JSON) atomically; the path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent} does not exist; the report is written next to the raw JSON in docs/")
    check_output_file(path, is_results_page, "--out")  # an earlier report may be replaced; a user's file never
    atomic_write_text(path, render(path.parent, argv))
    return path


__all__ = ["fmt", "render", "write_results"]
