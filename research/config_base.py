"""What config files build with: the `Config` dict, their argument parser (`parse_arg`),
`set_task` and `ConfigError`. Plain data: loading a config file imports no JAX, flax or optax
(validation, which knows the task kinds and the model, is `config_lib`'s)."""

from __future__ import annotations

from typing import Any

import ml_collections

from research import named_tasks


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


class Config(ml_collections.ConfigDict):
  """The ConfigDict of configs/default.py: a string given for a tuple of strings (say
  `task.text_fields = "question"`) is that one-element tuple, where ml_collections' type check
  would refuse it with "cannot be casted to type tuple"."""

  def __setitem__(self, key, value):
    current = self._fields.get(key) if isinstance(key, str) else None
    if (isinstance(value, str) and isinstance(current, tuple)
        and all(isinstance(item, str) for item in current)):
      value = (value,)
    super().__setitem__(key, value)


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'mrpc,quick,seeds=3' -> {task: 'mrpc', quick: True, seeds: 3}, typed like `defaults`
  (big_vision's `parse_arg`). A bare name sets a bool; the first item may also be the value of
  the first argument (`glue.py:mrpc`); unknown names are an error."""
  values = dict(defaults)
  first = next(iter(defaults), None)
  for position, item in enumerate(filter(None, (arg or "").split(","))):
    name, _, raw = item.partition("=")
    if (position == 0 and not raw and name not in defaults
        and isinstance(defaults.get(first), str)):
      name, raw = first, item
    if name not in defaults:
      raise ConfigError(f"unknown config argument {name!r}; known: {sorted(defaults)}")
    default = defaults[name]
    if isinstance(default, bool):
      values[name] = raw.lower() not in ("0", "false", "no") if raw else True
    elif not raw:
      raise ConfigError(f"config argument {name!r} needs a value ({name}=...)")
    else:
      values[name] = type(default)(raw) if default is not None else raw
  return ml_collections.ConfigDict(values)


def set_task(config: ml_collections.ConfigDict, spec: named_tasks.TaskSpec) -> None:
  """Points `config.task`, `config.data` and `config.eval` at a registered task."""
  config.task.kind = spec.kind
  config.task.text_fields = spec.text_fields
  config.task.label_field = spec.label_field
  config.task.label_names = spec.label_names
  config.task.metrics = spec.metrics
  config.data.dataset = spec.hub_dataset
  config.data.subset = spec.hub_subset or ""
  config.data.local_name = spec.local_name or ""
  config.data.eval_splits = spec.eval_splits
  config.eval.best_metric = spec.metrics[0]
