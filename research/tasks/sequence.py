"""Whole-sequence tasks: one text or a pair in, one output per example.

  classification  [CLS] -> softmax over labels, cross-entropy
  regression      [CLS] -> one score, mean squared error (never clipped)

(The head's layout is the checkpoint family's, as in transformers: BERT's pooled [CLS],
RoBERTa's and ELECTRA's dense + out_proj on <s>.)
"""

from __future__ import annotations

import numpy as np

from research import metrics, resampling
from research.data.encoded import EncodedSplit, class_ids, encode_sequences, label_scores
from research.tasks.base import TaskKind


class Classification(TaskKind):
  """The base class's defaults, plus classification's encoder, metrics and compare scorers."""

  name = "classification"
  metrics = ("accuracy", "f1", "matthews_corr")
  distills = True
  stratify_holdout = True
  compare_units = "examples"

  def encode(self, dataset, tokenizer, task, max_length, where, labelled=True):
    """One text or a pair per row, its label a name or an id."""
    input_ids, token_types, lengths, raw_labels, _, _ = encode_sequences(
        dataset, tokenizer, task, max_length, where, labelled, words=False, owner=type(self))
    return EncodedSplit(input_ids, token_types, lengths,
                        class_ids(raw_labels, tuple(task.label_names), where))

  def score(self, task, split, outputs, loss):
    scalars: dict[str, float] = {"loss": loss}
    predicted = self.predictions(split, outputs)
    for name in task.metrics:
      scalars[name] = metrics.METRICS[name](split.labels, predicted)
    report = metrics.classification_report(split.labels, predicted, tuple(task.label_names))
    scalars["macro_f1"] = report["macro avg"]["f1-score"]
    return scalars, report

  def scorers(self, tasks, gold, predictions, examples):
    return resampling.confusion_scorers(tasks[0], gold, predictions, {
        "accuracy": metrics.accuracy_of_confusion, "f1": metrics.f1_of_confusion,
        "matthews_corr": metrics.matthews_of_confusion,
        "macro_f1": metrics.macro_f1_of_confusion})


class Regression(TaskKind):
  """One score per example: no label names, a squared-error loss, correlations."""

  name = "regression"
  metrics = ("pearson", "spearman")
  compare_units = "examples"
  uncomparable = {**TaskKind.uncomparable,
                  "mse": "not a task metric: compare pearson or spearman"}

  def validate(self, task, config, check):
    check(not task.label_names, "task.label_names", "must be empty for regression")

  def num_outputs(self, label_names):
    return 1

  def encode(self, dataset, tokenizer, task, max_length, where, labelled=True):
    """One text or a pair per row, its label a finite number."""
    input_ids, token_types, lengths, raw_labels, _, _ = encode_sequences(
        dataset, tokenizer, task, max_length, where, labelled, words=False, owner=type(self))
    return EncodedSplit(input_ids, token_types, lengths, label_scores(raw_labels, where))

  def losses(self, logits, labels, example_mask, attention_mask):
    import jax.numpy as jnp
    return jnp.square(logits[..., 0] - labels), example_mask

  distills = True

  def distill_losses(self, logits, teacher_logits, attention_mask, temperature):
    """The squared distance to the teacher's score (a score has no temperature)."""
    import jax.numpy as jnp
    del attention_mask, temperature
    return jnp.square(logits[..., 0] - teacher_logits[..., 0])

  def predictions(self, split, outputs):
    return outputs[:, 0]

  def score(self, task, split, outputs, loss):
    scalars: dict[str, float] = {"loss": loss}
    predicted = self.predictions(split, outputs)
    for name in task.metrics:
      scalars[name] = metrics.METRICS[name](split.labels, predicted)
    scalars["mse"] = float(np.mean(np.square(predicted - split.labels)))
    return scalars, {}

  def prediction_records(self, task, split, outputs, count):
    predicted = self.predictions(split, outputs)
    return [{"score": float(predicted[i])} for i in range(count)]

  def scorers(self, tasks, gold, predictions, examples):
    gold = np.tile(np.asarray(gold, np.float64), len(predictions))
    predicted = np.concatenate([np.asarray(p, np.float64) for p in predictions])
    # Spearman: a resample's ranks from the rank of each value among all (no sort per resample).
    gold_rank, gold_values = _dense_ranks(gold)
    predicted_rank, predicted_values = _dense_ranks(predicted)
    return {"pearson": resampling.rows_scorer(gold, predicted, metrics.pearson_of_rows),
            "spearman": resampling.rows_scorer(
                gold_rank, predicted_rank, lambda g, p: metrics.pearson_of_rows(
                    _resampled_ranks(g, gold_values), _resampled_ranks(p, predicted_values)))}


def _dense_ranks(values: np.ndarray) -> tuple[np.ndarray, int]:
  """Each value's index among the distinct values in ascending order, and their number."""
  distinct, index = np.unique(values, return_inverse=True)
  return index, len(distinct)


def _resampled_ranks(dense: np.ndarray, distinct: int) -> np.ndarray:
  """Average ranks (1..n, ties sharing their mean, as metrics.average_ranks) of each row of
  dense value indices ([rows, n]): the values below, plus half the ties and one."""
  counts = np.bincount((np.arange(len(dense))[:, None] * distinct + dense).ravel(),
                       minlength=len(dense) * distinct).reshape(len(dense), distinct)
  below = np.cumsum(counts, axis=1) - counts
  return (np.take_along_axis(below, dense, 1)
          + (np.take_along_axis(counts, dense, 1) + 1) / 2.0)


CLASSIFICATION = Classification()
REGRESSION = Regression()
