"""Keeps freed host memory in the process, so that XLA:CPU's buffers stop page-faulting.

XLA:CPU allocates every step's output and temporary buffers with `posix_memalign` and frees them
when the step ends. glibc serves a request of more than 32 MB (or, on a worker thread, more than
its 64 MB arena heap) with a fresh `mmap` and gives it back with `munmap`, so each step touches
hundreds of MB of new pages: 85,000 minor page faults per MiniLM train step at batch 32 × seq
16, 330,000 at seq 128, a third and a fifth of the step (experiments/perf/NOTES.md, attempt 13).
With one arena, no `mmap` and no trimming, the freed buffers are reused by the next step and the
faults vanish. The cost: the process keeps its peak heap until it exits (the sst2:quick job: 3.8
GB peak resident instead of 2.7 GB, for 58 s instead of 77 s). `RESEARCH_DEFAULT_MALLOC=1`
leaves glibc's defaults alone, for a machine where memory is tighter than time.

`keep_freed_memory()` must run before JAX (or torch) starts its threads; the entry points
(`research.main`, `research.bench`) call it first thing. It does nothing where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """One malloc arena for all threads, no `mmap` for big blocks, no trimming of the heap top.

  Returns whether they are in force: False under RESEARCH_DEFAULT_MALLOC=1 or off glibc.
  """
  if os.environ.get("RESEARCH_DEFAULT_MALLOC") == "1":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
    return False
  accepted = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
  if not accepted:
    logging.warning("glibc refused a mallopt setting; XLA buffers may page-fault every step")
  return accepted
