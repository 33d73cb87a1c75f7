"""What every process that trains sets up before it touches JAX: `research.main`'s runs and
`research.tune`'s trials start the same way, so that both find the same compiled programs and
neither loads what the other must not."""

from __future__ import annotations

import logging
import os

from research import distributed, host_memory

NOISY_LOGGERS = ("absl", "datasets", "jax._src.xla_bridge")  # orbax's per-save chatter, ...


def start(mode: str = "off", **distributed_args) -> None:
  """Prepares this process, then starts `jax.distributed` as `mode` and `distributed_args` say
  (`distributed.initialize`; its DistributedError passes through)."""
  for noisy in NOISY_LOGGERS:
    logging.getLogger(noisy).setLevel(logging.WARNING)
  host_memory.keep_freed_memory()  # before JAX starts its threads
  import jax
  if not jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR wins if set
    # Compiled steps are reused by later runs of the same shapes (sweeps, reruns, trials).
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser("~/.cache/research/jax_compilation_cache"))
  distributed.initialize(mode, **distributed_args)
  if jax.process_count() > 1:
    # Executables compiled by a multi-process client must not be loaded by a single-process
    # one (the cache key ignores the difference; loading them has crashed): a cache of their own.
    jax.config.update("jax_compilation_cache_dir", os.path.join(
        jax.config.jax_compilation_cache_dir, f"{jax.process_count()}_processes"))
  import datasets
  datasets.disable_progress_bars()  # the pipeline logs one line per split instead
