"""Search spaces: a config file's `get_space(space)` declares what `research.tune` searches.

Next to `get_config` (and `get_hyper`, the grid of `research.sweep`), keys `config.<field path>`:

  def get_space(space):
    return {
        "config.optimizer.learning_rate": space.log_uniform(1e-5, 1e-3),
        "config.optimizer.warmup_ratio": space.uniform(0.0, 0.2),
        "config.train.batch_size": space.choice([16, 32]),
        "config.peft.lora_rank": space.integer(4, 64, log=True),
        "config.train.num_steps": space.fixed(2000),   # the same in every trial
    }

Each dimension becomes an Optuna distribution named by its field path without `config.`; its
record (`Dimension.record`) is what a study keeps of it, so that a rerun with another space is
refused. A declaration that cannot be searched is a `SpaceError` naming its key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import ml_collections

from research import config_lib

_CATEGORICAL = (type(None), bool, int, float, str)  # what an Optuna choice can hold


class SpaceError(ValueError):
  """A search space that cannot be searched; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Dimension:
  """One declared field: sampled (log_uniform, uniform, int, choice) or fixed."""

  sampling: str  # how it is drawn: log_uniform, uniform, int, choice, or fixed
  low: Any = None
  high: Any = None
  log: bool = False
  values: tuple[Any, ...] = ()
  value: Any = None

  def record(self) -> dict[str, Any]:
    """The JSON form a study stores (`study.user_attrs['space']`); its key "kind" is how it is
    drawn (`sampling`), as studies already stored say it."""
    if self.sampling == "choice":
      return {"kind": "choice", "values": list(self.values)}
    if self.sampling == "fixed":
      return {"kind": "fixed", "value": self.value}
    record = {"kind": self.sampling, "low": self.low, "high": self.high}
    if self.sampling == "int" and self.log:
      record["log"] = True
    return record

  def check(self, key: str) -> None:
    if self.sampling == "choice":
      if not self.values:
        raise SpaceError(f"search space {key}: choice of no values")
      odd = [v for v in self.values if not isinstance(v, _CATEGORICAL)]
      if odd:
        raise SpaceError(f"search space {key}: a choice holds numbers, strings, booleans or "
                         f"None, not {odd[0]!r} (use space.fixed for one such value)")
      # Optuna keeps a choice by its index in the list (`list.index`): of 1, 1.0 and True,
      # all equal, only the first could ever be told or shown.
      for i, value in enumerate(self.values):
        if value in self.values[:i]:
          raise SpaceError(f"search space {key}: choice {list(self.values)} repeats a value "
                           f"({value!r} equals {self.values[self.values.index(value)]!r})")
      return
    if self.sampling == "fixed":
      return
    numbers = (int,) if self.sampling == "int" else (int, float)
    for name, bound in (("low", self.low), ("high", self.high)):
      if isinstance(bound, bool) or not isinstance(bound, numbers) or not math.isfinite(bound):
        raise SpaceError(f"search space {key}: {self.sampling} {name} must be a finite "
                         f"{'integer' if self.sampling == 'int' else 'number'}, not {bound!r}")
    if self.low >= self.high:
      raise SpaceError(f"search space {key}: empty range, low {self.low!r} >= high "
                       f"{self.high!r}")
    if (self.sampling == "log_uniform" or self.log) and self.low <= 0:
      raise SpaceError(f"search space {key}: a log scale needs low > 0, not {self.low!r}")

  def probe_values(self) -> tuple[Any, ...]:
    """Values that show whether the field can hold what the dimension samples (a uniform range
    samples floats, whatever its bounds are)."""
    if self.sampling in ("uniform", "log_uniform"):
      return (float(self.low), float(self.high))
    return {"choice": self.values, "fixed": (self.value,)}.get(self.sampling, (self.low, self.high))

  def distribution(self):
    """The Optuna distribution it samples from (None when fixed)."""
    from optuna import distributions
    if self.sampling == "choice":
      return distributions.CategoricalDistribution(self.values)
    if self.sampling == "int":
      return distributions.IntDistribution(self.low, self.high, log=self.log)
    if self.sampling == "fixed":
      return None
    return distributions.FloatDistribution(float(self.low), float(self.high),
                                           log=self.sampling == "log_uniform")


def log_uniform(low: float, high: float) -> Dimension:
  """Uniform in log(value): learning rates, weight decay."""
  return Dimension("log_uniform", low, high)


def uniform(low: float, high: float) -> Dimension:
  return Dimension("uniform", low, high)


def integer(low: int, high: int, *, log: bool = False) -> Dimension:
  """An integer in [low, high] (both included)."""
  return Dimension("int", low, high, log=log)


def choice(values) -> Dimension:
  return Dimension("choice", values=tuple(values))


def fixed(value: Any) -> Dimension:
  """Not searched: the same value in every trial (and recorded with the study)."""
  return Dimension("fixed", value=value)


def field(key: str) -> str:
  """'config.optimizer.learning_rate' -> 'optimizer.learning_rate' (a trial's parameter)."""
  return key.removeprefix("config.")


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets `config.<key>` (with or without the `config.` prefix); a key that is not a field is a
  SpaceError."""
  try:
    config_lib.set_field(config, field(key), value)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise SpaceError(f"search space key {key!r} does not fit the config: {e}") from e


def checked(declared: Any, config: ml_collections.ConfigDict, where: str
            ) -> dict[str, Dimension]:
  """The declared space ({field path: Dimension}), each key a field of `config` and each
  dimension searchable; `where` names the declaration in errors."""
  if not isinstance(declared, dict) or not declared:
    raise SpaceError(f"get_space of {where} must return a non-empty dict "
                     "{'config.<field>': space.<kind>(...)}")
  space = {}
  for key, dimension in declared.items():
    if not isinstance(key, str) or not key.startswith("config."):
      raise SpaceError(f"search space key {key!r} of {where} must start with 'config.'")
    if not isinstance(dimension, Dimension):
      raise SpaceError(f"search space {key} of {where}: {dimension!r} is not a space.<kind>(...) "
                       "declaration (log_uniform, uniform, integer, choice, fixed)")
    dimension.check(key)
    probe = copy.deepcopy(config)  # every value the field can take must fit it
    for value in dimension.probe_values():
      set_field(probe, key, value)
    space[field(key)] = dimension
  return space


def record(space: dict[str, Dimension]) -> dict[str, dict[str, Any]]:
  return {name: dimension.record() for name, dimension in space.items()}
