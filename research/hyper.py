"""Sweep declarations: a config file's `get_hyper(hyper)` returns a list of override dicts.

As big_vision's: keys are `config.<field path>`, and sweeps combine by product, zip and chain.

  def get_hyper(hyper):
    return hyper.product([
        hyper.sweep("config.optimizer.learning_rate", [5e-5, 3e-5, 2e-5]),
        hyper.sweep("config.train.batch_size", [16, 32]),
        hyper.sweep("config.seed", [0, 1, 2]),
    ])
"""

from __future__ import annotations

from typing import Any, Iterable

Point = dict[str, Any]
SEED = "config.seed"  # the key over which `research.report` averages


def sweep(key: str, values: Iterable[Any]) -> list[Point]:
  return [{key: v} for v in values]


def fixed(key: str, value: Any) -> list[Point]:
  return [{key: value}]


def product(sweeps: list[list[Point]]) -> list[Point]:
  """Every combination, the last sweep varying fastest."""
  points: list[Point] = [{}]
  for s in sweeps:
    points = [{**a, **b} for a in points for b in s]
  return points


def zipit(sweeps: list[list[Point]]) -> list[Point]:
  """The i-th points of equally long sweeps, merged."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f"zipit needs sweeps of one length, got {sorted(lengths)}")
  return [{k: v for point in points for k, v in point.items()} for points in zip(*sweeps)]


def chainit(sweeps: list[list[Point]]) -> list[Point]:
  """One sweep after the other."""
  return [point for s in sweeps for point in s]
