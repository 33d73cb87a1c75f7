"""Config validation and the resume check (what config files build with: `config_base`)."""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from configs import default as default_config
from research import peft, tasks
from research.config_base import ConfigError
from research.models import bert, mkl_gemm
from research.parallel import BACKENDS

DTYPES = ("float32", "bfloat16")
# Fields that do not change what a run computes: a resumed run may change them.
RESUMABLE_CHANGES = ("log.every_steps", "checkpoint.keep", "checkpoint.every_seconds",
                     "eval.batch_size", "log.wandb_project", "train.max_skipped_fraction",
                     "model.gemm", "model.attention")


def _check(condition: bool, field: str, message: str):
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Catches the inconsistent configs that would otherwise fail deep inside a run."""
  task = config.task
  try:
    kind = tasks.kind_of(task)
  except tasks.UnknownKind as e:
    raise ConfigError(str(e)) from None
  _check(len(task.text_fields) in (1, 2), "task.text_fields",
         f"needs one field or two (a pair), got {tuple(task.text_fields)}")
  kind.validate(task, config, _check)
  allowed = kind.metrics
  for name in task.metrics:
    _check(name in allowed, "task.metrics", f"{name!r} is not one of {allowed} for {kind.name}")
  _check(config.eval.best_metric in tuple(task.metrics) + ("loss",), "eval.best_metric",
         f"{config.eval.best_metric!r} is neither 'loss' nor one of task.metrics "
         f"{tuple(task.metrics)}")
  data = config.data
  buckets = tuple(data.length_buckets)
  _check(bool(buckets) and list(buckets) == sorted(set(buckets)), "data.length_buckets",
         f"must be strictly increasing, got {buckets}")
  _check(buckets[-1] == data.max_length, "data.length_buckets",
         f"the largest bucket {buckets[-1]} must equal data.max_length {data.max_length}")
  _check(data.train_examples >= 0 and data.eval_examples >= 0, "data.train_examples",
         "must be >= 0 (0 means all)")
  if data.validation_from_train:
    _check(data.validation_from_train > 0, "data.validation_from_train",
           "must be a fraction in (0, 1) or a number of rows (0 = off)")
    _check("validation" in data.eval_splits and data.train_split != "validation",
           "data.validation_from_train", "carves the split 'validation' out of "
           f"{data.train_split!r}: list 'validation' in data.eval_splits (first, to pick the "
           f"best checkpoint on it), got {tuple(data.eval_splits)}")
  train = config.train
  _check(train.num_steps >= 0, "train.num_steps", "must be >= 0 (0: train.num_epochs decides)")
  if data.streaming:
    _check(kind.streams, "data.streaming",
           f"streams a masked-LM corpus; task.kind {kind.name!r} reads its splits whole")
    _check(train.num_steps > 0, "train.num_steps",
           "a streamed corpus has no known epoch length: give the run's length in steps")
    _check(not data.validation_from_train, "data.validation_from_train",
           "cannot hold rows out of a stream: give a validation split (e.g. validation.txt)")
    _check(data.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0 (0: stream order)")
  _check(train.batch_size > 0, "train.batch_size", "must be positive")
  _check(train.grad_accum_steps >= 1 and train.batch_size % train.grad_accum_steps == 0,
         "train.grad_accum_steps",
         f"{train.grad_accum_steps} must be >= 1 and divide train.batch_size {train.batch_size}")
  _check(train.num_epochs > 0, "train.num_epochs", "must be positive")
  _check(0 <= train.max_skipped_fraction <= 1, "train.max_skipped_fraction",
         "must be in [0, 1] (1: no bound)")
  for field in ("dtype", "param_dtype"):
    _check(config.model[field] != "float16", f"model.{field}",
           "float16 needs loss scaling, which this codebase does not do; use 'bfloat16' "
           "(the same memory and speed on GPUs and TPUs, float32's range: no scaling needed)")
    _check(config.model[field] in DTYPES, f"model.{field}",
           f"{config.model[field]!r} is not one of {DTYPES}")
  _check(config.model.gemm in mkl_gemm.GEMMS, "model.gemm",
         f"{config.model.gemm!r} is not one of {mkl_gemm.GEMMS}")
  _check(config.model.attention in bert.ATTENTIONS, "model.attention",
         f"{config.model.attention!r} is not one of {bert.ATTENTIONS}")
  distill = config.distill
  _check(distill.temperature > 0, "distill.temperature", "must be positive")
  _check(0 <= distill.alpha <= 1, "distill.alpha", "must be in [0, 1]")
  _check(not distill.teacher or kind.distills, "distill.teacher",
         f"{kind.name} has no distillation loss yet; "
         f"{', '.join(k for k in tasks.KINDS if tasks.get(k).distills)} have")
  _check(config.model.num_layers_kept >= 0, "model.num_layers_kept",
         "must be >= 0 (0: all of the checkpoint's layers)")
  _check(not config.model.num_layers_kept or bool(config.model.checkpoint),
         "model.num_layers_kept", "keeps a checkpoint's layers; a randomly initialised model "
         "takes its depth from model.architecture.num_hidden_layers")
  _check(config.model.dropout_impl in bert.DROPOUT_IMPLS, "model.dropout_impl",
         f"{config.model.dropout_impl!r} is not one of {bert.DROPOUT_IMPLS}")
  _check(config.parallel.backend in BACKENDS, "parallel.backend",
         f"{config.parallel.backend!r} is not one of {BACKENDS}")
  opt = config.optimizer
  _check(not (opt.warmup_steps and opt.warmup_ratio), "optimizer.warmup_steps",
         "set warmup_steps or warmup_ratio, not both")
  _check(0 <= opt.warmup_ratio < 1, "optimizer.warmup_ratio", "must be in [0, 1)")
  _check(0 < opt.layer_decay <= 1, "optimizer.layer_decay", "must be in (0, 1] (1 = off)")
  pcfg = config.peft
  _check(pcfg.method in peft.METHODS, "peft.method",
         f"{pcfg.method!r} is not one of {peft.METHODS}")
  _check(pcfg.freeze_bottom_layers >= 0 and (pcfg.method == "full"
                                             or not pcfg.freeze_bottom_layers),
         "peft.freeze_bottom_layers", "must be >= 0, and is only for peft.method='full'")
  _check(pcfg.lora_rank > 0, "peft.lora_rank", "must be positive")
  _check(config.eval.early_stopping_patience >= 0, "eval.early_stopping_patience",
         "must be >= 0 (0 = off)")
  _check(config.checkpoint.every_seconds >= 0, "checkpoint.every_seconds",
         "must be >= 0 (0 = off)")


def best_mode(config: ml_collections.ConfigDict) -> str:
  return "min" if config.eval.best_metric == "loss" else "max"


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """Sets the field at the dotted `path` (`optimizer.learning_rate`) as an override does: a
  path that is not a field raises KeyError, a value the field cannot hold TypeError (or
  ValueError), for the caller to name in its own terms."""
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise KeyError(leaf)
  node[leaf] = value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


def resume_conflicts(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Fields whose value differs from the run saved in the workdir, as 'field: old -> new'."""
  old = flatten(saved)
  new = flatten(json.loads(to_json(config)))
  # With a checkpoint, model.architecture is read from it (builder.with_checkpoint_architecture),
  # so a checkpoint folder whose config.json changed since (an activation, a size) differs.
  # Runs written before it was read saved the default shapes: for them the name alone counts.
  # A field added to the code since the run started is no difference while it has its default.
  defaults = flatten(json.loads(to_json(default_config.get_config())))
  derived = "model.architecture."
  legacy = bool(config.model.checkpoint) and all(
      old[k] == defaults.get(k) for k in old if k.startswith(derived))
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
          for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
          and not (legacy and k.startswith(derived))
          and not (k not in old and k in defaults and new.get(k) == defaults[k])]
