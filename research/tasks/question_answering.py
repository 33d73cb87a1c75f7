"""Extractive question answering (SQuAD 1.1 and 2.0).

A question and a context window -> start and end logits per token (softmax over the window's
real tokens); a long context is several windows, post-processed into one answer per question
(research/squad.py). SQuAD 2.0 (`task.version_2_with_negative`) adds unanswerable questions,
predicted as ''.
"""

from __future__ import annotations

import numpy as np

from research import resampling, squad
from research.tasks.base import TaskKind


def answers(task, split, outputs: np.ndarray):
  """(answer per question id, n-best lists, null odds) from the windows' start and end logits
  (`squad.postprocess`)."""
  return squad.postprocess(split.examples, split.feature_example, split.offsets,
                           outputs[..., 0], outputs[..., 1], n_best=task.n_best,
                           max_answer_length=task.max_answer_length,
                           version_2=task.version_2_with_negative,
                           null_score_diff_threshold=task.null_score_diff_threshold)


class QuestionAnswering(TaskKind):
  """Windows in, one answer per question out: the official SQuAD scores."""

  name = "question_answering"
  metrics = ("f1", "exact", "best_f1", "best_exact", "HasAns_f1", "NoAns_f1")
  compare_units = "questions"
  hf_suffix = "ForQuestionAnswering"

  def validate(self, task, config, check):
    check(len(task.text_fields) == 2, "task.text_fields",
          f"needs the question and the context fields, got {tuple(task.text_fields)}")
    check(0 < task.doc_stride < config.data.max_length // 2, "task.doc_stride",
          f"{task.doc_stride} must be positive and below half of data.max_length "
          f"{config.data.max_length}")
    check(task.max_answer_length > 0 and task.n_best > 0, "task.max_answer_length",
          "max_answer_length and n_best must be positive")

  def encode(self, dataset, tokenizer, task, max_length, where, labelled=True):
    from research.data import input_pipeline
    return input_pipeline.encode_questions(dataset, tokenizer, task, max_length, where,
                                           labelled)

  def check_scorable(self, task, split, where):
    """A SQuAD 1.1 evaluation (`task.version_2_with_negative=False`) scores every question
    against its answers, as the official script does: a question without one would score 0
    against nothing, so a split that holds such questions is refused."""
    if task.version_2_with_negative:
      return
    unanswerable = [e["id"] for e in split.examples if not e["answers"]]
    if unanswerable:
      from research.data import input_pipeline
      shown = ", ".join(repr(i) for i in unanswerable[:3]) + (", ..." if len(unanswerable) > 3
                                                              else "")
      raise input_pipeline.DataError(
          f"{where}: {len(unanswerable)} of the {len(split.examples)} questions have "
          f"no answer (ids {shown}); task.version_2_with_negative=False (SQuAD 1.1) "
          "would score each 0: set task.version_2_with_negative=True "
          "(configs/squad_v2.py) to score them as unanswerable, or leave them out")

  def num_outputs(self, label_names):
    return 2  # start and end

  def build_model(self, config, num_labels, *, dtype, param_dtype, classifier_dropout,
                  representation="cls", start_offset=0):
    from research.models import bert
    return bert.BertForQuestionAnswering(config=config, dtype=dtype, param_dtype=param_dtype)

  def losses(self, logits, labels, example_mask, attention_mask):
    """logits [B, S, 2], labels [B, 2]: (start, end). The softmax over start (end) positions
    runs over the window's real tokens only (`attention_mask`), so the padding of a batch
    changes nothing."""
    import jax.numpy as jnp
    import optax
    real = (attention_mask > 0)[..., None]
    logits = jnp.where(real, logits, jnp.finfo(jnp.float32).min)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.swapaxes(1, 2), labels)
    losses = losses.mean(-1)  # (start + end) / 2, as BertForQuestionAnswering
    return losses, example_mask

  def score(self, task, split, outputs, loss):
    scalars: dict[str, float] = {"loss": loss}
    predicted, nbest, null_odds = answers(task, split, outputs)
    gold = {e["id"]: e["answers"] for e in split.examples}
    # The null odds as the official v2 script's na_probs, thresholded where the predictions
    # were (a no-op on them); it adds the best threshold on this split.
    scores = squad.squad_scores(predicted, gold, null_odds or None,
                                threshold=task.null_score_diff_threshold)
    scalars.update({name: scores[name] for name in task.metrics if name in scores})
    return scalars, {"scores": scores, "predictions": predicted, "nbest": nbest,
                     "null_odds": null_odds}

  def per_example(self, task, split, outputs, report):
    """Each question's id, gold answers, answer ('' for none) and null odds."""
    ids = [e["id"] for e in split.examples]
    record = {"kind": task.kind, "id": ids, "gold": [list(e["answers"]) for e in split.examples],
              "prediction": [report["predictions"][i] for i in ids]}
    if report["null_odds"]:
      record["null_odds"] = [report["null_odds"][i] for i in ids]
    return record

  def scorers(self, tasks, gold, predictions, examples):
    """Per question: its exact match and F1 as research.squad scores them (thresholded on the
    null odds as each system's evaluation did, at its task's threshold), for all questions
    and the (un)answerable ones."""
    ids = examples[0]["id"]
    null_odds = [e.get("null_odds") for e in examples]
    gold_answers = dict(zip(ids, gold))
    rows = []
    for task, predicted, odds in zip(tasks, predictions, null_odds):
      has_answer, raw_exact, raw_f1 = squad.raw_scores(dict(zip(ids, predicted)), gold_answers)
      probs = dict(zip(ids, odds)) if odds is not None else None
      threshold = task.get("null_score_diff_threshold", 0.0)
      exact, f1 = (squad.thresholded(raw, has_answer, probs, threshold)
                   for raw in (raw_exact, raw_f1))
      for qid in ids:
        has = float(has_answer[qid])
        rows.append([exact[qid], f1[qid], 1.0, has * exact[qid], has * f1[qid], has,
                     (1 - has) * exact[qid], (1 - has) * f1[qid], 1 - has])
    table = np.asarray(rows, np.float64)

    def mean(column, of):  # 0 for a resample without such questions
      return lambda t: np.divide(t[:, column], t[:, of], out=np.zeros(len(t)),
                                 where=t[:, of] > 0)
    return {"exact": resampling.sum_scorer(table, mean(0, 2)),
            "f1": resampling.sum_scorer(table, mean(1, 2)),
            "HasAns_exact": resampling.sum_scorer(table, mean(3, 5)),
            "HasAns_f1": resampling.sum_scorer(table, mean(4, 5)),
            "NoAns_exact": resampling.sum_scorer(table, mean(6, 8)),
            "NoAns_f1": resampling.sum_scorer(table, mean(7, 8))}

  def example_of_output(self, split, row):
    """A window's question."""
    return split.feature_example[row]

  def prediction_records(self, task, split, outputs, count):
    """The answer, its score and probability (None with no answer), and with SQuAD 2.0 the
    null odds (> null_score_diff_threshold: no answer)."""
    predicted, nbest, null_odds = answers(task, split, outputs)
    records = []
    for i in range(count):
      key = split.examples[i]["id"]
      best = next((c for c in nbest[key] if c["text"]), None)
      record = dict(answer=predicted[key], score=best["score"] if best else None,
                    probability=best["probability"] if best else None)
      if task.version_2_with_negative:
        record["null_odds"] = null_odds[key]
      records.append(record)
    return records


QUESTION_ANSWERING = QuestionAnswering()
