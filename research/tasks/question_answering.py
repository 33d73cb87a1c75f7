"""Extractive question answering (SQuAD 1.1 and 2.0).

A question and a context window -> start and end logits per token (softmax over the window's
real tokens); a long context is several windows, post-processed into one answer per question
(research/squad.py). SQuAD 2.0 (`task.version_2_with_negative`) adds unanswerable questions,
predicted as ''.
"""

from __future__ import annotations

import numpy as np

from research import resampling, squad
from research.data.encoded import EncodedSplit, check_fields, check_texts, row_number
from research.errors import DataError
from research.tasks.base import TaskKind


def answers(task, split, outputs: np.ndarray):
  """(answer per question id, n-best lists, null odds) from the windows' start and end logits
  (`squad.postprocess`)."""
  return squad.postprocess(split.examples, split.feature_example, split.offsets,
                           outputs[..., 0], outputs[..., 1], n_best=task.n_best,
                           max_answer_length=task.max_answer_length,
                           version_2=task.version_2_with_negative,
                           null_score_diff_threshold=task.null_score_diff_threshold)


def _gold_answers(value, context: str, where: str, row: int) -> tuple[list[str], list[int]]:
  """A row's `answers` ({text: [...], answer_start: [...]}, empty lists when unanswerable),
  each checked to point at its text in the context."""
  if not (isinstance(value, dict) and isinstance(value.get("text"), list)
          and isinstance(value.get("answer_start"), list)
          and len(value["text"]) == len(value["answer_start"])):
    raise DataError(f"{where}: row {row}: answers is {value!r}, not {{'text': [...], "
                    "'answer_start': [...]}} of equal lengths")
  for text, start in zip(value["text"], value["answer_start"]):
    if not isinstance(start, int) or context[start:start + len(text)] != text:
      raise DataError(f"{where}: row {row}: the answer {text!r} is not at character {start} "
                      "of its context")
  return list(value["text"]), list(value["answer_start"])


def _answer_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int]:
  """The first and last context token of characters [start, end) in a window, or (0, 0)
  (the [CLS] position: no answer here) when the window does not hold all of them."""
  context = np.flatnonzero(offsets[:, 0] >= 0)
  if not (offsets[context[0], 0] <= start and offsets[context[-1], 1] >= end):
    return 0, 0
  first = context[offsets[context, 1] > start][0]
  last = context[offsets[context, 0] < end][-1]
  return int(first), int(last)


def encode_questions(dataset, tokenizer, task_cfg, max_length: int, where: str,
                     labelled: bool = True) -> EncodedSplit:
  """Question + context pairs as windows of `max_length` tokens, as Hugging Face's run_qa does:
  the question first and whole, the context cut into windows that overlap by
  `task.doc_stride` tokens. Each window's label is the first gold answer's first and last
  token if the window holds all of it, else (0, 0), the [CLS] position (also for questions
  without an answer). `offsets` maps every context token back to its characters, so that an
  answer is always a span of the original context.
  """
  question_field, context_field = tuple(task_cfg.text_fields)
  fields = (question_field, context_field)
  check_fields(dataset, fields + ((task_cfg.label_field,) if labelled else ()), where)
  check_texts(dataset, fields, False, where)
  questions = [q.lstrip() for q in dataset[question_field]]  # leading blanks waste the window
  contexts = list(dataset[context_field])
  ids = (list(dataset["id"]) if "id" in dataset.column_names
         else [str(i) for i in range(len(dataset))])
  golds = ([_gold_answers(a, c, where, row_number(where, i)) for i, (a, c) in
            enumerate(zip(dataset[task_cfg.label_field], contexts))] if labelled
           else [([], [])] * len(dataset))
  room = max_length - task_cfg.doc_stride
  for i, question in enumerate(questions):
    if (len(tokenizer(question, add_special_tokens=False)["input_ids"])
        + tokenizer.num_special_tokens_to_add(pair=True) >= room):
      raise DataError(f"{where}: row {row_number(where, i)}: the question takes too much of "
                      f"data.max_length={max_length} to leave windows of context with "
                      f"task.doc_stride={task_cfg.doc_stride}")
  encoded = tokenizer(questions, contexts, truncation="only_second", max_length=max_length,
                      stride=task_cfg.doc_stride, return_overflowing_tokens=True,
                      return_offsets_mapping=True)
  n = len(encoded["input_ids"])
  input_ids = np.zeros((n, max_length), np.int32)
  token_types = np.zeros((n, max_length), np.int8)
  lengths = np.zeros(n, np.int32)
  offsets = np.full((n, max_length, 2), -1, np.int32)
  labels = np.zeros((n, 2), np.int32)
  feature_example = np.asarray(encoded["overflow_to_sample_mapping"], np.int32)
  for f in range(n):
    length = len(encoded["input_ids"][f])
    lengths[f] = length
    input_ids[f, :length] = encoded["input_ids"][f]
    token_types[f, :length] = encoded["token_type_ids"][f]
    in_context = np.asarray([s == 1 for s in encoded.sequence_ids(f)])
    offsets[f, :length][in_context] = np.asarray(encoded["offset_mapping"][f])[in_context]
    texts, starts = golds[feature_example[f]]
    if texts:
      labels[f] = _answer_tokens(offsets[f], starts[0], starts[0] + len(texts[0]))
  examples = [{"id": str(ids[i]), "context": contexts[i], "answers": golds[i][0]}
              for i in range(len(dataset))]
  return EncodedSplit(input_ids, token_types, lengths, labels, offsets=offsets,
                      feature_example=feature_example, examples=examples)


class QuestionAnswering(TaskKind):
  """Windows in, one answer per question out: the official SQuAD scores."""

  name = "question_answering"
  distills = True  # `distill_losses`: start and end distributions over each window
  metrics = ("f1", "exact", "best_f1", "best_exact", "HasAns_f1", "NoAns_f1")
  compare_units = "questions"
  uncomparable = {**TaskKind.uncomparable,
                  "best_exact": "its no-answer threshold is chosen on the evaluated split itself",
                  "best_f1": "its no-answer threshold is chosen on the evaluated split itself"}
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
    return encode_questions(dataset, tokenizer, task, max_length, where, labelled)

  def check_scorable(self, task, split, where):
    """A SQuAD 1.1 evaluation (`task.version_2_with_negative=False`) scores every question
    against its answers, as the official script does: a question without one would score 0
    against nothing, so a split that holds such questions is refused."""
    if task.version_2_with_negative:
      return
    unanswerable = [e["id"] for e in split.examples if not e["answers"]]
    if unanswerable:
      shown = ", ".join(repr(i) for i in unanswerable[:3]) + (", ..." if len(unanswerable) > 3
                                                              else "")
      raise DataError(
          f"{where}: {len(unanswerable)} of the {len(split.examples)} questions have "
          f"no answer (ids {shown}); task.version_2_with_negative=False (SQuAD 1.1) "
          "would score each 0: set task.version_2_with_negative=True "
          "(configs/squad_v2.py) to score them as unanswerable, or leave them out")

  def num_outputs(self, label_names):
    return 2  # start and end

  def build_model(self, config, num_labels, *, dtype, param_dtype, classifier_dropout,
                  task=None):
    from research.models import families
    return families.model_class(config, "question_answering")(config=config, dtype=dtype,
                                                              param_dtype=param_dtype)

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

  def distill_losses(self, logits, teacher_logits, attention_mask, temperature):
    """The KL of the teacher's start (end) distribution over the window's real tokens to the
    student's, softened by `temperature`, times T^2; start and end averaged, as the loss."""
    import jax
    import jax.numpy as jnp
    real = (attention_mask > 0)[..., None]
    lowest = jnp.finfo(jnp.float32).min

    def log_probs(x):
      return jax.nn.log_softmax(jnp.where(real, x / temperature, lowest), axis=1)

    teacher, student = log_probs(teacher_logits), log_probs(logits)
    kl = jnp.sum(jnp.where(real, jnp.exp(teacher) * (teacher - student), 0.0), axis=1)
    return kl.mean(-1) * temperature ** 2

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
