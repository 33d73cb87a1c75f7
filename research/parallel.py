"""Data parallelism: one per-device step compiled with `jax.pmap` or `jax.jit(jax.shard_map)`.

Both backends take the same host batches (train: `[accum, global_micro_batch, ...]`, eval:
`[global_batch, ...]`) and the same per-device functions from `steps.py`; they differ only in
how state and batches are laid out on the devices:

  pmap       state replicated along a leading device axis; batch `[devices, accum, b, ...]`
  shard_map  state replicated by a `NamedSharding` with `P()`; batch split along its batch axis

Inputs are placed with a `NamedSharding` over the mesh before the first call: given anything
else, pmap compiles its step a second time when the outputs come back in their own layout.
shard_map runs with `check_vma=False`, pmap's semantics: with the check on, the gradient of a
replicated parameter is summed over devices implicitly, and the explicit `psum` in the step
would count it again.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research.steps import AXIS

BACKENDS = ("pmap", "shard_map")
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0


def _count_compile(event: str, *_, **__) -> None:
  global _compiles
  if event == _COMPILE_EVENT:
    _compiles += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


class CountingStep:
  """A compiled step that counts the XLA compilations its calls trigger.

  Compilation happens synchronously inside the call that needs it, so the compilations seen
  during a call are that step's: one per new input shape (length bucket) is the target.
  """

  def __init__(self, fn: Callable):
    self._fn = fn
    self.compiles = 0

  def __call__(self, *args):
    before = _compiles
    out = self._fn(*args)
    self.compiles += _compiles - before
    return out


class DataParallel:
  """Places state and batches on `num_devices` local devices and runs the compiled steps."""

  def __init__(self, backend: str, num_devices: int = 0):
    if backend not in BACKENDS:
      raise ValueError(f"parallel.backend {backend!r} is not one of {BACKENDS}")
    devices = jax.local_devices()
    if num_devices > len(devices):
      raise ValueError(f"parallel.num_devices={num_devices} but only {len(devices)} local "
                       "devices exist (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count"
                       "=N makes N)")
    self.backend = backend
    self.devices = devices[:num_devices or len(devices)]
    self.num_devices = len(self.devices)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    # Several CPU devices running collectives back to back can abort in the all-reduce
    # rendezvous under jit; waiting for each step avoids it (pmap is not affected).
    self.sync_each_step = (backend == "shard_map" and self.num_devices > 1
                           and self.devices[0].platform == "cpu")
    self._split = NamedSharding(self.mesh, P(AXIS))

  # ---- compilation -------------------------------------------------------------------------

  def compile_train_step(self, train_step: Callable) -> CountingStep:
    if self.backend == "pmap":
      return CountingStep(jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,)))
    return CountingStep(jax.jit(jax.shard_map(
        train_step, mesh=self.mesh, in_specs=(P(), P(None, AXIS)), out_specs=(P(), P()),
        check_vma=False), donate_argnums=(0,)))

  def compile_eval_step(self, eval_step: Callable) -> CountingStep:
    if self.backend == "pmap":
      return CountingStep(jax.pmap(eval_step, axis_name=AXIS))
    return CountingStep(jax.jit(jax.shard_map(
        eval_step, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(AXIS), P()),
        check_vma=False)))

  def compile_replicated(self, fn: Callable) -> Callable:
    """A collective-free function of replicated inputs, in either layout."""
    return jax.pmap(fn, axis_name=AXIS) if self.backend == "pmap" else jax.jit(fn)

  # ---- state ------------------------------------------------------------------------------

  def put_replicated(self, tree: Any) -> Any:
    """Host tree -> one copy per device, in the layout the compiled steps take and return."""
    if self.backend == "shard_map":
      return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def stack(x):
      x = np.asarray(x)
      shards = [jax.device_put(x[None], d) for d in self.devices]
      return jax.make_array_from_single_device_arrays((self.num_devices,) + x.shape,
                                                      self._split, shards)
    return jax.tree.map(stack, tree)

  def get_replicated(self, tree: Any) -> Any:
    """The inverse of `put_replicated`: one host (numpy) copy."""
    if self.backend == "shard_map":
      return jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

  # ---- batches ----------------------------------------------------------------------------

  def _check_divisible(self, n: int, what: str):
    if n % self.num_devices:
      raise ValueError(f"{what} {n} is not divisible by the {self.num_devices} devices")

  def put_train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """`[accum, global_micro_batch, ...]` host arrays -> device arrays for the train step."""
    d = self.num_devices
    if self.backend == "shard_map":
      return jax.device_put(batch, NamedSharding(self.mesh, P(None, AXIS)))

    def split(x):
      accum, b = x.shape[:2]
      self._check_divisible(b, "micro-batch size")
      x = x.reshape((accum, d, b // d) + x.shape[2:])
      return np.swapaxes(x, 0, 1)
    return jax.device_put({k: split(v) for k, v in batch.items()}, self._split)

  def put_eval_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """`[global_batch, ...]` host arrays -> device arrays for the eval step."""
    if self.backend == "shard_map":
      return jax.device_put(batch, self._split)
    d = self.num_devices

    def split(x):
      self._check_divisible(x.shape[0], "eval batch size")
      return x.reshape((d, x.shape[0] // d) + x.shape[1:])
    return jax.device_put({k: split(v) for k, v in batch.items()}, self._split)

  # ---- outputs ----------------------------------------------------------------------------

  def get_metrics(self, metrics: Any) -> Any:
    """Step metrics (already reduced over devices) -> host scalars."""
    if self.backend == "pmap":
      return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], metrics)
    return jax.device_get(metrics)

  def get_batch_outputs(self, outputs: jax.Array) -> np.ndarray:
    """Per-row eval outputs -> `[global_batch, ...]` host array in batch order."""
    outputs = np.asarray(jax.device_get(outputs))
    if self.backend == "pmap":
      return outputs.reshape((-1,) + outputs.shape[2:])
    return outputs
