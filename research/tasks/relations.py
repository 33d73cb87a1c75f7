"""Relation classification: a sentence with two marked entities -> softmax over relations.

The relation is read from [CLS] or from the entities (`REPRESENTATIONS`,
bert.BertForRelationClassification); the entities' token spans come with every example
(`encode_relations`). Entity markers (`task.entity_markers`) are new tokens: the
tokenizer gains them and the embedding matrix grows to hold them.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from research import metrics, resampling
from research.data import tokenization
from research.data.encoded import EncodedSplit, check_fields, check_texts, class_ids, row_number
from research.errors import DataError
from research.tasks.base import TaskKind

# What a relation classifier reads (bert.BertForRelationClassification).
REPRESENTATIONS = ("cls", "entity_start", "entity_mean")


ENTITY_TAGS = ("<e1>", "</e1>", "<e2>", "</e2>")  # inline, as in SemEval-2010 Task 8
_TAG = re.compile(r"</?e[12]>")


def strip_entity_tags(text: str) -> tuple[str, tuple[int, int, int, int]]:
  """'a <e1>b</e1> c <e2>d</e2>' -> ('a b c d', character spans (2, 3, 6, 7)): the text
  without its four tags, and where each entity starts and ends (exclusive) in it. Raises
  ValueError unless each tag is there once, each entity opened before it is closed, and the
  two entities do not overlap."""
  pieces, found, clean_length, last = [], {}, 0, 0
  for match in _TAG.finditer(text):
    pieces.append(text[last:match.start()])
    clean_length += match.start() - last
    last = match.end()
    if match.group() in found:
      raise ValueError(f"the tag {match.group()} appears more than once")
    found[match.group()] = clean_length
  pieces.append(text[last:])
  missing = [tag for tag in ENTITY_TAGS if tag not in found]
  if missing:
    raise ValueError(f"no {' '.join(missing)} tag (entities are marked <e1>…</e1> and "
                     "<e2>…</e2>, or given by task.entity_spans)")
  spans = tuple(found[tag] for tag in ENTITY_TAGS)
  _check_char_spans(spans, len("".join(pieces)))
  return "".join(pieces), spans


def _check_char_spans(spans, length: int) -> None:
  s1, e1, s2, e2 = spans
  if not (0 <= s1 < e1 <= length and 0 <= s2 < e2 <= length):
    raise ValueError(f"entity spans {tuple(spans)} are empty or outside the text of "
                     f"{length} characters")
  if s1 < e2 and s2 < e1:
    raise ValueError(f"the two entities overlap (characters {s1}-{e1} and {s2}-{e2})")




def _token_span(offsets, start: int, end: int) -> tuple[int, int] | None:
  """First and one-past-last token whose characters overlap [start, end)."""
  inside = [t for t, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
  return (inside[0], inside[-1] + 1) if inside else None

def encode_relations(dataset, tokenizer, task_cfg, max_length: int, where: str,
                     labelled: bool = True) -> EncodedSplit:
  """Tokenises sentences with two entities: marked inline (`<e1>…</e1>`, `<e2>…</e2>`) or
  given as character spans in the four fields `task.entity_spans` (start, exclusive end).

  The text without tags is tokenised on its own, and the marker tokens (`task.entity_markers`,
  none if empty) are inserted around each entity's tokens, so markers are single tokens and
  the words keep their usual sub-words. When a sentence is longer than `max_length`, the
  window kept is centred on the stretch from the first entity's start marker to the last
  one's end marker (the rest split evenly before and after, as far as the text allows): both
  entities and their markers are always whole. An entity stretch that alone exceeds
  `max_length` is an error naming the row.
  """
  fields = tuple(task_cfg.text_fields)
  span_fields = tuple(task_cfg.entity_spans)
  if len(fields) != 1:
    raise DataError(f"{where}: a relation task reads one text field, got {fields}")
  check_fields(dataset, fields + span_fields
               + ((task_cfg.label_field,) if labelled else ()), where)
  check_texts(dataset, fields, False, where)
  markers = tuple(task_cfg.entity_markers)
  marker_ids = tokenizer.convert_tokens_to_ids(list(markers)) if markers else []
  if markers and tokenizer.unk_token_id in marker_ids:
    raise DataError(f"the tokenizer has no token for the entity markers {markers}: "
                    "add them with research.data.tokenization.add_marker_tokens")
  texts, char_spans = [], []
  columns = {name: dataset[name] for name in span_fields}
  for row, text in enumerate(dataset[fields[0]]):
    try:
      if span_fields:
        spans = tuple(columns[name][row] for name in span_fields)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in spans):
          raise ValueError(f"the fields {span_fields} hold {spans}, not character offsets")
        _check_char_spans(spans, len(text))
      else:
        text, spans = strip_entity_tags(text)
    except ValueError as e:
      raise DataError(f"{where}: row {row_number(where, row)}: {e}") from None
    texts.append(text)
    char_spans.append(spans)
  encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
  before, after = tokenization.special_affixes(tokenizer)
  budget = max_length - len(before) - len(after)
  n = len(texts)
  input_ids = np.zeros((n, max_length), np.int32)
  lengths = np.zeros(n, np.int32)
  entity_spans = np.zeros((n, 4), np.int32)
  windowed = 0
  for i in range(n):
    ids, offsets = encoded["input_ids"][i], encoded["offset_mapping"][i]
    token_spans = [_token_span(offsets, *char_spans[i][k:k + 2]) for k in (0, 2)]
    if None in token_spans:
      raise DataError(f"{where}: row {row_number(where, i)}: entity {token_spans.index(None) + 1} "
                      f"covers no token of {texts[i]!r}")
    # Insertions (token position, closing first at a tie, marker id), applied back to front.
    (a1, b1), (a2, b2) = token_spans
    inserts = sorted(zip((a1, b1, a2, b2), (1, 0, 1, 0), marker_ids))
    ids = list(ids)
    for position, _, marker in reversed(inserts):
      ids.insert(position, marker)
    shift = lambda t: t + sum(p <= t for p, _, _ in inserts)  # noqa: E731
    spans = [shift(a1), shift(b1 - 1) + 1, shift(a2), shift(b2 - 1) + 1]
    m = 1 if markers else 0
    if len(ids) > budget:
      low, high = min(spans[0], spans[2]) - m, max(spans[1], spans[3]) + m
      if high - low > budget:
        raise DataError(f"{where}: row {row_number(where, i)}: the entities and the text "
                        f"between them take {high - low} tokens, more than "
                        f"data.max_length={max_length} holds")
      start = min(max(low - (budget - (high - low)) // 2, 0), len(ids) - budget)
      ids = ids[start:start + budget]
      spans = [s - start for s in spans]
      windowed += 1
    full = before + ids + after
    input_ids[i, :len(full)] = full
    lengths[i] = len(full)
    entity_spans[i] = [s + len(before) for s in spans]
  if windowed:
    logging.info("%s: %d sentences longer than max_length %d kept a window around their "
                 "entities", where, windowed, max_length)
  if labelled:
    labels = class_ids(list(dataset[task_cfg.label_field]), tuple(task_cfg.label_names), where)
  else:
    labels = np.zeros(n, np.int32)
  return EncodedSplit(input_ids, np.zeros((n, max_length), np.int8), lengths, labels,
                      entity_spans=entity_spans)


class RelationClassification(TaskKind):
  """A classifier of sentences (argmax, cross-entropy, probabilities) that reads two entities;
  SemEval's official relation F1 beside accuracy."""

  name = "relation_classification"
  distills = True  # the base class's KL over the relations
  metrics = ("relation_f1", "accuracy", "macro_f1")
  compare_units = "examples"

  def validate(self, task, config, check):
    super().validate(task, config, check)
    check(len(task.text_fields) == 1, "task.text_fields",
          f"a relation task reads one text, got {tuple(task.text_fields)}")
    check(task.representation in REPRESENTATIONS, "task.representation",
          f"{task.representation!r} is not one of {REPRESENTATIONS}")
    check(len(task.entity_markers) in (0, 4) and len(set(task.entity_markers))
          == len(task.entity_markers), "task.entity_markers",
          f"needs four distinct strings or none, got {tuple(task.entity_markers)}")
    check(len(task.entity_spans) in (0, 4), "task.entity_spans",
          f"needs the four fields of the entities' character offsets or none (inline tags), "
          f"got {tuple(task.entity_spans)}")
    check(not task.no_relation_label or task.no_relation_label in task.label_names,
          "task.no_relation_label",
          f"{task.no_relation_label!r} is not one of task.label_names ('' = none)")

  def entity_markers(self, task):
    return tuple(task.entity_markers)

  def encode(self, dataset, tokenizer, task, max_length, where, labelled=True):
    return encode_relations(dataset, tokenizer, task, max_length, where, labelled)

  def build_model(self, config, num_labels, *, dtype, param_dtype, classifier_dropout,
                  task=None):
    """Reads what `task.representation` says (None: [CLS]); an entity's start is read at the
    marker before its first token when the task has `entity_markers` (start_offset 1), else at
    that token."""
    from research.models import families
    return families.model_class(config, "relation")(
        config=config, num_labels=num_labels, classifier_dropout=classifier_dropout,
        dtype=dtype, param_dtype=param_dtype,
        representation=task.representation if task is not None else "cls",
        start_offset=1 if task is not None and task.entity_markers else 0)

  def score(self, task, split, outputs, loss):
    names = tuple(task.label_names)
    scalars: dict[str, float] = {"loss": loss}
    predicted = self.predictions(split, outputs)
    report = metrics.relation_scores(split.labels, predicted, names, task.no_relation_label)
    by_class = metrics.classification_report(split.labels, predicted, names)
    values = {"relation_f1": report["official"]["f1-score"],
              "accuracy": metrics.accuracy(split.labels, predicted),
              "macro_f1": by_class["macro avg"]["f1-score"]}
    scalars.update({name: values[name] for name in task.metrics})
    return scalars, {"relations": report, "labels": by_class}

  def scorers(self, tasks, gold, predictions, examples):
    task = tasks[0]

    def relation_f1(c):
      return metrics.relation_f1_of_confusion(c, task["label_names"],
                                              task.get("no_relation_label", "Other"))
    return resampling.confusion_scorers(task, gold, predictions, {
        "relation_f1": relation_f1, "accuracy": metrics.accuracy_of_confusion,
        "macro_f1": metrics.macro_f1_of_confusion})

  def hf_architecture(self, task, model_type="bert"):
    """One that reads [CLS] is a plain `*ForSequenceClassification` (with a longer vocabulary
    when it has markers); one that reads the entities is exported as its bare encoder
    (`*Model`) plus the head's weights (`hf_io.export`): transformers has no such head."""
    from research.models import hf_io
    return hf_io.architecture_name(model_type, "ForSequenceClassification"
                                   if task.representation == "cls" else "Model")

  def export_extra(self, task):
    """A head that reads the entities: what it reads and where its weights are."""
    if task.representation == "cls":
      return None
    return {"relation_head": {"representation": task.representation,
                              "entity_markers": list(task.entity_markers),
                              "weights": "classifier.weight, classifier.bias"}}


RELATION_CLASSIFICATION = RelationClassification()
