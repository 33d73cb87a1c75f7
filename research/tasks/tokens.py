"""Token classification (NER): every token -> softmax over tags.

Only the first sub-word of each word has a label; the others carry IGNORE and count nowhere.
A task without `task.label_names` takes the tags of its training split (sorted, "O" first),
and config.json keeps them for the resume, eval, predict and export.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from research import metrics, resampling
from research.data.encoded import (IGNORE, EncodedSplit, check_fields, class_ids,
                                   encode_sequences, row_number)
from research.errors import DataError
from research.tasks.base import TaskKind


def word_predictions(split, outputs: np.ndarray) -> list[np.ndarray]:
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


def word_probabilities(split, outputs: np.ndarray) -> list[list[float | None]]:
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


def position_losses(logits, labels, example_mask):
  """(losses, weights) of a label per position ([B, P]; masked LM's prediction slots too):
  positions labelled IGNORE, and the rows of padding, weigh 0."""
  import jax.numpy as jnp
  import optax
  weights = (labels != IGNORE) * example_mask[:, None]
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.where(labels == IGNORE, 0, labels))
  return losses, weights


def _tag_rows(dataset, task_cfg, where: str) -> Iterator[tuple[int, list]]:
  """(file row, tags) of each row of a token-task split whose tags are names."""
  check_fields(dataset, (task_cfg.label_field,), where)
  for index, tags in enumerate(dataset[task_cfg.label_field]):
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
      raise DataError(f"{where}: row {row_number(where, index)}: {task_cfg.label_field!r} is "
                      f"{tags!r}, not a tag name per word: task.label_names is empty, so the "
                      "names are read from the training split (or list them there)")
    yield row_number(where, index), tags


def training_tags(data_cfg, task_cfg, kind: TaskKind) -> tuple[str, ...]:
  """A token task's tag names when `task.label_names` is empty: every tag of the training
  split, sorted, "O" first. A tag of an evaluation split that the training split lacks is
  an error naming it (the model could never predict it)."""
  from research.data import sources, splits
  source = sources.resolve_source(data_cfg)
  train_split = data_cfg.get("train_split", "train")
  dataset, where = splits.read_split(data_cfg, task_cfg, kind, source, train_split)
  found = {tag for _, tags in _tag_rows(dataset, task_cfg, where) for tag in tags}
  names = tuple(sorted(found, key=lambda tag: (tag != "O", tag)))
  if len(names) < 2:
    raise DataError(f"{where}: the tags of the training split are {list(names)}: a token task "
                    "needs at least two (task.label_names is empty, so they are read there)")
  for split in data_cfg.get("eval_splits", ()):
    dataset, where = splits.read_split(data_cfg, task_cfg, kind, source, split)
    if data_cfg.get("eval_examples", 0):
      dataset = dataset.select(range(min(data_cfg.eval_examples, len(dataset))))
    for row, tags in _tag_rows(dataset, task_cfg, where):
      unknown = [tag for tag in tags if tag not in found]
      if unknown:
        raise DataError(f"{where}: row {row}: tag {unknown[0]!r} is not a tag of the training "
                        f"split {list(names)}, where the tags are read from (task.label_names "
                        "is empty): list every tag in task.label_names to evaluate it")
  return names


class TokenClassification(TaskKind):
  """A tag per word, read at its first sub-word; entity-level metrics (seqeval's)."""

  name = "token_classification"
  # Its soft loss is the base class's KL per position: on each word's first sub-word, where its
  # own loss is (`position_losses`' weights).
  distills = True
  metrics = ("entity_f1", "entity_precision", "entity_recall", "accuracy")
  reads_words = True
  compare_units = "sentences"
  hf_suffix = "ForTokenClassification"

  def validate(self, task, config, check):  # empty: the tags of the training split
    check(len(task.label_names) != 1, "task.label_names",
          f"needs at least two tags (or none: those of the training split), got "
          f"{tuple(task.label_names)}")

  def label_names_from_data(self, data_cfg, task):
    if task.label_names:
      return None
    return training_tags(data_cfg, task, self)

  def adopt_saved_tags(self, task, saved: dict[str, Any]) -> None:
    """A token task whose `task.label_names` is empty takes those of the run's saved config
    (the tags of its training split, read when it trained)."""
    if not task.label_names:
      task.label_names = tuple(saved.get("task", {}).get("label_names", ()))

  def encode(self, dataset, tokenizer, task, max_length, where, labelled=True):
    """A list of words per row and a tag per word: each word's tag sits on its first sub-word;
    every other position is IGNORE."""
    input_ids, token_types, lengths, raw_labels, encoded, dataset = encode_sequences(
        dataset, tokenizer, task, max_length, where, labelled, words=True, owner=type(self))
    n = len(input_ids)
    labels = np.full((n, max_length), IGNORE, np.int32)
    word_index = np.full((n, max_length), -1, np.int32)
    word_labels = np.empty(n, object)
    word_ids = list(encoded["word_ids"])
    sentences = dataset[task.text_fields[0]]
    for i in range(n):
      if not isinstance(raw_labels[i], list) or len(raw_labels[i]) != len(sentences[i]):
        raise DataError(f"{where}: row {row_number(where, i)}: {task.label_field!r} is "
                        f"{raw_labels[i]!r}, not one tag per word")
      word_labels[i] = tags = class_ids(list(raw_labels[i]), tuple(task.label_names), where,
                                        row=row_number(where, i))
      previous = -1
      for position, word in enumerate(word_ids[i]):
        if word >= 0 and word != previous:
          labels[i, position] = tags[word]
          word_index[i, position] = word
        previous = word
    return EncodedSplit(input_ids, token_types, lengths, labels, word_index, word_labels)

  def conll_fields(self, task):
    return task.text_fields[0], task.label_field

  def build_model(self, config, num_labels, *, dtype, param_dtype, classifier_dropout,
                  task=None):
    from research.models import families
    return families.model_class(config, "token")(
        config=config, num_labels=num_labels, classifier_dropout=classifier_dropout,
        dtype=dtype, param_dtype=param_dtype)

  def losses(self, logits, labels, example_mask, attention_mask):
    return position_losses(logits, labels, example_mask)

  def predictions(self, split, outputs):
    return word_predictions(split, outputs)

  def score(self, task, split, outputs, loss):
    names = tuple(task.label_names)
    scalars: dict[str, float] = {"loss": loss}
    predicted = self.predictions(split, outputs)
    gold = [[names[t] for t in tags] for tags in split.word_labels]
    guess = [[names[t] for t in tags] for tags in predicted]
    report = metrics.entity_scores(gold, guess)
    overall = report["overall"]
    values = {"entity_f1": overall["f1-score"], "entity_precision": overall["precision"],
              "entity_recall": overall["recall"],
              "accuracy": float(np.mean(np.concatenate(
                  [g == p for g, p in zip(split.word_labels, predicted)])))}
    scalars.update({name: values[name] for name in task.metrics})
    return scalars, report

  def per_example(self, task, split, outputs, report):
    predicted = self.predictions(split, outputs)
    return {"kind": task.kind, "gold": [tags.tolist() for tags in split.word_labels],
            "prediction": [tags.tolist() for tags in predicted]}

  def prediction_records(self, task, split, outputs, count):
    """Each word's tag and that tag's probability (None: a word cut off by max_length)."""
    names = tuple(task.label_names)
    predicted = self.predictions(split, outputs)
    probabilities = word_probabilities(split, outputs)
    return [dict(tags=[names[t] for t in predicted[i]],
                 probabilities=[None if p is None else round(p, 6) for p in probabilities[i]])
            for i in range(count)]

  def scorers(self, tasks, gold, predictions, examples):
    """Per sentence: entities found, predicted and gold (metrics.entities), words right,
    words."""
    names = tasks[0]["label_names"]
    rows = []
    for predicted in predictions:
      for g, p in zip(gold, predicted):
        gold_set = metrics.entities([names[t] for t in g])
        predicted_set = metrics.entities([names[t] for t in p])
        rows.append([len(gold_set & predicted_set), len(predicted_set), len(gold_set),
                     sum(a == b for a, b in zip(g, p)), len(g)])
    table = np.asarray(rows, np.float64)

    def part(i):
      return lambda t: metrics.precision_recall_f1(t[:, 0], t[:, 1], t[:, 2])[i]
    return {"entity_precision": resampling.sum_scorer(table, part(0)),
            "entity_recall": resampling.sum_scorer(table, part(1)),
            "entity_f1": resampling.sum_scorer(table, part(2)),
            "accuracy": resampling.sum_scorer(table, lambda t: t[:, 3] / t[:, 4])}


TOKEN_CLASSIFICATION = TokenClassification()
