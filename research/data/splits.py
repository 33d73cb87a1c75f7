"""A run's splits: read as its task kind reads them, a validation split held out of train when
asked, encoded by the kind, and recorded.

`data.validation_from_train` carves a fixed validation split out of train (stratified by label
where the kind says so), for datasets with only train and test. A run records each split's
origin, size and fingerprint (`data_record`, saved as data.json), so a resumed run refuses
other data.

The task kind is passed in (`kind`, a research.tasks.TaskKind): this package imports no kind.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import datasets
import numpy as np

from research.data.encoded import EncodedSplit, SplitRows, check_fields, fingerprint
from research.data.sources import (HOLDOUT_SEED, HOLDOUT_SPLIT, load_split, resolve_source,
                                   split_file)
from research.errors import DataError


def data_record(data_cfg, splits: dict[str, EncodedSplit]) -> dict[str, Any]:
  """What a run trains and evaluates on: per split, where it was read, how many examples, and
  their fingerprint (saved as `<workdir>/data.json`; a resumed run must find the same)."""
  source = resolve_source(data_cfg)
  amount = data_cfg.get("validation_from_train", 0)
  train_split = data_cfg.get("train_split", "train")

  def origin(name: str) -> str:
    if amount and name == HOLDOUT_SPLIT:
      return (f"{split_file(source, train_split)} (validation_from_train={amount}, seed "
              f"{HOLDOUT_SEED})")
    return split_file(source, name)

  return {name: {"file": origin(name), "examples": len(split),
                 "fingerprint": fingerprint(split)} for name, split in splits.items()}


def data_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """What differs between two `data_record`s, one line each."""
  changes = []
  for name in sorted(set(saved) | set(current)):
    old, new = saved.get(name, {}), current.get(name, {})
    for key in ("file", "examples", "fingerprint"):
      if old.get(key) != new.get(key):
        changes.append(f"{name} {key}: {old.get(key)} -> {new.get(key)}")
  return changes


def holdout_size(amount: float, n: int) -> int:
  """`data.validation_from_train` as a number of rows of an `n`-row train split: a fraction
  when below 1, else a count."""
  size = round(amount * n) if amount < 1 else int(amount)
  if amount < 0 or (amount >= 1 and amount != int(amount)) or not 0 < size < n:
    raise DataError(f"data.validation_from_train={amount} must be a fraction in (0, 1) or a "
                    f"whole number of rows, leaving rows of the {n:,} to train on")
  return size


def holdout_indices(labels: list, size: int, stratify: bool) -> np.ndarray:
  """Sorted row indices of a `size`-row validation split drawn from `len(labels)` rows with
  the fixed `HOLDOUT_SEED`; `stratify` keeps each label's share (largest remainders decide the
  rounding), so a rare class is neither lost nor inflated."""
  order = np.random.default_rng(HOLDOUT_SEED).permutation(len(labels))
  if not stratify:
    return np.sort(order[:size])
  groups: dict[str, list[int]] = {}
  for i in order:
    groups.setdefault(repr(labels[i]), []).append(int(i))
  keys = sorted(groups)
  exact = {k: size * len(groups[k]) / len(labels) for k in keys}
  quota = {k: math.floor(exact[k]) for k in keys}
  for k in sorted(keys, key=lambda k: (quota[k] - exact[k], k))[:size - sum(quota.values())]:
    quota[k] += 1
  return np.sort(np.concatenate([np.asarray(groups[k][:quota[k]], np.int64) for k in keys]))


def read_split(data_cfg, task_cfg, kind, source: str, split: str) -> tuple[datasets.Dataset, str]:
  """The rows of `split` as the task kind `kind` reads them (CoNLL fields, the field to hold
  rows out by), and how to name them in messages; with `data.validation_from_train` the train
  split loses the rows that make up the 'validation' split."""
  amount = data_cfg.get("validation_from_train", 0)
  train_split = data_cfg.get("train_split", "train")
  conll = kind.conll_fields(task_cfg)
  if not amount or split not in (train_split, HOLDOUT_SPLIT):
    return load_split(source, data_cfg.subset, split, conll), f"{source} [{split}]"
  rows = load_split(source, data_cfg.subset, train_split, conll)
  # Stratified by label for classification; for the other kinds only the number of rows counts.
  field = kind.holdout_field(task_cfg)
  check_fields(rows, (field,), f"{source} [{train_split}]")
  held = holdout_indices(rows[field], holdout_size(amount, len(rows)),
                         stratify=kind.stratify_holdout)
  if split == HOLDOUT_SPLIT:
    return rows.select(held), SplitRows(f"{source} [{train_split}, the rows held out for "
                                        f"{split}]", held)
  kept = np.setdiff1d(np.arange(len(rows)), held)
  return rows.select(kept), SplitRows(f"{source} [{train_split}, without the rows held out]",
                                      kept)


def load_encoded(data_cfg, task_cfg, kind, tokenizer, split: str, limit: int = 0
                 ) -> EncodedSplit:
  """Reads, optionally truncates to the first `limit` examples, and tokenises one split with
  the encoder of the task kind `kind` (`TaskKind.encode`; `research.tasks.kind_of(task_cfg)`)."""
  start = time.time()
  source = resolve_source(data_cfg)
  dataset, where = read_split(data_cfg, task_cfg, kind, source, split)
  if limit:
    dataset = dataset.select(range(min(limit, len(dataset))))
  encoded = kind.encode(dataset, tokenizer, task_cfg, data_cfg.max_length, where)
  if split != data_cfg.get("train_split", "train"):
    kind.check_scorable(task_cfg, encoded, where)
  truncated = int(np.sum(encoded.lengths >= data_cfg.max_length))
  logging.info("%s: %d examples, mean %.1f tokens, %d at max_length %d (%.1fs)", where,
               len(encoded), encoded.lengths.mean(), truncated, data_cfg.max_length,
               time.time() - start)
  return encoded
