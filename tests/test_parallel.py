"""One per-device step, three ways to run it: pmap, shard_map, one device; and accumulation.

The same batch split over 1 or 4 devices, or into micro-batches, must give the same update:
with dropout off, and with dropout on (each example's masks are drawn from its index, not from
the device or micro-batch that holds it). The tolerance is float32 summation order.

One encoder layer: what is compared is how the batch is split, which no layer count changes,
and compiling the steps is most of this file's time. The one-device runs several tests compare
with are computed once per file (`_one_device`).
"""

import dataclasses
import functools
import logging
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from research import optim, parallel, steps, tasks
from research.data.encoded import IGNORE
from research.models import bert

CONFIG = bert.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
BATCH, LENGTH = 16, 12


def _optimizer_config():
  c = default.get_config().optimizer
  c.update(learning_rate=1e-3, warmup_ratio=0.0)
  return c


DROPOUT_CONFIG = dataclasses.replace(CONFIG, hidden_dropout_prob=0.1,
                                     attention_probs_dropout_prob=0.1)


def _setup(kind="classification", seed=0, config=CONFIG):
  """(model, tx, schedule, state, batch) of a test case, built once per file however the
  arguments are spelt (read-only: the runs copy the state onto their devices)."""
  return _built_setup(kind, seed, config)


@functools.cache
def _built_setup(kind, seed, config):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, LENGTH + 1, BATCH)
  mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.int32)
  ids = (rng.integers(1, CONFIG.vocab_size, (BATCH, LENGTH)) * mask).astype(np.int32)
  if kind == "token_classification":  # uneven labelled tokens per device
    labels = np.where(rng.random((BATCH, LENGTH)) < 0.4, rng.integers(0, 3, (BATCH, LENGTH)),
                      IGNORE).astype(np.int32) * mask + IGNORE * (1 - mask)
  elif kind == "masked_lm":  # 0 to 3 targets per row: uneven masked tokens per device
    slots = 3
    labels = np.where(np.arange(slots) < rng.integers(0, slots + 1, BATCH)[:, None],
                      rng.integers(1, CONFIG.vocab_size, (BATCH, slots)), IGNORE)
    labels = labels.astype(np.int32)
  else:
    labels = rng.integers(0, 3, BATCH).astype(np.int32)
  batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
               labels=labels, example_mask=np.ones(BATCH, np.float32),
               example_index=np.arange(BATCH, dtype=np.int32))
  extra = ()
  if kind == "relation_classification":  # two one-token entities, each after a marker
    batch["entity_spans"] = np.stack([np.ones(BATCH), np.full(BATCH, 2), lengths - 1, lengths],
                                     axis=1).astype(np.int32)
    extra = (batch["token_type_ids"][:1], batch["entity_spans"][:1])
  if kind == "masked_lm":
    batch["masked_positions"] = (rng.integers(0, LENGTH, (BATCH, 3)) % lengths[:, None]
                                 ).astype(np.int32)
    extra = (batch["token_type_ids"][:1], batch["masked_positions"][:1])
  task = ml_collections.ConfigDict(dict(representation="entity_start",
                                        entity_markers=("<e1>", "</e1>", "<e2>", "</e2>")))
  model = tasks.get(kind).build_model(config, 3, dtype=jnp.float32, param_dtype=jnp.float32,
                                      classifier_dropout=None, task=task)
  # Jitted: op by op, initialising compiles a hundred small programs (most of a test's time).
  params = jax.jit(lambda r: model.init(r, ids[:1], mask[:1], *extra)["params"])(
      jax.random.key(0))
  tx, schedule = optim.make_optimizer(_optimizer_config(), params, 100)
  state = jax.device_get(steps.TrainState(step=np.int32(0), params=params, frozen={},
                                          opt_state=jax.jit(tx.init)(params),
                                          rng=np.asarray(jax.random.PRNGKey(0))))
  return model, tx, schedule, state, batch


def _run(setup, backend, devices, accum, kind="classification", num_steps=1):
  model, tx, schedule, state, batch = setup
  dp = parallel.DataParallel(backend, devices)
  step = dp.compile_train_step(steps.make_train_step(model, tx, schedule, tasks.get(kind)))
  placed = dp.put_replicated(state)
  micro = {k: v.reshape((accum, BATCH // accum) + v.shape[1:]) for k, v in batch.items()}
  for _ in range(num_steps):
    placed, metrics = step(placed, dp.put_train_batch(micro), dp.put_signals(np.zeros(2)))
    jax.block_until_ready(metrics)
  return dp.get_replicated(placed), dp.get_metrics(metrics)


@functools.cache
def _one_device(kind="classification", seed=0, config=CONFIG, num_steps=2):
  """The reference: the whole batch on one device, no accumulation."""
  return _run(_setup(kind, seed, config), "pmap", 1, 1, kind, num_steps)


def _max_difference(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


# The splits sum the same float32 terms in another order, so they agree to rounding, not bit
# for bit. Measured on a 2-core AMD EPYC (AVX2), two steps: parameters within 1.05e-6 (masked
# LM, whose tied vocabulary sums the most terms; 1.2e-7 to 5e-7 for the others), optimizer
# state within 1.1e-8, loss and gradient norm within 1.1e-7 relative. The tolerances are ~3-10x
# those: a real error in how a batch is split (a row dropped or counted twice, a mean of means)
# moves them by 1e-3 and more.
PARAMS_TOLERANCE = 3e-6
OPT_STATE_TOLERANCE = 1e-7
RELATIVE_TOLERANCE = 1e-6


def _need_devices(n):
  if jax.local_device_count() < n:
    pytest.skip(f"needs {n} devices; run with XLA_FLAGS=--xla_force_host_platform_device_count"
                f"={n} (tests/conftest.py sets it)")


@pytest.mark.parametrize("backend,kind", [
    ("pmap", "classification"), ("shard_map", "classification"),
    ("pmap", "token_classification"), ("shard_map", "token_classification"),
    ("shard_map", "relation_classification"), ("pmap", "masked_lm")])
def test_four_devices_equal_one_device(backend, kind):
  _need_devices(4)
  setup = _setup(kind)
  single, single_metrics = _one_device(kind)
  multi, multi_metrics = _run(setup, backend, 4, 1, kind, num_steps=2)
  assert int(multi.step) == 2
  assert _max_difference(multi.params, single.params) < PARAMS_TOLERANCE
  assert _max_difference(multi.opt_state, single.opt_state) < OPT_STATE_TOLERANCE
  np.testing.assert_allclose(multi_metrics["loss_sum"], single_metrics["loss_sum"],
                             rtol=RELATIVE_TOLERANCE)
  assert multi_metrics["weight_sum"] == single_metrics["weight_sum"]
  # The step moved the params: equality is not two no-ops agreeing.
  assert _max_difference(single.params, setup[3].params) > 1e-4


@pytest.mark.parametrize("kind", ["classification", "token_classification", "masked_lm"])
def test_accumulating_four_micro_batches_equals_one_big_batch(kind):
  setup = _setup(kind, seed=1)
  big, big_metrics = _one_device(kind, seed=1)
  accumulated, metrics = _run(setup, "pmap", 1, 4, kind, num_steps=2)
  assert _max_difference(accumulated.params, big.params) < PARAMS_TOLERANCE
  for name in ("loss_sum", "grad_norm"):
    np.testing.assert_allclose(metrics[name], big_metrics[name], rtol=RELATIVE_TOLERANCE)


def test_accumulation_across_devices_with_shard_map():
  _need_devices(2)
  setup = _setup(seed=2)
  reference, _ = _run(setup, "pmap", 1, 1)
  combined, _ = _run(setup, "shard_map", 2, 2)
  assert _max_difference(combined.params, reference.params) < PARAMS_TOLERANCE


@pytest.mark.parametrize("backend,devices,accum", [
    ("pmap", 4, 1), ("shard_map", 4, 1), ("pmap", 1, 4), ("shard_map", 2, 2)])
def test_dropout_draws_the_same_masks_however_the_batch_is_split(backend, devices, accum):
  _need_devices(devices)
  setup = _setup(seed=4, config=DROPOUT_CONFIG)
  single, single_metrics = _one_device(seed=4, config=DROPOUT_CONFIG)
  split, split_metrics = _run(setup, backend, devices, accum, num_steps=2)
  assert _max_difference(split.params, single.params) < PARAMS_TOLERANCE
  np.testing.assert_allclose(split_metrics["loss_sum"], single_metrics["loss_sum"],
                             rtol=RELATIVE_TOLERANCE)
  without_dropout, _ = _one_device(seed=4)
  assert _max_difference(single.params, without_dropout.params) > 1e-4  # dropout is on


@pytest.mark.parametrize("backend", parallel.BACKENDS)
def test_step_compiles_once_per_shape(backend, caplog):
  """pmap compiles twice unless inputs are first placed with a NamedSharding: we place them.
  Each compilation is logged as it starts and with its time as it ends."""
  caplog.set_level(logging.INFO)
  _need_devices(2)
  model, tx, schedule, state, batch = _setup(seed=3)
  dp = parallel.DataParallel(backend, 2)
  step = dp.compile_train_step(steps.make_train_step(model, tx, schedule,
                                                     tasks.get("classification")))
  placed = dp.put_replicated(state)
  for width in (LENGTH, LENGTH, 8, LENGTH, 8, 8):  # two shapes
    micro = {k: (v[:, :width] if v.ndim == 2 else v)[None] for k, v in batch.items()}
    placed, metrics = step(placed, dp.put_train_batch(micro), dp.put_signals(np.zeros(2)))
    jax.block_until_ready(metrics)
  assert step.gradients.compiles == 2 and step.update.compiles == 1  # the update: any width
  lines = [r.getMessage() for r in caplog.records if "the train step" in r.getMessage()]
  done = r" (compiled|read from the compilation cache) in \d+\.\d s"  # a warm cache reads it
  expected = []
  for width in (LENGTH, 8):
    expected += [re.escape(f"compiling the train step for batch width {width} ..."),
                 re.escape(f"... the train step for batch width {width}") + done]
  assert len(lines) == len(expected), lines
  for line, pattern in zip(lines, expected):
    assert re.fullmatch(pattern, line), line


@pytest.mark.parametrize("backend", parallel.BACKENDS)
def test_one_device_in_all_sums_nothing_across_devices(backend):
  """On one device the gradients' sum over devices is themselves, yet XLA:CPU compiled the
  all-reduce as a copy of every gradient: 15-20% of a MiniLM step at batch width 8. The step
  leaves it out there, and only there."""
  _need_devices(2)
  model, tx, schedule, state, batch = _setup()
  micro = {k: v[None] for k, v in batch.items()}
  collectives = {}
  for devices in (1, 2):
    dp = parallel.DataParallel(backend, devices)
    step = dp.compile_train_step(steps.make_train_step(model, tx, schedule,
                                                       tasks.get("classification")))
    program = step.gradients._fn.lower(dp.put_replicated(state), dp.put_train_batch(micro),
                                       dp.put_signals(np.zeros(2))).compile().as_text()
    collectives[devices] = len(re.findall(r"\ball-reduce(?:-start)?\(", program))
  assert collectives[1] == 0 and collectives[2] > 0, collectives
