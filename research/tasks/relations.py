"""Relation classification: a sentence with two marked entities -> softmax over relations.

The relation is read from [CLS] or from the entities (`REPRESENTATIONS`,
bert.BertForRelationClassification); the entities' token spans come with every example
(input_pipeline.encode_relations). Entity markers (`task.entity_markers`) are new tokens: the
tokenizer gains them and the embedding matrix grows to hold them.
"""

from __future__ import annotations

from research import metrics, resampling
from research.tasks.base import TaskKind

# What a relation classifier reads (bert.BertForRelationClassification).
REPRESENTATIONS = ("cls", "entity_start", "entity_mean")


class RelationClassification(TaskKind):
  """A classifier of sentences (argmax, cross-entropy, probabilities) that reads two entities;
  SemEval's official relation F1 beside accuracy."""

  name = "relation_classification"
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
    from research.data import input_pipeline
    return input_pipeline.encode_relations(dataset, tokenizer, task, max_length, where,
                                           labelled)

  def build_model(self, config, num_labels, *, dtype, param_dtype, classifier_dropout,
                  representation="cls", start_offset=0):
    """Also takes what it reads (`representation`) and where an entity's start is read: at
    the marker before its first token (`start_offset=1`) or at that token (0, no markers)."""
    from research.models import bert
    return bert.BertForRelationClassification(
        config=config, num_labels=num_labels, classifier_dropout=classifier_dropout,
        dtype=dtype, param_dtype=param_dtype, representation=representation,
        start_offset=start_offset)

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
