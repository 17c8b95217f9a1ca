"""CPU run-time settings that make GU2Net faster without changing a single result.

On Linux, glibc ``malloc`` serves every large block (a full-resolution feature map is one) with a fresh
``mmap`` and returns it to the system on ``free``, so each such tensor pays a page fault per page on
first touch, every time it is allocated; in a virtual machine these faults can cost more than the
arithmetic that fills the tensor. :func:`keep_freed_memory` makes glibc serve large blocks from its
heap and keep freed memory for reuse, what the jemalloc/tcmalloc preloads of the usual PyTorch CPU
tuning guides achieve, with no extra library. It is process wide, so a workflow opts in from its config.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(enabled: bool = True, trim_threshold_mb: int = 1024) -> bool:
    """Serve large allocations from glibc's heap and keep up to ``trim_threshold_mb`` of freed memory.

    Returns whether the setting took effect (only on Linux with glibc; elsewhere it does nothing).
    """
    if not enabled or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    if not ok:
        logger.warning("keep_freed_memory: mallopt refused the setting; large tensors keep their page faults.")
    return ok
