"""The per-device train and eval steps.

Each is written once, for one device's shard of the batch, with collectives over the named axis
`AXIS`; `parallel.py` compiles the same function under `jax.pmap` or `jax.jit(jax.shard_map)`.
The train step is two functions (`TrainStep`): the gradients, compiled once per batch width,
and the optimizer update, compiled once.

A train batch holds `[accum, per_device_batch, ...]` arrays: the step sums gradients over the
`accum` micro-batches and over devices, then divides by the number of labelled positions in the
whole global batch. That is exactly the big batch's mean gradient whatever the split (also for
token tasks, where devices see different numbers of labelled tokens and a plain pmean of
per-device means would be wrong).

Dropout is the same whatever the split too: its key is a function of (seed, step) alone, and
each example's masks of its `example_index` (its row in the split), never of the device or the
micro-batch that holds it. One device, four, two processes or accumulation then train the same
model up to the order of floating-point sums.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

from research import peft, tasks

AXIS = "data"
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # optimizer updates done so far (int32 scalar)
  params: Any           # the trainable parameters (all of them unless PEFT freezes some)
  frozen: Any           # the parameters that never change (see peft.py); {} for full tuning
  opt_state: Any        # of `params` only
  rng: jax.Array        # raw uint32[2] key; the step's dropout key is folded from it and the step


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "entity_spans",
                "masked_positions")


def model_inputs(batch: Batch) -> tuple[jax.Array, ...]:
  """The model's positional inputs; `entity_spans` only in relation batches,
  `masked_positions` only in masked-LM ones."""
  return tuple(batch[name] for name in MODEL_INPUTS if name in batch)


def _first_row(x: jax.Array) -> jax.Array:
  """One device's row of per-device values: pmap gives `[k]`, shard_map `[1, k]`."""
  return x.reshape(-1, x.shape[-1])[0]


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """One train step as two programs: `gradients(state, batch, signals)` runs forward and
  backward and sums over micro-batches and devices; `update(state, sums)` turns the sums into
  the optimizer update. Calling the pair runs both, as one function.

  Why two: XLA compiles one program per batch width (length bucket), and the update does not
  depend on the width. Compiled apart, the optimizer's ~200 per-parameter kernels are compiled
  once per run instead of once per bucket (experiments/perf/NOTES.md, attempt 26)."""
  gradients: Callable[[TrainState, Batch, jax.Array], dict]
  update: Callable[[TrainState, dict], tuple[TrainState, dict]]

  def __call__(self, state: TrainState, batch: Batch, signals: jax.Array):
    return self.update(state, self.gradients(state, batch, signals))


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    kind: tasks.TaskKind, lora_scale: float = 0.0, skip_nonfinite: bool = False,
                    distill: tuple[float, float] | None = None) -> TrainStep:
  """Gradients flow to `state.params` only: frozen weights get no gradient computation.

  `signals` holds one row of int32 flags per device (see train.py: stop, save); the step returns
  their sums over all devices in `metrics["signals"]`, so that every process reads the same
  decision for the same step without a collective of its own. `metrics["finite"]` says whether
  the loss and the gradient norm are finite; with `skip_nonfinite`, a step where they are not
  leaves the parameters and optimizer state as they were (the step still counts). With
  `distill` (temperature, alpha), batches carry the teacher's `teacher_logits` and the loss is
  the kind's `distill_loss_sum`.
  """

  def loss_fn(params, frozen, micro_batch, rng):
    logits = model.apply({"params": peft.materialize(params, frozen, lora_scale)},
                         *model_inputs(micro_batch), deterministic=False,
                         example_ids=micro_batch["example_index"], rngs={"dropout": rng})
    if distill is not None:
      return kind.distill_loss_sum(logits, micro_batch["teacher_logits"], micro_batch["labels"],
                                   micro_batch["example_mask"], micro_batch["attention_mask"],
                                   *distill)
    return kind.loss_sum(logits, micro_batch["labels"], micro_batch["example_mask"],
                         micro_batch["attention_mask"])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradients(state: TrainState, batch: Batch, signals: jax.Array) -> dict:
    rng = jax.random.fold_in(state.rng, state.step)

    def accumulate(carry, micro_batch):
      (loss, weight), grads = grad_fn(state.params, state.frozen, micro_batch, rng)
      grad_sum, loss_sum, weight_sum = carry
      grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      return (grad_sum, loss_sum + loss, weight_sum + weight), None

    accum = jax.tree.leaves(batch)[0].shape[0]
    if accum == 1:
      (loss, weight), grad_sum = grad_fn(state.params, state.frozen,
                                         jax.tree.map(lambda x: x[0], batch), rng)
    else:
      zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros(()), jnp.zeros(()))
      (grad_sum, loss, weight), _ = lax.scan(accumulate, zeros, batch)
    sums = {"grad_sum": grad_sum, "loss_sum": loss, "weight_sum": weight,
            "signals": _first_row(signals)}
    if lax.axis_size(AXIS) > 1:  # on one device in all, XLA would copy every gradient for nothing
      sums = lax.psum(sums, AXIS)
    return sums

  def update(state: TrainState, sums: dict) -> tuple[TrainState, dict]:
    loss, weight = sums["loss_sum"], sums["weight_sum"]
    grads = jax.tree.map(lambda g: g / jnp.maximum(weight, 1.0), sums["grad_sum"])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if skip_nonfinite:
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                       (params, opt_state), (state.params, state.opt_state))
    metrics = {"loss_sum": loss, "weight_sum": weight, "grad_norm": grad_norm,
               "learning_rate": schedule(state.step), "signals": sums["signals"],
               "finite": finite}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return TrainStep(gradients, update)


def make_eval_step(model, kind: tasks.TaskKind) -> Callable[[Any, Batch], dict]:
  """The outputs and example indices of every row of the global batch, gathered from all
  devices (padding rows included, index -1: the host drops them), and the summed loss. A row's
  outputs are its logits, or what its task kind keeps of them (`TaskKind.eval_outputs`: a
  masked-LM row's (correct predictions, targets), [B, 2])."""

  def eval_step(params, batch: Batch):
    logits = model.apply({"params": params}, *model_inputs(batch), deterministic=True)
    loss, weight = kind.loss_sum(logits, batch["labels"], batch["example_mask"],
                                 batch["attention_mask"])
    logits = kind.eval_outputs(logits, batch)
    gathered = lax.all_gather({"logits": logits, "example_index": batch["example_index"]}, AXIS,
                              tiled=True)
    return {**gathered, **lax.psum({"loss_sum": loss, "weight_sum": weight}, AXIS)}

  return eval_step


def make_materialize(lora_scale: float) -> Callable[[Any, Any], Any]:
  """(trainable, frozen) -> the plain params the eval step and the best checkpoint take."""
  return lambda params, frozen: peft.materialize(params, frozen, lora_scale)
