"""Scoring resamples: a metric of two stacked prediction sets, by index arrays.

research.compare's paired tests score thousands of resamples of the same examples; each task
kind (`TaskKind.scorers`) builds its metrics' scorers from these, so that a resample's
confusion matrices, or its sums of per-example counts, come from one bincount.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ROWS_PER_BATCH = 4_000_000  # resamples per batch x examples: bounds the memory of a batch

# A scorer takes index arrays [..., n] into the stacked examples of two systems (rows 0..n-1
# the first's, n..2n-1 the second's) and returns the metric of each index row [...].
Scorer = Callable[[np.ndarray], np.ndarray]


def flat_rows(rows: np.ndarray) -> np.ndarray:
  rows = np.asarray(rows)
  return rows.reshape(-1, rows.shape[-1]).astype(np.intp)


def _confusion_scorer(codes: np.ndarray, k: int,
                      of_confusion: Callable[[np.ndarray], np.ndarray]) -> Scorer:
  """A metric of the confusion matrix; `codes` holds each example's gold * k + prediction."""
  def score(rows):
    flat = flat_rows(rows)
    offsets = np.arange(len(flat))[:, None] * (k * k)
    counts = np.bincount((offsets + codes[flat]).ravel(), minlength=len(flat) * k * k)
    return of_confusion(counts.reshape(len(flat), k, k)).reshape(np.shape(rows)[:-1])
  return score


def sum_scorer(table: np.ndarray, of_totals: Callable[[np.ndarray], np.ndarray]) -> Scorer:
  """A metric of per-example counts summed over the examples (`table`: [2n, columns]): each
  index row's counts of every example (one bincount) times the table."""
  chunk = max(1, ROWS_PER_BATCH // len(table))

  def totals(flat):
    offsets = np.arange(len(flat))[:, None] * len(table)
    counts = np.bincount((offsets + flat).ravel(), minlength=len(flat) * len(table))
    return counts.reshape(len(flat), len(table)).astype(np.float64) @ table

  def score(rows):
    flat = flat_rows(rows)
    return of_totals(np.concatenate([totals(flat[i:i + chunk])
                                     for i in range(0, len(flat), chunk)])
                     ).reshape(np.shape(rows)[:-1])
  return score


def rows_scorer(gold: np.ndarray, predicted: np.ndarray,
                 of_rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Scorer:
  """A metric of the resampled (gold, prediction) rows themselves (correlations: ranks are
  not sums), in chunks of bounded memory."""
  chunk = max(1, ROWS_PER_BATCH // (2 * len(gold)))  # 2n: the most distinct values

  def score(rows):
    flat = flat_rows(rows)
    values = [of_rows(gold[flat[i:i + chunk]], predicted[flat[i:i + chunk]])
              for i in range(0, len(flat), chunk)]
    return np.concatenate(values).reshape(np.shape(rows)[:-1])
  return score


def confusion_scorers(task, gold, predictions, of_confusion) -> dict[str, Scorer]:
  k = len(task["label_names"])
  codes = np.concatenate([np.asarray(gold) * k + np.asarray(p) for p in predictions])
  return {name: _confusion_scorer(codes, k, of) for name, of in of_confusion.items()}
