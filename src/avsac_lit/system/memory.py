"""The allocator setting a long CPU run needs."""

from __future__ import annotations

import ctypes
import os


def keep_freed_memory() -> bool:
    """Keep memory that torch frees in the process (glibc's malloc) instead of handing it back to
    the system: a training step at paper scale allocates and frees gigabytes of activations, and
    by default every block over 32 MB is a fresh ``mmap`` whose pages the kernel must fault in
    and zero again in the next step. On the 2-core Xeon of docs/performance.md that doubled an
    AVSAC MS3 step (29.9 s against 13.8 s, most of the difference kernel time). The process's
    resident memory then stays at its peak. ``AVSAC_KEEP_FREED_MEMORY=0`` leaves malloc as it
    is. Returns whether the setting took (glibc only)."""
    if os.environ.get("AVSAC_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc: nothing to do
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
