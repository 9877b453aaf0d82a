"""One study at the gpu scale on a lent GPU machine, in one call of at most 10 minutes; its raw JSON under $OUT.

    python benchmarks/gpu_study.py                        # grown-vs-monolithic --scale gpu --seeds 1, into $OUT
    python benchmarks/gpu_study.py depth --budget 300     # another study, a shorter guard
    python benchmarks/gpu_study.py depth --scale quick --out /tmp/x   # the same path on the CPU, in seconds

Runs ``growlm experiment STUDY --scale SCALE --seeds 1 --out OUT/STUDY-SCALE --work WORK`` in a child process and
interrupts it (SIGINT, then SIGKILL) after ``--budget`` seconds, so that whatever finished comes back: the seed's raw
JSON, summary.json, table.md and plot.png if the study completed (copy ``OUT/STUDY-gpu`` to
``docs/data/experiments/STUDY-gpu/`` and run ``growlm experiment report``), and in any case, from WORK, every run's
plan.json, metrics.jsonl and stages' model.json (each arm's training curve, validation bpc and FLOPs), never weights
(WORK, default /tmp/growlm-gpu-study, holds ~100M-parameter models; on a machine still warm a second call resumes
from its checkpoints). ``OUT/gpu_study.json`` records the device, torch, commit, the command, its exit status,
whether it was interrupted and the wall time; ``OUT/log.txt`` the study's log. Without CUDA the gpu scale is refused
before anything trains. Not run in CI: tests/test_gpu_study.py runs it at ``--scale quick`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from growlm.util.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("plan.json", "metrics.jsonl", "model.json", "*.curve.json")  # small files of a run that say what it did
GRACE_S = 30  # after SIGINT, how long the study may take to stop before it is killed


def environment() -> dict:
    """Device, torch, commit and machine of this process."""
    import torch

    commit = git_commit(ROOT)[0]
    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit or None,
            "cpus": os.cpu_count()}


def keep_logs(work: Path, dest: Path) -> list[str]:
    """Copy the small files that record each run in ``work`` (``KEEP``) to ``dest``; their relative paths."""
    copied = []
    if not work.is_dir():
        return copied
    for pattern in KEEP:
        for src in sorted(work.rglob(pattern)):
            rel = src.relative_to(work)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            copied.append(rel.as_posix())
    return sorted(copied)


def run(cmd: list[str], budget: float, log: Path) -> tuple[int, bool]:
    """Run ``cmd`` with its output in ``log``; interrupt it after ``budget`` seconds. (exit status, interrupted)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            return proc.wait(timeout=budget), False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # the runner's cleanup runs; checkpoints stay for a resume
            try:
                return proc.wait(timeout=GRACE_S), True
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait(), True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", nargs="?", default="grown-vs-monolithic")
    p.add_argument("--scale", default="gpu", help="gpu (default); quick runs the same path on the CPU")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--budget", type=float, default=540.0,
                   help="seconds before the study is interrupted (default 540: a 600 s call less start and copy)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where everything goes (default $OUT)")
    p.add_argument("--work", default="/tmp/growlm-gpu-study", help="growth runs and models (not copied back)")
    args = p.parse_args(argv)
    if not args.out:
        p.error("give --out or set $OUT")
    out, work = Path(args.out), Path(args.work)
    if work.resolve().is_relative_to(out.resolve()):
        p.error(f"--work {work} is inside --out {out}: the models would be copied back; put it elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    study_out = out / f"{args.study}-{args.scale}"
    cmd = [sys.executable, "-m", "growlm.cli", "experiment", args.study, "--scale", args.scale, "--seeds",
           str(args.seeds), "--out", str(study_out), "--work", str(work), "--no-progress"]
    record = {"study": args.study, "scale": args.scale, "seeds": args.seeds, "budget_s": args.budget,
              "command": " ".join(cmd[2:]), **environment()}
    if args.scale == "gpu" and not record["cuda"]:
        record["refused"] = "no CUDA device here: the gpu scale trains on CUDA (try --scale quick for the CPU path)"
        print(record["refused"], file=sys.stderr)
        rc = 2
    else:
        t0 = time.perf_counter()
        rc, interrupted = run(cmd, args.budget, out / "log.txt")
        record.update(rc=rc, interrupted=interrupted, wall_s=round(time.perf_counter() - t0, 1),
                      completed=(study_out / "summary.json").is_file() and rc == 0,
                      work_logs=keep_logs(work, out / "work-logs"))
    (out / "gpu_study.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in record.items() if k != "work_logs"}, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
