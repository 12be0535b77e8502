"""Keep freed host memory in the process for reuse (glibc's malloc on Linux), for CPU training.

Why: PyTorch has no caching allocator for CPU tensors. glibc serves every block above its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` and unmaps it on free, so each large activation of every step is
page-faulted in and zeroed by the kernel again. On the RL step of a 64^3 patch that was ~3 million page
faults and ~40% of the CPU time, and it grew with the number of graphs held at once (an episode keeps
t_max + 1 passes), which made an SVL-DRL iteration cost more than its floor of separate passes.
jemalloc or tcmalloc preloaded with decay off do the same; ``mallopt`` needs no extra library.
The cost: freed blocks stay in the process, so the resident set stays near its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """No ``mmap`` for large blocks and no trimming of the heap top; True when applied (glibc only).

    Process-wide and idempotent; a no-op returning False on other platforms or C libraries without
    ``mallopt`` (e.g. musl).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _applied
