"""The optimizer: AdamW with a regex weight-decay mask, warm-up + decay, global-norm clipping.

Parameters are named by their '/'-joined path, e.g. `bert/encoder/layer/0/attention/self/query/
kernel` (`roberta/...`, `electra/...` for those families); regexes over these names choose which
parameters decay (as big_vision's `wd_mults`).
Gradient accumulation is not here: the train step sums micro-batch gradients itself, so one
optimizer update is one step of the schedule whatever the accumulation.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
import optax
from flax import traverse_util

from research.models import families

SCHEDULES = ("linear", "cosine", "constant")


def param_names(params: Any) -> list[str]:
  return list(traverse_util.flatten_dict(params, sep="/"))


def regex_mask(params: Any, pattern: str) -> Any:
  """A tree of bools: True where the parameter's path fully matches `pattern`."""
  compiled = re.compile(pattern)
  return traverse_util.path_aware_map(
      lambda path, _: compiled.fullmatch("/".join(path)) is not None, params)


def warmup_steps(cfg: ml_collections.ConfigDict, total_steps: int) -> int:
  """A ratio is rounded up, as the HF Trainer does (10% of 231 steps is 24 steps)."""
  if cfg.warmup_steps and cfg.warmup_ratio:
    raise ValueError("set optimizer.warmup_steps or optimizer.warmup_ratio, not both")
  return int(cfg.warmup_steps or math.ceil(total_steps * cfg.warmup_ratio))


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0, then `cfg.schedule` down to 0 at `total_steps` (as HF's
  get_linear_schedule_with_warmup: the first update has learning rate 0 when warming up)."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule {cfg.schedule!r} is not one of {SCHEDULES}")
  lr, warm = cfg.learning_rate, warmup_steps(cfg, total_steps)
  decay_steps = max(total_steps - warm, 1)
  if cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, 0.0, decay_steps)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps)
  else:
    decay = optax.constant_schedule(lr)
  if not warm:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def layer_depth(path: tuple[str, ...], num_layers: int) -> int:
  """0 for the embeddings (ELECTRA's projection included), i + 1 for encoder layer i,
  num_layers + 1 above the encoder (pooler, head). LoRA factors (under 'lora/') sit at the
  depth of the kernel they adapt."""
  if path[0] == "lora":
    path = path[1:]
  if families.is_embeddings(path):
    return 0
  layer = families.layer_of(path)
  return num_layers + 1 if layer is None else layer + 1


def layer_decay_multipliers(params: Any, decay: float, num_layers: int) -> Any:
  """decay ** (distance from the top): the head keeps the peak learning rate, encoder layer i
  gets decay^(L - i), the embeddings decay^(L + 1) (as in ELECTRA's fine-tuning recipe)."""
  return traverse_util.path_aware_map(
      lambda path, _: decay ** (num_layers + 1 - layer_depth(path, num_layers)), params)


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
  """Multiplies each update by a constant of the same tree: per-parameter learning rates."""
  return optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda updates, state, params=None: (jax.tree.map(lambda u, m: u * m, updates,
                                                        multipliers), state))


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, total_steps: int,
                   num_layers: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW over `params` (the trainable ones); `num_layers` is needed for layer decay."""
  schedule = learning_rate_schedule(cfg, total_steps)
  decay_mask = regex_mask(params, cfg.weight_decay_pattern)
  if cfg.weight_decay and not any(traverse_util.flatten_dict(decay_mask).values()):
    raise ValueError(f"optimizer.weight_decay_pattern {cfg.weight_decay_pattern!r} matches no "
                     "parameter")
  chain = []
  if cfg.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  if cfg.layer_decay != 1.0:
    if not 0 < cfg.layer_decay < 1:
      raise ValueError(f"optimizer.layer_decay {cfg.layer_decay} must be in (0, 1]")
    chain.append(scale_by_tree(layer_decay_multipliers(params, cfg.layer_decay, num_layers)))
  return optax.chain(*chain), schedule
