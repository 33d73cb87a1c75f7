"""What differs between task kinds (model head, loss, predictions).

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

The named datasets (GLUE, CoNLL-2003, ...) are research/named_tasks.py.
"""

from __future__ import annotations

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
