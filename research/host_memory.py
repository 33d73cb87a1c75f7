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
(`research.main`, `benchmarks.bench`) call it first thing. It does nothing where libc is not glibc,
nor where JAX will run on an accelerator (`JAX_PLATFORMS` names one, or a GPU/TPU plugin is
installed): there XLA:CPU's buffers are not the step's, and host memory is better left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import os
import re

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


# Distributions that give JAX a GPU or TPU backend.
_ACCELERATOR_PLUGINS = re.compile(r"(jax[-_]cuda\d+[-_](plugin|pjrt)|jax[-_]rocm\d*[-_]plugin|"
                                  r"libtpu([-_]nightly)?)$", re.IGNORECASE)


def accelerator_expected() -> str | None:
  """Why JAX will (probably) run on an accelerator, found without starting JAX; None: CPU."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    first = platforms.split(",")[0].strip().lower()
    return None if first == "cpu" else f"JAX_PLATFORMS={platforms}"
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"] or ""
    if _ACCELERATOR_PLUGINS.match(name):
      return f"{name} is installed"
  return None


def keep_freed_memory() -> bool:
  """One malloc arena for all threads, no `mmap` for big blocks, no trimming of the heap top.

  Returns whether they are in force: False under RESEARCH_DEFAULT_MALLOC=1, off glibc, or
  when JAX is expected on an accelerator.
  """
  if os.environ.get("RESEARCH_DEFAULT_MALLOC") == "1":
    return False
  if accelerator_expected():
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
