"""Evaluation of whole splits: every example exactly once, metrics from all predictions at once.

`run_model` feeds length-sorted, padded batches through the compiled eval step and scatters the
outputs back to split order (padding rows dropped); `score` turns outputs into the task's
metrics, plus a per-class (or per-entity-type) precision/recall/F1 report.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from typing import Any, Callable

import jax
import numpy as np

from research import metrics, squad, writers
from research.data import input_pipeline
from research.parallel import DataParallel


def run_model(eval_step: Callable, dp: DataParallel, params: Any,
              split: input_pipeline.EncodedSplit, *, batch_size: int,
              buckets: tuple[int, ...]) -> tuple[np.ndarray, float]:
  """Outputs for every example ([N, labels] or [N, max_length, labels]) and the mean loss.

  Each process feeds its block of rows of every batch; the step gathers every row's output
  and index from all devices, so every process ends with all outputs.
  """
  pending = []
  batches = input_pipeline.prefetch(
      input_pipeline.eval_batches(split, batch_size, buckets, dp.process_rows(batch_size)),
      dp.put_eval_batch)
  with contextlib.closing(batches):
    for batch in batches:
      out = eval_step(params, batch)
      if dp.sync_each_step:
        jax.block_until_ready(out)
      pending.append(out)
  outputs, loss_sum, weight_sum = None, 0.0, 0.0
  for out in pending:
    out = dp.get_metrics(out)
    real = out["example_index"] >= 0
    indices, logits = out["example_index"][real], out["logits"][real]
    if outputs is None:
      shape = (len(split),) + ((split.input_ids.shape[1],) if logits.ndim == 3 else ())
      outputs = np.zeros(shape + logits.shape[-1:], np.float32)
    if logits.ndim == 3:  # tokens: the batch is padded to its bucket, not to max_length
      outputs[indices, :logits.shape[1]] = logits
    else:
      outputs[indices] = logits
    loss_sum += float(out["loss_sum"])
    weight_sum += float(out["weight_sum"])
  return outputs, loss_sum / max(weight_sum, 1.0)


def word_predictions(split: input_pipeline.EncodedSplit, outputs: np.ndarray) -> list[np.ndarray]:
  """Token-task outputs -> each sentence's tag id per word, read at its first sub-word.

  Words cut off by max_length get tag 0 (the first label name, "O" for CoNLL), so that their
  gold entities still count as missed.
  """
  predicted_tokens = outputs.argmax(-1)
  sentences = []
  for i in range(len(split)):
    words = np.zeros(len(split.word_labels[i]), np.int64)
    positions = np.flatnonzero(split.word_index[i] >= 0)
    words[split.word_index[i, positions]] = predicted_tokens[i, positions]
    sentences.append(words)
  return sentences


def word_probabilities(split: input_pipeline.EncodedSplit, outputs: np.ndarray
                       ) -> list[list[float | None]]:
  """Token-task outputs -> each sentence's probability per word of its predicted tag (the
  softmax at its first sub-word, where the tag is read); None for the words cut off by
  max_length, whose tag was not predicted."""
  logits = outputs - outputs.max(-1, keepdims=True)
  chosen = 1.0 / np.exp(logits).sum(-1)  # the argmax's softmax: exp(0) over the sum
  sentences = []
  for i in range(len(split)):
    words: list[float | None] = [None] * len(split.word_labels[i])
    for position in np.flatnonzero(split.word_index[i] >= 0):
      words[split.word_index[i, position]] = float(chosen[i, position])
    sentences.append(words)
  return sentences


def answers(task_cfg, split: input_pipeline.EncodedSplit, outputs: np.ndarray):
  """Question answering: (answer per question id, n-best lists, null odds) from the windows'
  start and end logits (`squad.postprocess`)."""
  return squad.postprocess(split.examples, split.feature_example, split.offsets,
                           outputs[..., 0], outputs[..., 1], n_best=task_cfg.n_best,
                           max_answer_length=task_cfg.max_answer_length,
                           version_2=task_cfg.version_2_with_negative,
                           null_score_diff_threshold=task_cfg.null_score_diff_threshold)


def predictions(kind: str, split: input_pipeline.EncodedSplit, outputs: np.ndarray):
  if kind in ("classification", "relation_classification"):
    return outputs.argmax(-1)
  if kind == "regression":
    return outputs[:, 0]
  return word_predictions(split, outputs)


def score(task_cfg, split: input_pipeline.EncodedSplit, outputs: np.ndarray,
          loss: float) -> tuple[dict[str, float], dict[str, Any]]:
  """(scalar metrics incl. loss, report) for a split's outputs."""
  kind, names = task_cfg.kind, tuple(task_cfg.label_names)
  scalars: dict[str, float] = {"loss": loss}
  if kind == "masked_lm":  # outputs: per row (correct predictions, targets)
    values = {"accuracy": float(outputs[:, 0].sum() / max(outputs[:, 1].sum(), 1.0)),
              "perplexity": float(np.exp(loss))}
    scalars.update({name: values[name] for name in task_cfg.metrics})
    return scalars, {}
  if kind == "question_answering":
    predicted, nbest, null_odds = answers(task_cfg, split, outputs)
    gold = {e["id"]: e["answers"] for e in split.examples}
    # The null odds as the official v2 script's na_probs, thresholded where the predictions
    # were (a no-op on them); it adds the best threshold on this split.
    scores = squad.squad_scores(predicted, gold, null_odds or None,
                                threshold=task_cfg.null_score_diff_threshold)
    scalars.update({name: scores[name] for name in task_cfg.metrics if name in scores})
    return scalars, {"scores": scores, "predictions": predicted, "nbest": nbest,
                     "null_odds": null_odds}
  predicted = predictions(kind, split, outputs)
  if kind == "token_classification":
    gold = [[names[t] for t in tags] for tags in split.word_labels]
    guess = [[names[t] for t in tags] for tags in predicted]
    report = metrics.entity_scores(gold, guess)
    overall = report["overall"]
    values = {"entity_f1": overall["f1-score"], "entity_precision": overall["precision"],
              "entity_recall": overall["recall"],
              "accuracy": float(np.mean(np.concatenate(
                  [g == p for g, p in zip(split.word_labels, predicted)])))}
    scalars.update({name: values[name] for name in task_cfg.metrics})
    return scalars, report
  if kind == "relation_classification":
    report = metrics.relation_scores(split.labels, predicted, names, task_cfg.no_relation_label)
    by_class = metrics.classification_report(split.labels, predicted, names)
    values = {"relation_f1": report["official"]["f1-score"],
              "accuracy": metrics.accuracy(split.labels, predicted),
              "macro_f1": by_class["macro avg"]["f1-score"]}
    scalars.update({name: values[name] for name in task_cfg.metrics})
    return scalars, {"relations": report, "labels": by_class}
  for name in task_cfg.metrics:
    scalars[name] = metrics.METRICS[name](split.labels, predicted)
  if kind == "regression":
    scalars["mse"] = float(np.mean(np.square(predicted - split.labels)))
    return scalars, {}
  report = metrics.classification_report(split.labels, predicted, names)
  scalars["macro_f1"] = report["macro avg"]["f1-score"]
  return scalars, report


def per_example(task_cfg, split: input_pipeline.EncodedSplit, outputs: np.ndarray,
                report: dict[str, Any]) -> dict[str, Any] | None:
  """Each example's gold and prediction, in split order, from which any of the task's metrics
  can be recomputed on a resample of the examples (`research.compare`): label ids (relations
  too), regression scores, each sentence's word tag ids (a token task; the tag names are the
  config's), or each question's id, gold answers, answer ('' for none) and null odds. None for
  masked LM, which has no examples to resample."""
  kind = task_cfg.kind
  if kind == "masked_lm":
    return None
  if kind == "question_answering":
    ids = [e["id"] for e in split.examples]
    record = {"kind": kind, "id": ids, "gold": [list(e["answers"]) for e in split.examples],
              "prediction": [report["predictions"][i] for i in ids]}
    if report["null_odds"]:
      record["null_odds"] = [report["null_odds"][i] for i in ids]
    return record
  predicted = predictions(kind, split, outputs)
  if kind == "token_classification":
    return {"kind": kind, "gold": [tags.tolist() for tags in split.word_labels],
            "prediction": [tags.tolist() for tags in predicted]}
  return {"kind": kind, "gold": split.labels.tolist(), "prediction": predicted.tolist()}


def report_text(report: dict[str, Any]) -> str | None:
  """The fixed-width table(s) of a per-class report (relations: per relation, then per
  label); None for the reports that are not tables (entities, question answering)."""
  if "relations" in report:
    return "\n\n".join(metrics.format_report(report[part]) for part in ("relations", "labels"))
  if report and "overall" not in report and "scores" not in report:
    return metrics.format_report(report)
  return None


def write_eval_file(path: pathlib.Path, step: int, scalars: dict[str, float],
                    report: dict[str, Any], examples: dict[str, Any] | None = None) -> None:
  """`eval/<split>_step<N>.json`: the metrics and the per-class (or per-type) report. For
  question answering, beside it in the official formats: `..._predictions.json` ({id:
  answer}), `..._nbest.json` and `..._null_odds.json` (the official v2 script's na_prob file).
  With `examples` (`per_example`), beside it `..._per_example.json`, in one compact line."""
  if examples is not None:
    writers.write_text(path.with_name(f"{path.stem}_per_example.json"),
                       json.dumps(examples, separators=(",", ":"), ensure_ascii=False) + "\n")
  if "predictions" in report:
    for part in ("predictions", "nbest", "null_odds"):
      writers.write_json(path.with_name(f"{path.stem}_{part}.json"), report[part])
    report = {"scores": report["scores"]}
  record = {"step": step, "metrics": scalars, "report": report}
  text = report_text(report)
  if text is not None:
    record["report_text"] = text
  writers.write_json(path, record)
