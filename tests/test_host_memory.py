"""host_memory.keep_freed_memory: XLA:CPU's big per-call buffers stop page-faulting."""

import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO

# A jitted function whose 64 MB output (over glibc's 32 MB mmap threshold) is freed after each
# call, as XLA:CPU frees a train step's temporaries; prints the minor page faults of a typical call.
_PROBE = """
import resource, sys
if sys.argv[1] == "kept":
  from research import host_memory
  assert host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
y = jnp.ones(16 * 2**20)
for _ in range(3):
  jnp.exp(y).block_until_ready()
faults = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jnp.exp(y).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[5])  # the median: the heap may still grow once, when a free comes late
"""
PAGES = 64 * 2**20 // 4096


def _faults_per_call(mode: str) -> float:
  env = {k: v for k, v in os.environ.items() if k != "RESEARCH_DEFAULT_MALLOC"}
  result = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  return float(result.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_freed_buffers_are_reused_without_page_faults():
  default = _faults_per_call("default")
  kept = _faults_per_call("kept")
  assert default > 0.5 * PAGES, default  # glibc maps and unmaps the buffer every call
  assert kept < 0.01 * PAGES, kept       # the freed buffer comes back from the heap


def test_research_default_malloc_turns_it_off(monkeypatch):
  from research import host_memory
  monkeypatch.setenv("RESEARCH_DEFAULT_MALLOC", "1")
  assert host_memory.keep_freed_memory() is False


@pytest.mark.parametrize("platforms,plugin,expected", [
    ("cuda", None, "JAX_PLATFORMS=cuda"), ("tpu,cpu", None, "JAX_PLATFORMS=tpu,cpu"),
    ("cpu", "jax-cuda12-plugin", None),  # asked for the CPU: the plugin does not matter
    ("", "jax-cuda12-plugin", "jax-cuda12-plugin is installed"),
    ("", "libtpu", "libtpu is installed"), ("", None, None)])
def test_the_malloc_setting_is_for_the_cpu_backend_only(monkeypatch, platforms, plugin,
                                                       expected):
  """On a GPU or TPU the train step's buffers are not in host memory: glibc is left alone."""
  import importlib.metadata
  from research import host_memory

  class Dist:
    def __init__(self, name):
      self.metadata = {"Name": name}

  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  monkeypatch.setattr(importlib.metadata, "distributions",
                      lambda: [Dist("numpy"), *([Dist(plugin)] if plugin else [])])
  assert host_memory.accelerator_expected() == expected
  if expected:
    assert host_memory.keep_freed_memory() is False
