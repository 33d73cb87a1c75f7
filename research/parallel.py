"""Data parallelism: one per-device step compiled with `jax.pmap` or `jax.jit(jax.shard_map)`,
over every device of every process.

Both backends take the same host batches and the same per-device functions from `steps.py`; they
differ only in how state and batches are laid out on the devices:

  pmap       state replicated along a leading axis of this process's devices; batch
             `[local_devices, accum, b, ...]`; collectives span all processes' devices
  shard_map  state replicated by a `NamedSharding` with `P()` over the global mesh; batch split
             along its batch axis over the global mesh

The devices are ordered process by process, so process p owns one contiguous block of rows of
every global batch (`process_rows`): each process builds and places only that block. The host
batches given to `put_train_batch` / `put_eval_batch` are this process's rows
(`[accum, local_micro_batch, ...]` and `[local_batch, ...]`); with one process they are the
whole batch.

Inputs are placed with a `NamedSharding` before the first call: given anything else, pmap
compiles its step a second time when the outputs come back in their own layout. shard_map runs
with `check_vma=False`, pmap's semantics: with the check on, the gradient of a replicated
parameter is summed over devices implicitly, and the explicit `psum` in the step would count it
again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research.steps import AXIS, TrainStep

BACKENDS = ("pmap", "shard_map")


@contextlib.contextmanager
def compiled_programs_released() -> Iterator[None]:
  """Drops JAX's compiled programs when the block ends (all of them: JAX has no per-function
  release). JAX keeps every executable it compiled for the life of the process, and on CPU each
  holds memory maps of its code: a process that fine-tunes again and again (a notebook, a search
  loop, the tests) reached the kernel's limit on maps (vm.max_map_count) after ~80 runs, and
  the next compilation crashed with a segmentation fault. Later calls compile again, or read
  the persistent compilation cache."""
  try:
    yield
  finally:
    jax.clear_caches()
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # a compilation or a cache read
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # ... read from the persistent cache
_compiles = 0
_cache_hits = 0


def _count_compile(event: str, *_, **__) -> None:
  global _compiles
  if event == _COMPILE_EVENT:
    _compiles += 1


def _count_cache_hit(event: str, *_, **__) -> None:
  global _cache_hits
  if event == _CACHE_HIT_EVENT:
    _cache_hits += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)
jax.monitoring.register_event_listener(_count_cache_hit)


class CountingStep:
  """A compiled step that counts the XLA compilations its calls trigger, and logs them.

  Compilation happens synchronously inside the call that needs it, so the compilations seen
  during a call are that step's: one per new input shape (length bucket) is the target, or one
  in all for a step whose inputs have no batch width (`by_width=False`: the optimizer update).
  A call that compiles logs a line before (a compilation can take minutes, with nothing else
  to show) and one with its time after.
  """

  def __init__(self, fn: Callable, name: str, by_width: bool = True):
    self._fn, self.name, self.by_width = fn, name, by_width
    self.compiles = 0
    self.compile_seconds = 0.0  # the calls that compiled (or read the compilation cache)
    self._widths: set[int | None] = set()

  def __call__(self, *args):
    # The batch's sequence length: one program each.
    width = args[1]["input_ids"].shape[-1] if self.by_width else None
    what = f"the {self.name} step" + ("" if width is None else f" for batch width {width}")
    new = width not in self._widths
    if new:
      logging.info("compiling %s ...", what)
    before, hits_before, start = _compiles, _cache_hits, time.perf_counter()
    out = self._fn(*args)
    compiled = _compiles - before
    self.compiles += compiled
    if new or compiled:
      self._widths.add(width)
      from_cache = compiled and _cache_hits - hits_before >= compiled
      seconds = time.perf_counter() - start
      self.compile_seconds += seconds
      logging.info("... %s %s in %.1f s", what,
                   "read from the compilation cache" if from_cache else "compiled", seconds)
    return out


def _local_copy(x: jax.Array) -> np.ndarray:
  """A replicated array's value, read from this process's first device (no cross-process
  transfer: a global array spanning several processes is not fully addressable)."""
  return np.asarray(x.addressable_shards[0].data)


class DeviceError(ValueError):
  """A device layout that this run cannot use (too many devices asked for, processes with
  unequal devices); the message names the setting."""


class DataParallel:
  """Places state and batches on the devices and runs the compiled steps.

  With one process, `num_devices` local devices (0 = all). With several (`jax.distributed`),
  all devices of all processes: each process must hold the same number of them.
  """

  def __init__(self, backend: str, num_devices: int = 0):
    if backend not in BACKENDS:
      raise ValueError(f"parallel.backend {backend!r} is not one of {BACKENDS}")
    self.backend = backend
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    if self.process_count == 1:
      local = jax.local_devices()
      if num_devices > len(local):
        raise DeviceError(f"config.parallel.num_devices={num_devices} but only {len(local)} "
                          "local devices exist (on CPU, XLA_FLAGS=--xla_force_host_platform_"
                          "device_count=N makes N)")
      devices = local[:num_devices or len(local)]
    else:
      devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
      if num_devices not in (0, len(devices)):
        raise DeviceError(f"config.parallel.num_devices={num_devices}: a run of "
                          f"{self.process_count} processes uses all their {len(devices)} devices "
                          "(set it to 0)")
    self.devices = devices  # global, process by process
    self.local_devices = [d for d in devices if d.process_index == self.process_index]
    self.num_devices, self.num_local_devices = len(devices), len(self.local_devices)
    if self.num_local_devices * self.process_count != self.num_devices:
      counts = {p: sum(d.process_index == p for d in devices) for p in range(self.process_count)}
      raise DeviceError(f"every process needs the same number of devices; devices per "
                        f"process: {counts}")
    self.mesh = Mesh(np.array(devices), (AXIS,))
    # pmap maps over this process's devices; its arrays are laid out on them alone.
    self._local_split = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)), P(AXIS))
    # Several CPU devices running collectives back to back can abort in the all-reduce
    # rendezvous under jit; waiting for each step avoids it (pmap is not affected).
    self.sync_each_step = (backend == "shard_map" and self.num_devices > 1
                           and self.devices[0].platform == "cpu")

  # ---- compilation -------------------------------------------------------------------------

  def compile_train_step(self, train_step: TrainStep) -> TrainStep:
    """`train_step.gradients(state, batch, signals)`, whose signals are one row of flags per
    device, and `train_step.update(state, sums)`, which donates the state (not the sums: a
    second parameter-sized tree that no output could reuse). The result is the same pair of
    `CountingStep`s: the gradients compiled once per batch width, the update once."""
    if self.backend == "pmap":
      gradients = jax.pmap(train_step.gradients, axis_name=AXIS)
      update = jax.pmap(train_step.update, axis_name=AXIS, donate_argnums=(0,))
    else:
      gradients = jax.jit(jax.shard_map(
          train_step.gradients, mesh=self.mesh, in_specs=(P(), P(None, AXIS), P(AXIS)),
          out_specs=P(), check_vma=False))
      update = jax.jit(jax.shard_map(
          train_step.update, mesh=self.mesh, in_specs=(P(), P()), out_specs=(P(), P()),
          check_vma=False), donate_argnums=(0,))
    return TrainStep(CountingStep(gradients, "train"),
                     CountingStep(update, "update", by_width=False))

  def compile_eval_step(self, eval_step: Callable) -> CountingStep:
    """`eval_step(params, batch)`, whose outputs are already gathered over devices."""
    if self.backend == "pmap":
      return CountingStep(jax.pmap(eval_step, axis_name=AXIS), "eval")
    return CountingStep(jax.jit(jax.shard_map(
        eval_step, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False)),
        "eval")

  def compile_replicated(self, fn: Callable) -> Callable:
    """A collective-free function of replicated inputs, in either layout."""
    return jax.pmap(fn, axis_name=AXIS) if self.backend == "pmap" else jax.jit(fn)

  # ---- state ------------------------------------------------------------------------------

  def put_replicated(self, tree: Any) -> Any:
    """Host tree (the same on every process) -> one copy per device, in the layout the
    compiled steps take and return."""
    if self.backend == "shard_map":
      return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def stack(x):
      x = np.asarray(x)
      shards = [jax.device_put(x[None], d) for d in self.local_devices]
      return jax.make_array_from_single_device_arrays((self.num_local_devices,) + x.shape,
                                                      self._local_split, shards)
    return jax.tree.map(stack, tree)

  def get_replicated(self, tree: Any) -> Any:
    """The inverse of `put_replicated`: one host (numpy) copy, read on this process."""
    if self.backend == "shard_map":
      return jax.tree.map(_local_copy, tree)
    return jax.tree.map(lambda x: _local_copy(x)[0], tree)

  # ---- batches ----------------------------------------------------------------------------

  def process_rows(self, global_rows: int) -> slice:
    """The rows of a global batch of `global_rows` that this process builds and places."""
    if global_rows % self.num_devices:
      raise ValueError(f"a batch of {global_rows} rows is not divisible by the "
                       f"{self.num_devices} devices")
    per_process = global_rows // self.process_count
    return slice(self.process_index * per_process, (self.process_index + 1) * per_process)

  def _place(self, batch: dict[str, np.ndarray], axis: int) -> dict[str, jax.Array]:
    """This process's rows (split along `axis`) -> device arrays in the step's layout."""
    if self.backend == "shard_map":
      spec = P(*([None] * axis + [AXIS]))
      sharding = NamedSharding(self.mesh, spec)

      def globalize(x):
        shape = list(x.shape)
        shape[axis] *= self.process_count
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))
      return {k: globalize(v) for k, v in batch.items()}
    d = self.num_local_devices

    def split(x):  # rows along `axis` -> [local devices, ...]
      x = np.moveaxis(x, axis, 0)
      x = x.reshape((d, x.shape[0] // d) + x.shape[1:])
      return np.moveaxis(x, 1, axis + 1)
    return jax.device_put({k: split(v) for k, v in batch.items()}, self._local_split)

  def put_train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """`[accum, local_micro_batch, ...]` host arrays -> device arrays for the train step."""
    return self._place(batch, axis=1)

  def put_eval_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """`[local_batch, ...]` host arrays -> device arrays for the eval step."""
    return self._place(batch, axis=0)

  def put_signals(self, flags: np.ndarray) -> jax.Array:
    """This process's flags (int32 `[k]`) -> one row per device for the train step, which
    sums them over all devices: every process then reads the same totals."""
    rows = np.broadcast_to(np.asarray(flags, np.int32), (self.num_local_devices, len(flags)))
    return self._place({"signals": np.ascontiguousarray(rows)}, axis=0)["signals"]

  # ---- outputs ----------------------------------------------------------------------------

  def get_metrics(self, metrics: Any) -> Any:
    """Outputs that are the same on every device (reduced or gathered) -> host arrays."""
    return self.get_replicated(metrics)

  def any_process(self, flag: bool) -> bool:
    """Whether `flag` is set on any process (a collective: every process must call it)."""
    if self.process_count == 1:
      return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())
