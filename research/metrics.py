"""Evaluation metrics on host numpy arrays, computed over a whole split at once.

Each is checked against scikit-learn / scipy in tests/test_metrics.py. Corpus-level metrics
(F1, Matthews, Pearson) are never averaged over batches.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  return float(np.mean(labels == predictions))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[true, predicted] counts."""
  return np.bincount(labels * num_classes + predictions,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num, den):
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def precision_recall_f1(tp, n_pred, n_true):
  precision, recall = _safe_div(tp, n_pred), _safe_div(tp, n_true)
  return precision, recall, _safe_div(2 * precision * recall, precision + recall)


def f1_binary(labels: np.ndarray, predictions: np.ndarray, positive: int = 1) -> float:
  """F1 of the positive class (GLUE's MRPC and QQP F1)."""
  classes = int(max(labels.max(initial=0), predictions.max(initial=0), positive)) + 1
  return float(f1_of_confusion(confusion_matrix(labels, predictions, classes), positive))


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Multi-class Matthews correlation (Gorodkin's R_K); 0 when undefined, as in sklearn."""
  classes = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
  return float(matthews_of_confusion(confusion_matrix(labels, predictions, classes)))


# ---- The same metrics from [..., true, predicted] confusion matrices: any leading axes are a
# batch (research.compare scores thousands of resamples of a split at once).


def accuracy_of_confusion(c: np.ndarray) -> np.ndarray:
  return _safe_div(np.trace(c, axis1=-2, axis2=-1), c.sum((-2, -1)))


def f1_of_confusion(c: np.ndarray, positive: int = 1) -> np.ndarray:
  _, _, f1 = precision_recall_f1(c[..., positive, positive], c[..., :, positive].sum(-1),
                  c[..., positive, :].sum(-1))
  return f1


def matthews_of_confusion(c: np.ndarray) -> np.ndarray:
  c = np.asarray(c, np.float64)
  t, p, n = c.sum(-1), c.sum(-2), c.sum((-2, -1))
  correct = np.trace(c, axis1=-2, axis2=-1)
  cov_ytyp = correct * n - (t * p).sum(-1)
  cov_ypyp = n * n - (p * p).sum(-1)
  cov_ytyt = n * n - (t * t).sum(-1)
  return _safe_div(cov_ytyp, np.sqrt(cov_ytyt * cov_ypyp))


def macro_f1_of_confusion(c: np.ndarray) -> np.ndarray:
  """The mean F1 over every class (`classification_report`'s macro average)."""
  _, _, f1 = precision_recall_f1(np.diagonal(c, axis1=-2, axis2=-1), c.sum(-2), c.sum(-1))
  return f1.mean(-1)


def relation_f1_of_confusion(c: np.ndarray, label_names: Sequence[str],
                             no_relation: str = "Other") -> np.ndarray:
  """The official SemEval-2010 Task 8 macro-F1 (`relation_scores`' "official" F1)."""
  names = np.asarray([relation_name(n) for n in label_names], object)
  relations = sorted(set(names) - {no_relation})
  if not relations:
    return np.zeros(c.shape[:-2])
  diagonal = np.diagonal(c, axis1=-2, axis2=-1)
  f1s = []
  for relation in relations:
    member = names == relation
    _, _, f1 = precision_recall_f1(diagonal[..., member].sum(-1), c[..., :, member].sum((-2, -1)),
                    c[..., member, :].sum((-2, -1)))
    f1s.append(f1)
  return np.mean(f1s, axis=0)


class MetricError(ValueError):
  """A metric that cannot be computed from these labels and predictions (never reported as 0)."""


def nonfinite_rows(outputs: np.ndarray) -> np.ndarray:
  """The indices of the rows of `outputs` that hold a NaN or an infinity."""
  return np.flatnonzero(~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1))


def check_finite(outputs: np.ndarray, loss: float) -> None:
  """An evaluation's loss and model outputs are finite: a model whose outputs are NaN still
  scores an accuracy (every argmax is 0), which would be reported, and could pick the best."""
  rows = nonfinite_rows(outputs)
  problems = [f"the loss is {loss}"] if not np.isfinite(loss) else []
  if len(rows):
    problems.append(f"the model's outputs are NaN or infinite for {len(rows)} of {len(outputs)} "
                    f"examples (the first: row {rows[0] + 1})")
  if problems:
    raise MetricError(" and ".join(problems))


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Pearson's r; an error where it is undefined (NaN values, or a constant side): a 0 there
  would rank a broken model, and pick a best checkpoint."""
  labels, predictions = np.asarray(labels, np.float64), np.asarray(predictions, np.float64)
  if not (np.isfinite(labels).all() and np.isfinite(predictions).all()):
    raise MetricError("the correlation cannot be computed: the labels or predictions hold NaN "
                      "or infinite values")
  r = pearson_of_rows(labels, predictions)
  if np.isnan(r):
    side = "labels" if np.all(labels == labels[0]) else "predictions"
    raise MetricError(f"the correlation is undefined: all {side} are equal")
  return float(r)


def pearson_of_rows(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
  """Pearson's r of each row ([..., n] -> [...]); NaN where a side is constant."""
  labels, predictions = np.asarray(labels, np.float64), np.asarray(predictions, np.float64)
  x = labels - labels.mean(-1, keepdims=True)
  y = predictions - predictions.mean(-1, keepdims=True)
  denom = np.sqrt(np.sum(x * x, -1) * np.sum(y * y, -1))
  return np.divide(np.sum(x * y, -1), denom, out=np.full(denom.shape, np.nan), where=denom > 0)


def average_ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n along the last axis, ties sharing their mean rank (scipy.stats.rankdata's
  'average')."""
  x = np.asarray(x)
  order = np.argsort(x, axis=-1, kind="mergesort")
  sorted_x = np.take_along_axis(x, order, -1)
  n = x.shape[-1]
  starts_group = np.ones(x.shape, bool)  # the first of its run of equal values
  starts_group[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
  ends_group = np.ones(x.shape, bool)  # the last of its run
  ends_group[..., :-1] = starts_group[..., 1:]
  position = np.broadcast_to(np.arange(n), x.shape)
  start = np.maximum.accumulate(np.where(starts_group, position, 0), axis=-1)
  end = np.flip(np.minimum.accumulate(np.flip(np.where(ends_group, position, n), -1), -1), -1)
  ranks = np.empty(x.shape, np.float64)
  np.put_along_axis(ranks, order, (start + end + 2) / 2.0, -1)
  return ranks


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
  return pearson(average_ranks(np.asarray(labels)), average_ranks(np.asarray(predictions)))


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          label_names: Sequence[str]) -> dict[str, dict[str, float]]:
  """Per-class precision/recall/F1/support plus micro, macro and weighted averages.

  The layout of `sklearn.metrics.classification_report(..., output_dict=True)` with every class
  listed; the micro average (equal to accuracy for single-label data) is always reported.
  """
  k = len(label_names)
  c = confusion_matrix(labels, predictions, k)
  tp, n_pred, n_true = np.diag(c), c.sum(0), c.sum(1)
  precision, recall, f1 = precision_recall_f1(tp, n_pred, n_true)
  report = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1-score": float(f1[i]), "support": int(n_true[i])}
            for i, name in enumerate(label_names)}
  mp, mr, mf = precision_recall_f1(tp.sum(), n_pred.sum(), n_true.sum())
  total = int(n_true.sum())
  report["micro avg"] = {"precision": float(mp), "recall": float(mr), "f1-score": float(mf),
                         "support": total}
  report["macro avg"] = {"precision": float(precision.mean()), "recall": float(recall.mean()),
                         "f1-score": float(f1.mean()), "support": total}
  weights = _safe_div(n_true, total)
  report["weighted avg"] = {"precision": float(precision @ weights),
                            "recall": float(recall @ weights),
                            "f1-score": float(f1 @ weights), "support": total}
  return report


def format_report(report: dict[str, dict[str, float]], digits: int = 4) -> str:
  """Renders `classification_report` as the familiar fixed-width text table."""
  width = max(len("weighted avg"), *(len(name) for name in report))
  header = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
  lines = [header, ""]
  for name, row in report.items():
    if name == "micro avg":
      lines.append("")
    lines.append(f"{name:>{width}} {row['precision']:>9.{digits}f} {row['recall']:>9.{digits}f} "
                 f"{row['f1-score']:>9.{digits}f} {row['support']:>9}")
  return "\n".join(lines)


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """(type, first word, last word) of each entity in an IOB2 tag sequence.

  The CoNLL / seqeval (default mode) rules: an entity starts at B-X, or at I-X after O or after
  a tag of another type, and runs while I-X follows; a stray I-X is thus an entity of its own.
  """
  found, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ["O"]):
    prefix, _, tag_type = tag.partition("-")
    if start is not None and (prefix in ("B", "O") or tag_type != kind):
      found.add((kind, start, i - 1))
      start = None
    if prefix == "B" or (prefix == "I" and start is None):
      start, kind = i, tag_type
  return found


def entity_scores(gold: Sequence[Sequence[str]],
                  predicted: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
  """Entity-level precision/recall/F1, micro over all sentences ("overall") and per type."""
  gold_set, pred_set = set(), set()
  for sentence, (g, p) in enumerate(zip(gold, predicted)):
    gold_set |= {(sentence,) + e for e in entities(g)}
    pred_set |= {(sentence,) + e for e in entities(p)}
  types = sorted({e[1] for e in gold_set | pred_set})
  scores = {}
  for name in ["overall"] + types:
    keep = (lambda e: True) if name == "overall" else (lambda e, t=name: e[1] == t)
    g = {e for e in gold_set if keep(e)}
    p = {e for e in pred_set if keep(e)}
    precision, recall, f1 = precision_recall_f1(len(g & p), len(p), len(g))
    scores[name] = {"precision": float(precision), "recall": float(recall),
                    "f1-score": float(f1), "support": len(g)}
  return scores


_DIRECTION = re.compile(r"\((e1,e2|e2,e1)\)$")


def relation_name(label: str) -> str:
  """'Cause-Effect(e2,e1)' -> 'Cause-Effect'; a label without a direction is its own name."""
  return _DIRECTION.sub("", label)


def relation_scores(labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str],
                    no_relation: str = "Other") -> dict[str, dict[str, float]]:
  """The official SemEval-2010 Task 8 score ("(9+1)-way with directionality"), per relation
  and overall ("official": macro-F1 over the relations).

  Both directions of a relation pool into one class R: a prediction is correct for R only
  when relation and direction both match; R's precision divides by every prediction of R (a
  wrong direction counts there, as a miss), its recall by every gold example of R. The mean
  is over relations, not over directional labels, and `no_relation` ('Other') never enters
  it. Labels without a direction suffix make this the macro-F1 over the classes that are not
  `no_relation`.
  """
  names = [relation_name(n) for n in label_names]
  pooled = np.asarray(names, object)
  gold_relation, predicted_relation = pooled[labels], pooled[predictions]
  correct_label = labels == predictions
  scores = {}
  for relation in sorted(set(names) - {no_relation}):
    gold = gold_relation == relation
    precision, recall, f1 = precision_recall_f1(np.sum(correct_label & gold),
                                 np.sum(predicted_relation == relation), np.sum(gold))
    scores[relation] = {"precision": float(precision), "recall": float(recall),
                        "f1-score": float(f1), "support": int(gold.sum())}
  rows = list(scores.values())
  scores["official"] = {key: float(np.mean([r[key] for r in rows])) if rows else 0.0
                        for key in ("precision", "recall", "f1-score")}
  scores["official"]["support"] = int(sum(r["support"] for r in rows))
  return scores


# Corpus-level metrics by the names configs use: (labels, predictions) -> float.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_corr": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
