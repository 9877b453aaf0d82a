"""The allocator thresholds: a repeated large allocation stops faulting pages in."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from growlm.util.alloc import tune_allocator
ok = tune_allocator() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.ones(8 << 20).sum()  # 32 MB: above glibc's default mmap threshold
before = faults()
for _ in range(20):
    torch.ones(8 << 20).sum()
print(ok, (faults() - before) / 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc thresholds")
def test_tuned_allocator_reuses_large_blocks():
    def run(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        ok, per = out.stdout.split()
        return ok, float(per)

    ok, tuned = run("tuned")
    if ok != "True":
        pytest.skip("not glibc malloc")
    _, default = run("default")
    pages = (32 << 20) / resource.getpagesize()
    assert default > 0.5 * pages  # every 32 MB block is mapped afresh: one fault per page
    assert tuned < 0.25 * pages  # reused: at most an occasional heap growth
