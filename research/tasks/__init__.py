"""Task kinds as plug-ins: one module per kind, found by name from `config.task.kind`.

  classification, regression      sequence.py
  token_classification            tokens.py
  relation_classification         relations.py
  question_answering              question_answering.py
  masked_lm                       masked_lm.py

Each is a `TaskKind` (base.py: the interface and the defaults most kinds share); the core asks
the run's kind, `kind_of(config.task)`, for its model, loss, encoder, metrics and records and
never branches on the kind's name. A new kind is a module with a `TaskKind` subclass and one
`register` line. The named datasets (GLUE, CoNLL-2003, ...) are research/named_tasks.py.
"""

from __future__ import annotations

from typing import Any

from research.tasks.base import TaskKind
from research.tasks.masked_lm import MASKED_LM
from research.tasks.question_answering import QUESTION_ANSWERING
from research.tasks.relations import RELATION_CLASSIFICATION, REPRESENTATIONS
from research.tasks.sequence import CLASSIFICATION, REGRESSION
from research.tasks.tokens import TOKEN_CLASSIFICATION

__all__ = ["KINDS", "REPRESENTATIONS", "TaskKind", "UnknownKind", "get", "kind_of",
           "register"]


class UnknownKind(ValueError):
  """`config.task.kind` names no registered kind (config_lib.validate raises it as its
  ConfigError; research.main prints it as one line)."""


_REGISTRY: dict[str, TaskKind] = {}
KINDS: tuple[str, ...] = ()  # the registered names, in the order of registration


def register(kind: TaskKind) -> TaskKind:
  """Makes `kind` the one of `config.task.kind = kind.name` (config validation lists it)."""
  global KINDS
  if not kind.name:
    raise ValueError(f"{type(kind).__name__} has no name")
  _REGISTRY[kind.name] = kind
  KINDS = tuple(_REGISTRY)
  return kind


def get(name: str) -> TaskKind:
  """The kind registered as `name`."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise UnknownKind(f"config.task.kind: {name!r} is not one of {KINDS}") from None


def kind_of(task: Any) -> TaskKind:
  """The kind of a task config: `config.task`, or the "task" of a run's saved config.json."""
  return get(task["kind"])


for _kind in (CLASSIFICATION, REGRESSION, TOKEN_CLASSIFICATION, RELATION_CLASSIFICATION,
              QUESTION_ANSWERING, MASKED_LM):
  register(_kind)
