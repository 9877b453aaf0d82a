"""Keep freed memory for reuse on glibc, so a training step stops paying page faults.

glibc's malloc serves every block above its mmap threshold (a few MB at most) with a
fresh ``mmap`` and returns it with ``munmap`` when freed. A training step allocates and
frees the same activations and gradients every step, so each step faults all of them
in again: ~50,000 minor faults and ~14% kernel time per step at the demo shape. Raising
the mmap threshold and the trim threshold keeps those blocks in the heap, where the
next step reuses them (~1,000 faults, < 1% kernel time; ``benchmarks/growth_speed.py``).
The price: memory freed at a peak is kept by the process, not returned to the system.

``tune_allocator`` is called by the trainer and the CLI; ``GROWLM_MALLOC=system`` turns it
off. Other allocators (musl, jemalloc or tcmalloc preloaded) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD = 2**31 - 1  # the heap top is not handed back unless 2 GiB are free there
TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps

_done: bool | None = None


def tune_allocator() -> bool:
    """Apply the thresholds once per process; True if glibc's malloc took them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    preload = os.environ.get("LD_PRELOAD", "")
    if (os.environ.get("GROWLM_MALLOC", "") == "system" or not sys.platform.startswith("linux")
            or "jemalloc" in preload or "tcmalloc" in preload):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # only glibc has it (musl has no mallopt thresholds)
    except (OSError, AttributeError):
        return False
    del gnu
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _done
