"""Parameter-efficient fine-tuning on the param tree: which parameters train, and LoRA.

`config.peft.method` chooses what trains; everything else is *frozen*:
  full            every parameter (optionally not the embeddings and the bottom k layers)
  frozen_encoder  the classifier alone: a linear probe of the pooled / token features
  bitfit          every bias (dense and LayerNorm) and the classifier (Ben Zaken et al. 2021)
  lora            low-rank factors A [in, r], B [r, out] on the kernels matched by
                  `lora_targets`, plus the classifier (Hu et al. 2021)

The train state keeps trainable and frozen parameters in two subtrees (`split`), so gradients,
their all-reduce and the optimizer state exist for the trainable part only, and XLA drops the
weight-gradient matmuls of frozen layers. The model itself never changes: `materialize` joins
the two subtrees and folds each LoRA pair into its kernel, W + (alpha / r) A B, giving the plain
BERT tree that the model applies, the best checkpoint stores and export writes.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from research.models import families

METHODS = ("full", "frozen_encoder", "bitfit", "lora")
LORA = "lora"  # top-level key of the LoRA factors in the trainable subtree


def is_trainable(cfg: ml_collections.ConfigDict, path: tuple[str, ...]) -> bool:
  """Whether a parameter of the plain model trains under `cfg` (a `config.peft`)."""
  if path[0] in families.HEADS:
    return True
  if cfg.method == "full":
    if families.is_embeddings(path):
      return cfg.freeze_bottom_layers == 0
    layer = families.layer_of(path)
    return layer is None or layer >= cfg.freeze_bottom_layers
  if cfg.method == "bitfit":
    return path[-1] == "bias"
  return False  # frozen_encoder and lora: the encoder is frozen


def lora_init(cfg: ml_collections.ConfigDict, params: Any, rng: jax.Array) -> dict:
  """A ~ Kaiming-uniform (as peft's default), B = 0: the model starts exactly as the base."""
  pattern = re.compile(cfg.lora_targets)
  factors = {}
  for path, kernel in traverse_util.flatten_dict(params).items():
    if path[-1] != "kernel" or not pattern.fullmatch("/".join(path)):
      continue
    rng, key = jax.random.split(rng)
    fan_in, fan_out = kernel.shape
    bound = np.sqrt(6.0 / ((1 + 5.0) * fan_in))  # kaiming_uniform with a = sqrt(5)
    factors[path[:-1] + ("a",)] = np.asarray(
        jax.random.uniform(key, (fan_in, cfg.lora_rank), minval=-bound, maxval=bound),
        kernel.dtype)
    factors[path[:-1] + ("b",)] = np.zeros((cfg.lora_rank, fan_out), kernel.dtype)
  if not factors:
    raise ValueError(f"config.peft.lora_targets {cfg.lora_targets!r} matches no kernel")
  return traverse_util.unflatten_dict(factors)


def split(cfg: ml_collections.ConfigDict, params: Any, rng: jax.Array) -> tuple[dict, dict]:
  """Plain model params -> (trainable, frozen) subtrees; LoRA factors join the trainable."""
  if cfg.method not in METHODS:
    raise ValueError(f"config.peft.method {cfg.method!r} is not one of {METHODS}")
  trainable, frozen = {}, {}
  for path, value in traverse_util.flatten_dict(params).items():
    (trainable if is_trainable(cfg, path) else frozen)[path] = value
  trainable = traverse_util.unflatten_dict(trainable)
  if cfg.method == "lora":
    trainable[LORA] = lora_init(cfg, params, rng)
  return trainable, traverse_util.unflatten_dict(frozen)


def materialize(trainable: dict, frozen: dict, lora_scale: float) -> dict:
  """(trainable, frozen) -> the plain model tree, LoRA pairs folded into their kernels."""
  flat = traverse_util.flatten_dict(frozen)
  factors = {}
  for path, value in traverse_util.flatten_dict(trainable).items():
    if path[0] == LORA:
      factors[path[1:]] = value
    else:
      flat[path] = value
  for path, a in factors.items():
    if path[-1] == "a":
      module = path[:-1]
      kernel = flat[module + ("kernel",)]
      delta = jnp.matmul(a, factors[module + ("b",)]) * lora_scale
      flat[module + ("kernel",)] = kernel + delta.astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def lora_scale(cfg: ml_collections.ConfigDict) -> float:
  return cfg.lora_alpha / cfg.lora_rank if cfg.method == "lora" else 0.0


def count(tree: Any) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
