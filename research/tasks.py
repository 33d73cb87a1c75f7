"""What differs between task kinds (model head, loss, predictions) and the known tasks.

A task *kind* decides the head and the loss (the heads' layout is the checkpoint family's, as
in transformers: BERT's pooled [CLS], RoBERTa's and ELECTRA's dense + out_proj on <s>):
  classification        [CLS] -> softmax over labels, cross-entropy
  regression            [CLS] -> one score, mean squared error (never clipped)
  token_classification  every token -> softmax over tags; only the first sub-word of each
                        word has a label, the others carry IGNORE and count nowhere
  question_answering    a question and a context window -> start and end logits per token
                        (softmax over the window's real tokens); a long context is several
                        windows, post-processed into one answer per question (squad.py)
  relation_classification  a sentence with two marked entities -> softmax over relations,
                        read from [CLS] or from the entities (`REPRESENTATIONS`); the entities'
                        token spans come with every example (input_pipeline.encode_relations)
  masked_lm             raw text, masked with each batch (input_pipeline.mask_tokens) -> the
                        masked positions' logits over the vocabulary (BERT's tied LM head),
                        cross-entropy on those positions only: continued pretraining

`GLUE` and `TASKS` are the registry that configs read: text fields, label names and the
official metrics of each task, and where its data lives.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from research.models import bert, hf_io

KINDS = ("classification", "regression", "token_classification", "relation_classification",
         "question_answering", "masked_lm")
# What a relation classifier reads (bert.BertForRelationClassification).
REPRESENTATIONS = ("cls", "entity_start", "entity_mean")
IGNORE = -100  # label of positions that count in neither the loss nor the metrics


def build_model(kind: str, config: bert.BertConfig, num_labels: int, *, dtype: Any,
                param_dtype: Any, classifier_dropout: float | None,
                representation: str = "cls", start_offset: int = 0):
  """The Flax model of a task kind. Relation classifiers also take what they read
  (`representation`) and where an entity's start is read: at the marker before its first
  token (`start_offset=1`) or at that token (0, no markers)."""
  kw = dict(config=config, num_labels=num_labels, classifier_dropout=classifier_dropout,
            dtype=dtype, param_dtype=param_dtype)
  if kind == "token_classification":
    return bert.BertForTokenClassification(**kw)
  if kind == "relation_classification":
    return bert.BertForRelationClassification(**kw, representation=representation,
                                              start_offset=start_offset)
  if kind == "question_answering":
    return bert.BertForQuestionAnswering(config=config, dtype=dtype, param_dtype=param_dtype)
  if kind == "masked_lm":
    return bert.BertForMaskedLM(config=config, dtype=dtype, param_dtype=param_dtype)
  return bert.BertForSequenceClassification(**kw)


def hf_architecture(task_cfg, model_type: str = "bert") -> str:
  """The transformers class an export loads as, of the checkpoint's family (`model_type`:
  `RobertaForTokenClassification`, ...). A relation classifier that reads [CLS] is a plain
  `*ForSequenceClassification` (with a longer vocabulary when it has markers); one that reads
  the entities is exported as its bare encoder (`*Model`) plus the head's weights
  (`hf_io.export`): transformers has no such head."""
  if task_cfg.kind == "token_classification":
    suffix = "ForTokenClassification"
  elif task_cfg.kind == "question_answering":
    suffix = "ForQuestionAnswering"
  elif task_cfg.kind == "masked_lm":
    suffix = "ForMaskedLM"
  elif task_cfg.kind == "relation_classification" and task_cfg.representation != "cls":
    suffix = "Model"
  else:
    suffix = "ForSequenceClassification"
  return hf_io.architecture_name(model_type, suffix)


def adopt_saved_tags(config, saved: dict[str, Any]) -> None:
  """A token task whose `task.label_names` is empty takes those of the run's saved config
  (`saved`, its config.json: the tags of its training split, read when it trained), so that a
  resume, eval, predict and export use the list the model was trained with."""
  task = config.task
  if task.kind == "token_classification" and not task.label_names:
    task.label_names = tuple(saved.get("task", {}).get("label_names", ()))


def num_outputs(kind: str, label_names: tuple[str, ...]) -> int:
  if kind == "question_answering":
    return 2  # start and end
  if kind == "masked_lm":
    return 0  # the vocabulary, which the model's config gives
  return 1 if kind == "regression" else len(label_names)


def loss_sum(kind: str, logits: jnp.ndarray, labels: jnp.ndarray, example_mask: jnp.ndarray,
             attention_mask: jnp.ndarray | None = None):
  """Summed loss and the number of labelled positions it sums over (the mean's denominator).

  Returning the sum and the count, not the mean, lets a step add them up over micro-batches
  and devices first, so that every split of a batch gives exactly the big batch's mean.
  Question answering takes `attention_mask`: the softmax over start (end) positions runs over
  the window's real tokens only, so the padding of a batch changes nothing.
  """
  if kind in ("classification", "relation_classification"):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = example_mask
  elif kind == "regression":
    losses = jnp.square(logits[..., 0] - labels)
    weights = example_mask
  elif kind == "question_answering":  # logits [B, S, 2], labels [B, 2]: (start, end)
    real = (attention_mask > 0)[..., None]
    logits = jnp.where(real, logits, jnp.finfo(jnp.float32).min)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.swapaxes(1, 2), labels)
    losses = losses.mean(-1)  # (start + end) / 2, as BertForQuestionAnswering
    weights = example_mask
  elif kind in ("token_classification", "masked_lm"):  # masked LM: [B, P] prediction slots
    weights = (labels != IGNORE) * example_mask[:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(labels == IGNORE, 0, labels))
  else:
    raise ValueError(f"unknown task kind {kind!r}")
  weights = weights.astype(jnp.float32)
  # A padding row's loss may be inf or NaN (its label is a copy of a real row's and may point
  # past the padding row's one token): it is dropped, never multiplied by its weight 0.
  return jnp.sum(jnp.where(weights > 0, losses * weights, 0.0)), jnp.sum(weights)


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
