"""How a trial process's C heap treats the large blocks torch frees (glibc Linux only).

By default glibc's malloc serves every block above its mmap threshold (128 KiB, raised on the fly up
to 32 MiB) with a fresh ``mmap`` and gives it back to the kernel on ``free``. A training step frees
and re-allocates the same activation buffers every step, so on CPU each step pays the kernel to map
and zero those pages again. Measured here (one thread): LD's outer step (LeNet, 1,024 target
images) 233 ms by default, 132 ms with freed blocks kept; ConvNet-3 (width 128) trained 1.3-1.45x
faster. benchmarks/perf/side_by_side.py times the authors' code under both settings.

:func:`keep_freed_memory` keeps them (mmap threshold 1 GiB, heap trimmed only above 2 GiB), as
PyTorch's CUDA caching allocator does on the GPU; :func:`release_freed_memory` gives what a trial
left back to the kernel before the next one starts, so each trial's peak RSS is its own. Results
are unchanged (the same arithmetic on the same values); only time and the process's resident
memory between steps differ.

``HARNESS_MALLOC=default`` leaves glibc's behaviour as it is. Other C libraries (musl, macOS) are
left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and stay there when freed
TRIM_THRESHOLD = (1 << 31) - 1  # the heap's free top is returned to the kernel above ~2 GiB only
ENV = "HARNESS_MALLOC"


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Keep freed large blocks in this process's heap (once per process); whether that is in effect."""
    libc = _glibc()
    if libc is None or os.environ.get(ENV, "").strip().lower() == "default":
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> None:
    """Give the heap's free pages back to the kernel (``malloc_trim``): a trial starts from what is
    in use, not from what the previous trial left."""
    libc = _glibc()
    if libc is not None and keep_freed_memory():
        libc.malloc_trim(0)
