"""Evaluation of whole splits: every example exactly once, metrics from all predictions at once.

`run_model` feeds length-sorted, padded batches through the compiled eval step and scatters the
outputs back to split order (padding rows dropped); `score` turns outputs into the task's
metrics (its task kind's), plus a per-class (or per-entity-type) precision/recall/F1 report.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from typing import Any, Callable

import jax
import numpy as np

from research import metrics, tasks, writers
from research.data.batches import eval_batches, prefetch
from research.data.encoded import EncodedSplit
from research.parallel import DataParallel


def run_model(eval_step: Callable, dp: DataParallel, params: Any,
              split: EncodedSplit, *, batch_size: int,
              buckets: tuple[int, ...]) -> tuple[np.ndarray, float]:
  """Outputs for every example ([N, labels] or [N, max_length, labels]) and the mean loss.

  Each process feeds its block of rows of every batch; the step gathers every row's output
  and index from all devices, so every process ends with all outputs.
  """
  pending = []
  batches = prefetch(
      eval_batches(split, batch_size, buckets, dp.process_rows(batch_size)),
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


def score(task_cfg, split: EncodedSplit, outputs: np.ndarray,
          loss: float) -> tuple[dict[str, float], dict[str, Any]]:
  """(scalar metrics incl. loss, report) for a split's outputs: its task kind's
  (`TaskKind.score`)."""
  return tasks.kind_of(task_cfg).score(task_cfg, split, outputs, loss)


def per_example(task_cfg, split: EncodedSplit, outputs: np.ndarray,
                report: dict[str, Any]) -> dict[str, Any] | None:
  """Each example's gold and prediction, in split order, from which any of the task's metrics
  can be recomputed on a resample of the examples (`research.compare`): label ids (relations
  too), regression scores, each sentence's word tag ids (a token task; the tag names are the
  config's), or each question's id, gold answers, answer ('' for none) and null odds. None for
  masked LM, which has no examples to resample (`TaskKind.per_example`)."""
  return tasks.kind_of(task_cfg).per_example(task_cfg, split, outputs, report)


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
