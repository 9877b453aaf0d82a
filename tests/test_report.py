"""Reports from synthetic run directories: figures exist, are real PNGs, and report.md links them."""

import json
import math
import random

import pytest

from growlm.evaluate.stats import mean_ci, proportion
from growlm.report import benchmark_table, load_run, parse_eval, plot_composition, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "college_physics", "high_school_biology",
            "world_religions", "moral_scenarios", "professional_law"]
STAGES = [("grow-1", "grow", 1), ("grow-2", "grow", 2), ("grow-3", "grow", 3), ("lora-3", "lora", 3),
          ("grow-4", "grow", 4), ("finetune", "finetune", 4)]


def write_run(run, seed=0, evals=True, stage_tokens=40_000, every=1000):
    """A plausible run: stage/train/val/stage_end records and (optionally) per-stage eval.json files."""
    rng = random.Random(seed)
    run.mkdir(parents=True)
    recs, step, tokens, loss = [], 0, 0, 9.5
    for s, (name, kind, depth) in enumerate(STAGES):
        recs.append({"type": "stage", "stage": s, "name": name, "kind": kind, "step": step, "tokens": tokens,
                     "depth": depth, "active_params": 1000 * depth})
        for _ in range(stage_tokens // every):
            step, tokens = step + 1, tokens + every
            loss = 2.0 + (loss - 2.0) * 0.97 + rng.gauss(0, 0.05)
            recs.append({"type": "train", "step": step, "tokens": tokens, "stage": s, "depth": depth, "loss": loss,
                         "lr": 1e-3, "tok_per_s": 1e4, "time": step * 0.1})
            if step % 10 == 0:
                bpc = {"en": loss * 0.6, "ru": loss * 0.7, "zh": loss * 1.4}
                recs.append({"type": "val", "step": step, "tokens": tokens, "stage": s, "depth": depth,
                             "val_loss": loss, "val_bpc": bpc, "val_bpc_mean": sum(bpc.values()) / 3})
        recs.append({"type": "stage_end", "stage": s, "step": step, "tokens": tokens, "depth": depth,
                     "val_loss": loss, "val_bpc": {"en": loss * 0.6, "ru": loss * 0.7, "zh": loss * 1.4}})
        if evals:
            write_eval(run / "stages" / f"stage-{s:02d}", depth, s, rng)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def write_eval(d, depth, stage, rng):
    """eval.json in the layout `growlm eval` writes: scores per protocol as {"value", "ci95"} from the same
    stats helpers, depth and stage under "model" (beside a model.json, as `growlm eval --all-stages` finds)."""
    d.mkdir(parents=True)
    k = round((0.25 + 0.02 * depth + rng.uniform(0, 0.01)) * 400)
    bpb = [3.0 - 0.2 * depth + rng.gauss(0, 0.3) for _ in range(50)]
    margin = [0.05 * depth + rng.gauss(0, 0.2) for _ in range(50)]
    loglik = {"acc": proportion(k, 400), "acc_norm": proportion(k - 8, 400), "gold_bpb": mean_ci(bpb),
              "bpb_margin": mean_ci(margin), "n": 400, "num_fewshot": 0, "ci_method": "wilson"}
    results = {
        "mmlu": {"loglik": {**loglik, "subjects": {sub: {"acc": 0.2 + 0.05 * depth * rng.random(), "acc_norm": 0.2,
                                                         "n": 100} for sub in SUBJECTS}}},
        "arc_easy": {"loglik": dict(loglik), "paper": {"acc": {"value": 0.1, "ci95": [0.08, 0.12]},
                                                       "acc_runs": [0.1] * 10, "runs": 10}, "split": "validation"},
        "squad": {"source": "oe-eval", "standard": {"f1": {"value": 0.05 * depth}, "n": 10}},  # no CI: no band
        "ppl_en": {"bits_per_char": 2.0 - 0.1 * depth, "bits_per_char_ci95": [1.9 - 0.1 * depth, 2.1 - 0.1 * depth],
                   "perplexity": 9.0, "tokens": 1000, "characters": 3000},
    }
    (d / "model.json").write_text(json.dumps({"kind": "growlm", "depth": depth, "stage": stage}))
    (d / "eval.json").write_text(json.dumps({"results": results, "seconds": {"mmlu": 1.0},
                                             "config": {"tasks": list(results), "protocol": "both"},
                                             "model": {"path": str(d), "kind": "growlm", "depth": depth,
                                                       "stage": stage}}))


def assert_png(path):
    assert path.exists(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, (path, len(data))


def test_full_report(tmp_path):
    runs = [write_run(tmp_path / "run-a", seed=0), write_run(tmp_path / "run-b", seed=1)]
    table = {"rows": [{"name": "en-expert", "kind": "expert", "bpc": {"en": 1.9, "ru": 3.9, "zh": 6.1}},
                      {"name": "ru-expert", "kind": "expert", "bpc": {"en": 3.5, "ru": 2.1, "zh": 6.3}},
                      {"name": "zh-expert", "kind": "expert", "bpc": {"en": 3.8, "ru": 4.0, "zh": 4.2}},
                      {"name": "average", "kind": "composed", "bpc": {"en": 2.3, "ru": 2.6, "zh": 4.9}},
                      {"name": "average+ft", "kind": "finetuned", "bpc": {"en": 2.0, "ru": 2.2, "zh": 4.4}}]}
    (tmp_path / "table.json").write_text(json.dumps(table))
    md = write_report(runs, tmp_path / "report", composition=tmp_path / "table.json")
    assert md == tmp_path / "report" / "report.md"
    text = md.read_text()
    for name in ["loss.png", "bpc_depth.png", "benchmarks.png", "mmlu_run-a.png", "mmlu_run-b.png",
                 "composition.png"]:
        assert_png(tmp_path / "report" / name)
        assert f"({name})" in text
    assert "Skipped" not in text
    # the bpc table has one row per depth per run (the LoRA and fine-tune stages supersede their grow stage)
    section = text.split("### Final validation bpc per depth")[1].split("\n#")[0]
    rows = [line for line in section.splitlines() if line.startswith("| run-")]
    assert len(rows) == 2 * 4
    scores = text.split("### Log-likelihood scores per depth")[1].split("\n#")[0]
    assert len([line for line in scores.splitlines() if line.startswith("| run-")]) == 2 * 4 * 2  # mmlu, arc_easy
    assert any(line.startswith("| run-a | 3 | 3 |") for line in rows)


def test_missing_data_is_skipped_with_a_note(tmp_path):
    run = write_run(tmp_path / "run", evals=False)
    md = write_report([run], tmp_path / "out")
    assert md == tmp_path / "out" / "report.md"
    text = md.read_text()
    assert_png(tmp_path / "out" / "loss.png")
    assert "Skipped: no `stages/stage-NN/eval.json` files" in text
    assert "Skipped: no per-subject MMLU scores" in text
    assert not (tmp_path / "out" / "benchmarks.png").exists()


def test_evals_only_run(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    text = write_report([run], tmp_path / "out").read_text()
    assert "(benchmarks.png)" in text and "Skipped: no `train` records" in text


def test_corrupt_metrics_line_names_file_and_line(tmp_path):
    run = write_run(tmp_path / "run", evals=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[4] = lines[4][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:5: corrupt"):
        write_report([run], tmp_path / "out")


def test_empty_or_missing_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="growlm run directory"):
        load_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="at least one RUN"):
        write_report([], tmp_path / "out")


def test_parse_eval_is_tolerant():
    p = parse_eval({"depth": 3, "results": {"mmlu": {"acc": 0.3, "acc_ci": [0.2], "subjects": {"x": {"n": 3}}},
                                            "broken": "n/a", "arc": {"acc": None, "acc_norm": 0.4,
                                                                     "acc_norm_ci": [0.3, 0.5]}}})
    assert p.depth == 3 and p.subjects == {}
    assert p.scores == {"mmlu": {"acc": (0.3, None, None)}, "arc": {"acc_norm": (0.4, 0.3, 0.5)}}
    assert parse_eval({"results": {}}) is None  # no depth: unusable
    assert not math.isnan(parse_eval({"depth": 1, "results": {}}).depth)


def test_plot_composition_empty_table(tmp_path):
    assert plot_composition({"rows": []}, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()  # nothing to draw: no file
    out = plot_composition({"rows": [{"name": "a", "kind": "expert", "bpc": {"en": 2.0}}]}, tmp_path / "c.png")
    assert out == tmp_path / "c.png"
    assert_png(out)


def test_parse_eval_nested_protocol_format():
    """The `growlm evaluate` layout: per-protocol groups and {"value", "ci95"} metrics."""
    data = {"results": {
        "mmlu": {"loglik": {"acc": {"value": 0.3, "ci95": [0.28, 0.32], "n": 100}, "n": 100, "ci_method": "wilson",
                            "subjects": {"anatomy": {"acc": 0.4, "acc_norm": 0.3, "n": 10}}},
                 "paper": {"acc": {"value": 0.26, "ci95": [0.2, 0.3]}, "acc_runs": [0.26],
                           "subjects": {"anatomy": {"acc": 0.1}}}},
        "ppl_en": {"bits_per_char": 2.1, "bits_per_char_ci95": [2.0, 2.2], "perplexity": 9.0, "tokens": 1000},
        "squad": {"source": "x", "standard": {"f1": {"value": 0.1, "ci95": [0.05, 0.15]}}}}}
    p = parse_eval(data, depth=2, stage=1)
    assert (p.depth, p.stage) == (2, 1)
    assert p.scores == {"mmlu": {"loglik acc": (0.3, 0.28, 0.32), "paper acc": (0.26, 0.2, 0.3)},
                        "ppl_en": {"bits_per_char": (2.1, 2.0, 2.2)},
                        "squad": {"standard f1": (0.1, 0.05, 0.15)}}
    assert p.subjects == {"anatomy": 0.4}  # the first protocol's subjects (loglik)


def test_cli_report(tmp_path, capsys):
    import argparse

    from growlm.commands import report as cmd

    run = write_run(tmp_path / "run", evals=False)
    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(run), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.md")
    assert_png(tmp_path / "out" / "bpc_depth.png")


def test_report_refuses_user_files_and_its_inputs(tmp_path):
    from growlm.util.fileio import OutputDirError

    run = tmp_path / "run"
    write_run(run, evals=False)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    with pytest.raises(OutputDirError, match="did not write"):
        write_report([run], out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(OutputDirError, match="input"):
        write_report([run], run / "report")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    good = tmp_path / "report"
    write_report([run], good)
    (good / "loss.png").write_bytes(b"stale")
    md = write_report([run], good)  # its own report may be rewritten
    assert md == good / "report.md" and (good / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in good.iterdir() if p.name.startswith(".growlm-staging")]


def test_report_reads_the_eval_layout_growlm_writes(tmp_path):
    run = write_run(tmp_path / "run")
    written = json.loads((run / "stages/stage-05/eval.json").read_text())["results"]
    (run / "stages/stage-05/model.json").unlink()  # an eval.json alone still names its depth and stage
    data = load_run(run)
    p = data.evals[-1]
    assert (p.depth, p.stage) == (4, 5)
    assert set(p.scores["mmlu"]) == {"loglik acc", "loglik acc_norm", "loglik gold_bpb", "loglik bpb_margin"}
    assert set(p.scores["arc_easy"]) == {"loglik acc", "loglik acc_norm", "loglik gold_bpb", "loglik bpb_margin",
                                         "paper acc"}
    gold = written["mmlu"]["loglik"]["gold_bpb"]
    assert p.scores["mmlu"]["loglik gold_bpb"] == (gold["value"], *gold["ci95"])
    assert p.scores["squad"] == {"standard f1": (0.2, None, None)} and len(p.subjects) == len(SUBJECTS)
    assert p.scores["ppl_en"]["bits_per_char"] == pytest.approx((1.6, 1.5, 1.7))
    table = benchmark_table([data]).splitlines()
    assert table[0] == "| run | depth | task | acc | acc_norm | gold_bpb | bpb_margin |"
    rows = table[2:]
    assert len(rows) == 4 * 2  # depths 1-4 x (mmlu, arc_easy): squad and ppl have no log-likelihood scores
    acc = written["mmlu"]["loglik"]["acc"]
    assert rows[-1].startswith(f"| run | 4 | mmlu | {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] |")
    text = write_report([run], tmp_path / "out").read_text()
    assert "### Log-likelihood scores per depth" in text and rows[-1] in text


def test_benchmark_plot_labels_its_axes_and_keeps_equal_lines_visible(tmp_path, monkeypatch):
    """acc and acc_norm with the same scores are two lines that can be told apart; every panel names its y axis."""
    import growlm.report as report

    run = write_run(tmp_path / "run")
    for f in run.glob("stages/*/eval.json"):
        data = json.loads(f.read_text())
        lo = data["results"]["arc_easy"]["loglik"]
        lo["acc_norm"] = dict(lo["acc"])  # equal scores: acc_norm would hide acc under the same style
        f.write_text(json.dumps(data))
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, out: figs.append(fig) or out)
    report.plot_benchmarks([load_run(run)], tmp_path / "b.png")
    axes = [ax for ax in figs[0].axes if ax.get_title()]
    assert axes and all(ax.get_ylabel() for ax in axes)
    arc = next(ax for ax in axes if ax.get_title() == "arc_easy")
    lines = {ln.get_label(): ln for ln in arc.get_lines()}
    a, n = lines["loglik acc"], lines["loglik acc_norm"]
    assert list(a.get_ydata()) == list(n.get_ydata())
    assert (a.get_linestyle(), a.get_marker()) != (n.get_linestyle(), n.get_marker())
    assert a.get_markersize() > n.get_markersize() and a.get_zorder() < n.get_zorder()
