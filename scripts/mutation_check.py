"""Plant known bugs in growlm's core one at a time and check that the tests meant to catch each one fail.

    python scripts/mutation_check.py                 # every mutation; a table, then exit 1 if any survived
    python scripts/mutation_check.py --json out.json # the same, and the results as JSON
    python scripts/mutation_check.py --only bpc-denominator,lora-scaling --list

Each mutation names a file under ``src/growlm``, an exact snippet that must occur there exactly once, its
replacement, and the test node ids that should catch it. The package is copied to a temporary directory once;
each mutation is written into that copy (never into the working tree), the tests run from this checkout with
``PYTHONPATH`` pointing at the copy (subprocesses the tests start inherit it), and the file is restored after.
A mutation is caught when those tests fail (pytest exit status 1). First, unless ``--no-baseline``, the same
tests must pass on the unmutated copy, so that a failure means the planted bug and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    """One planted bug: ``original`` (exactly once in ``file``) becomes ``replacement``; ``tests`` should fail."""

    name: str
    file: str  # relative to src/growlm
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str


MUTATIONS = (
    Mutation("bpc-denominator", "evaluate/bpc.py",
             "return bits_per_char(self.nats, self.characters)", "return bits_per_char(self.nats, self.tokens)",
             ("tests/evaluate/test_bpc.py::test_bits_per_char_matches_a_hand_computation_on_every_path",),
             "bits per character divided by tokens instead of characters"),
    Mutation("heldout-denominator", "experiments/heldout.py",
             "tuple(s.characters for s in scores)", "tuple(s.tokens for s in scores)",
             ("tests/evaluate/test_bpc.py::test_bits_per_char_matches_a_hand_computation_on_every_path",),
             "held-out bits per character divided by tokens"),
    Mutation("composition-weights", "model/composition.py",
             "return [w / total for w in weights]", "return [w / n for w in weights]",
             ("tests/model/test_composed_lm.py::test_weights_normalised_and_one_hot_reproduces_expert",),
             "expert weights scaled by the number of experts instead of their sum"),
    Mutation("posterior-update", "model/composition_methods.py",
             "logw = log_prior.to(torch.float64)[None, :, None] + cur",
             "logw = log_prior.to(torch.float64)[None, :, None] + 0.5 * cur",
             ("tests/model/test_composed_lm.py::test_posterior_weights_by_hand",),
             "the posterior counts the likelihood of the text so far half"),
    Mutation("lora-scaling", "model/lora.py",
             "linear.lora_scaling = alpha / rank", "linear.lora_scaling = alpha",
             ("tests/model/test_lora.py",),
             "LoRA scaling alpha instead of alpha / r"),
    Mutation("freezing", "model/model.py",
             "b.requires_grad_(i in train)", "b.requires_grad_(True)",
             ("tests/training/test_plan.py::test_budgets_follow_the_plan", "tests/model/test_model.py"),
             "set_trainable leaves every block trainable"),
    Mutation("rng-restore", "training/checkpoint.py",
             'torch.set_rng_state(rng["torch"])', "pass",
             ("tests/training/test_run.py::test_resume_after_kill_is_bit_identical",),
             "a resumed run does not restore the global torch RNG"),
    Mutation("data-position-restore", "training/checkpoint.py",
             'generator.set_state(rng["data"])', "pass",
             ("tests/training/test_run.py::test_resume_after_kill_is_bit_identical",),
             "a resumed run restarts the data sampler's random stream"),
    Mutation("chunked-loss-gradient", "model/losses.py",
             "gw = (next(saved) * grad_out).to(ctx.w_dtype) if need_w else None",
             "gw = (next(saved) * grad_out * 0.5).to(ctx.w_dtype) if need_w else None",
             ("tests/model/test_losses.py",),
             "the chunked loss returns half the head weight's gradient"),
    Mutation("substrate-normalisation", "substrate/glyph.py",
             "z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)",
             "z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12) * 2",
             ("tests/substrate/test_substrate.py::test_glyph_rows_are_unit_norm_and_specials_distinct",),
             "glyph rows scaled to norm 1/2 instead of 1"),
    Mutation("fingerprint-fields", "substrate/substrate.py",
             'payload = {"spec": spec.to_dict(), "vocab_sha256": vocab.sha256, "source_sha256": SOURCE[spec.kind],',
             'payload = {"spec": spec.to_dict(), "source_sha256": SOURCE[spec.kind],',
             ("tests/substrate/test_substrate.py::test_fingerprint_hashes_spec_vocabulary_source_and_algorithm",),
             "the substrate fingerprint leaves out the vocabulary's content"),
    Mutation("checkpoint-hash-check", "model/saved.py",
             'if record is not None and digest != record.get("sha256"):',
             "if False:",
             ("tests/training/test_checkpoint.py::test_training_checkpoint_files_are_hashed",),
             "loading never compares a file's SHA-256 with the recorded one"),
    Mutation("atomic-file-fsync", "util/fileio.py",
             "        fsync_file(tmp)\n        default_mode(tmp)", "        default_mode(tmp)",
             ("tests/util/test_fileio.py::test_atomic_file_fsyncs_the_whole_file_before_the_rename",),
             "atomic_file renames without fsyncing the data first"),
)


def pytest_run(tests: tuple[str, ...], src: Path, timeout: float) -> tuple[int, float, str]:
    """(exit status, seconds, last lines of output) of pytest on ``tests`` with growlm imported from ``src``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        code, out = -1, f"timed out after {timeout:.0f} s"
    return code, time.perf_counter() - t0, "\n".join(out.strip().splitlines()[-3:])


def check_snippets(mutations: list[Mutation]) -> list[str]:
    """Problems with the listed snippets (each must occur exactly once in its file)."""
    bad = []
    for m in mutations:
        path = ROOT / "src" / "growlm" / m.file
        n = path.read_text(encoding="utf-8").count(m.original) if path.is_file() else -1
        if n != 1:
            bad.append(f"{m.name}: {'missing file ' + str(path) if n < 0 else f'snippet found {n} times'} in "
                       f"src/growlm/{m.file}: {m.original!r}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated mutation names (default: all)")
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--no-baseline", action="store_true", help="skip checking that the tests pass unmutated")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = ap.parse_args(argv)
    names = [m.name for m in MUTATIONS]
    chosen = list(MUTATIONS)
    if args.only:
        want = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(want) - set(names))
        if unknown:
            ap.error(f"unknown mutation(s) {unknown}; there are: {', '.join(names)}")
        chosen = [m for m in MUTATIONS if m.name in want]
    if args.list:
        for m in chosen:
            print(f"{m.name:24s} src/growlm/{m.file}: {m.why}")
        return 0
    bad = check_snippets(chosen)
    if bad:
        print("the source no longer holds these snippets (update MUTATIONS):\n  " + "\n  ".join(bad), file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="growlm-mutants-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src" / "growlm", src / "growlm",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, secs, tail = pytest_run(tests, src, args.timeout)
            print(f"baseline: {len(tests)} test targets {'pass' if code == 0 else 'FAIL'} unmutated ({secs:.0f} s)")
            if code != 0:
                print(tail, file=sys.stderr)
                return 2
        for m in chosen:
            path = src / "growlm" / m.file
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
            try:
                code, secs, tail = pytest_run(m.tests, src, args.timeout)
            finally:
                path.write_text(text, encoding="utf-8")
            status = "caught" if code == 1 else "survived" if code == 0 else f"error (pytest exit {code})"
            results.append({**asdict(m), "status": status, "seconds": round(secs, 1), "output": tail})
            print(f"{m.name:24s} {status:10s} {secs:6.1f} s  {m.why}", flush=True)
    caught = sum(r["status"] == "caught" for r in results)
    print(f"{caught} of {len(results)} mutations caught")
    if args.json:
        Path(args.json).write_text(json.dumps({"caught": caught, "total": len(results), "mutations": results},
                                              indent=1), encoding="utf-8")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
