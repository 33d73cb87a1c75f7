"""The named datasets that configs read: each one's task kind, text fields, label names, official
metrics, and where its data lives (the hub dataset, the folder under $RESEARCH_DATA_DIR).

Plain data: it imports no JAX, flax or optax, so a config file can name a dataset without
loading them. What a task kind does with such a dataset is `research.tasks`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Everything a config needs to know about a named task."""

  kind: str
  text_fields: tuple[str, ...]      # one field, or two for sentence pairs
  label_names: tuple[str, ...]      # () for regression
  metrics: tuple[str, ...]          # official metrics; the first picks the best checkpoint
  hub_dataset: str                  # Hugging Face hub dataset used without RESEARCH_DATA_DIR
  hub_subset: str | None = None
  local_name: str | None = None     # folder under $RESEARCH_DATA_DIR
  label_field: str = "label"
  eval_splits: tuple[str, ...] = ("validation",)


def _glue(fields, labels, metrics, name, **kw):
  return TaskSpec(kind="regression" if not labels else "classification", text_fields=fields,
                  label_names=labels, metrics=metrics, hub_dataset="nyu-mll/glue",
                  hub_subset=name, local_name=name, **kw)


GLUE = {
    "cola": _glue(("sentence",), ("unacceptable", "acceptable"), ("matthews_corr",), "cola"),
    "sst2": _glue(("sentence",), ("negative", "positive"), ("accuracy",), "sst2"),
    "mrpc": _glue(("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                  ("f1", "accuracy"), "mrpc"),
    "stsb": _glue(("sentence1", "sentence2"), (), ("pearson", "spearman"), "stsb"),
    "qqp": _glue(("question1", "question2"), ("not_duplicate", "duplicate"),
                 ("accuracy", "f1"), "qqp"),
    "mnli": _glue(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                  ("accuracy",), "mnli",
                  eval_splits=("validation_matched", "validation_mismatched")),
    "qnli": _glue(("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
                  "qnli"),
    "rte": _glue(("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
                 "rte"),
    "wnli": _glue(("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
                  "wnli"),
}


# SemEval-2010 Task 8 in the order of the hub copy's ClassLabel (SemEvalWorkshop/
# sem_eval_2010_task_8, whose label field is "relation"): ids from there and names from the
# release's files both map to the same classes.
SEMEVAL2010_RELATIONS = tuple(
    f"{name}({a},{b})" for name in ("Cause-Effect", "Component-Whole", "Content-Container",
                                    "Entity-Destination", "Entity-Origin", "Instrument-Agency",
                                    "Member-Collection", "Message-Topic", "Product-Producer")
    for a, b in (("e1", "e2"), ("e2", "e1"))) + ("Other",)

CONLL2003_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

# Every registered task: GLUE plus the others the shared data holds.
TASKS = dict(GLUE, **{
    # Hugging Face's order of the tags; the hub copy stores their indices, ours the strings.
    "conll2003": TaskSpec(kind="token_classification", text_fields=("tokens",),
                          label_names=CONLL2003_TAGS, label_field="ner_tags",
                          metrics=("entity_f1", "entity_precision", "entity_recall",
                                   "accuracy"),
                          hub_dataset="eriktks/conll2003", local_name="conll2003",
                          eval_splits=("validation", "test")),
    # Inline <e1>/<e2> markers; no validation split in the release (configs/semeval2010_task8.py
    # holds one out of train). Not read from the hub by default: its copy names the label
    # field "relation" (see SEMEVAL2010_RELATIONS).
    "semeval2010_task8": TaskSpec(kind="relation_classification", text_fields=("sentence",),
                                  label_names=SEMEVAL2010_RELATIONS,
                                  metrics=("relation_f1", "accuracy"), hub_dataset="",
                                  local_name="semeval2010_task8",
                                  eval_splits=("validation", "test")),
    # Extractive QA; SQuAD 2.0 adds unanswerable questions (predicted as '').
    "squad": TaskSpec(kind="question_answering", text_fields=("question", "context"),
                      label_names=(), label_field="answers", metrics=("f1", "exact"),
                      hub_dataset="rajpurkar/squad", local_name="squad"),
    "squad_v2": TaskSpec(kind="question_answering", text_fields=("question", "context"),
                         label_names=(), label_field="answers",
                         metrics=("f1", "exact", "best_f1", "best_exact", "HasAns_f1",
                                  "NoAns_f1"),
                         hub_dataset="rajpurkar/squad_v2", local_name="squad_v2"),
    # No canonical hub copy: read from $RESEARCH_DATA_DIR/chnsenticorp or a local directory.
    "chnsenticorp": TaskSpec(kind="classification", text_fields=("sentence",),
                             label_names=("negative", "positive"), metrics=("accuracy",),
                             hub_dataset="", local_name="chnsenticorp",
                             eval_splits=("validation", "test")),
})
