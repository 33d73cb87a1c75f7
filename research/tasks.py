"""What differs between task kinds (model head, loss, predictions) and the known tasks.

A task *kind* decides the head and the loss:
  classification        pooled [CLS] -> softmax over labels, cross-entropy
  regression            pooled [CLS] -> one score, mean squared error (never clipped)
  token_classification  every token -> softmax over tags; only the first sub-word of each
                        word has a label, the others carry IGNORE and count nowhere

`GLUE` and `TASKS` are the registry that configs read: text fields, label names and the
official metrics of each task, and where its data lives.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from research.models import bert

KINDS = ("classification", "regression", "token_classification")
IGNORE = -100  # label of positions that count in neither the loss nor the metrics


def build_model(kind: str, config: bert.BertConfig, num_labels: int, *, dtype: Any,
                param_dtype: Any, classifier_dropout: float | None):
  kw = dict(config=config, num_labels=num_labels, classifier_dropout=classifier_dropout,
            dtype=dtype, param_dtype=param_dtype)
  if kind == "token_classification":
    return bert.BertForTokenClassification(**kw)
  return bert.BertForSequenceClassification(**kw)


def hf_architecture(kind: str) -> str:
  return ("BertForTokenClassification" if kind == "token_classification"
          else "BertForSequenceClassification")


def num_outputs(kind: str, label_names: tuple[str, ...]) -> int:
  return 1 if kind == "regression" else len(label_names)


def loss_sum(kind: str, logits: jnp.ndarray, labels: jnp.ndarray, example_mask: jnp.ndarray):
  """Summed loss and the number of labelled positions it sums over (the mean's denominator).

  Returning the sum and the count, not the mean, lets a step add them up over micro-batches
  and devices first, so that every split of a batch gives exactly the big batch's mean.
  """
  if kind == "classification":
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = example_mask
  elif kind == "regression":
    losses = jnp.square(logits[..., 0] - labels)
    weights = example_mask
  elif kind == "token_classification":
    weights = (labels != IGNORE) * example_mask[:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(labels == IGNORE, 0, labels))
  else:
    raise ValueError(f"unknown task kind {kind!r}")
  weights = weights.astype(jnp.float32)
  return jnp.sum(losses * weights), jnp.sum(weights)


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
    # No canonical hub copy: read from $RESEARCH_DATA_DIR/chnsenticorp or a local directory.
    "chnsenticorp": TaskSpec(kind="classification", text_fields=("sentence",),
                             label_names=("negative", "positive"), metrics=("accuracy",),
                             hub_dataset="", local_name="chnsenticorp",
                             eval_splits=("validation", "test")),
})
