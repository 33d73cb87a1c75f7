"""The interface of a task kind: what the core asks of a kind, and the defaults most kinds share.

The core (config validation, the input pipeline, the steps, evaluation, inference, compare,
train.py) never asks which kind a run is: it asks the run's kind object (`research.tasks.
kind_of(config.task)`) for its model, loss, encoder, metrics and records. The defaults here are
those of a classifier of whole sequences (one softmax over `task.label_names`, read from [CLS]);
a kind overrides what it does differently.

JAX, flax, optax, `datasets` and the model code are imported in the methods that use them:
the registry, the kinds' config checks and research.compare's rescoring of saved predictions
load none of them (research.compare starts in a fraction of JAX's import time).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


class TaskKind:
  """One task kind (`config.task.kind = name`). Subclass it, override what differs, and
  `research.tasks.register` an instance."""

  name: str = ""
  # The metrics its evaluation can report; a task lists the ones it wants (task.metrics).
  metrics: tuple[str, ...] = ()
  # Its texts are lists of words (a token task): read so from files and --mode=predict's input.
  reads_words: bool = False
  # Its training corpus can be read as a stream (data.streaming).
  streams: bool = False
  # `data.validation_from_train` keeps each label's share in the rows it holds out.
  stratify_holdout: bool = False
  # What research.compare resamples (examples, sentences, questions); None: it cannot compare
  # runs of this kind.
  compare_units: str | None = None
  # Metrics research.compare cannot recompute on a resample of the examples, and why: it says
  # so and compares the others.
  uncomparable: dict[str, str] = {"loss": "no per-example losses are saved"}
  # Why research.compare refuses a run of this kind that saved no per-example predictions
  # ("is a ... run: ..."); None: it advises re-evaluating the run.
  compare_refusal: str | None = None
  # Why --mode=predict refuses this kind (the message); None: it predicts.
  predict_refusal: str | None = None
  # The transformers class an export loads as, after the family's prefix (`BertFor...`).
  hf_suffix: str = "ForSequenceClassification"

  # ---- config ---------------------------------------------------------------------------------

  def validate(self, task, config, check: Callable[[bool, str, str], None]) -> None:
    """Checks this kind's own fields of `task` (config.task) with `check(condition, field,
    message)`, config_lib's one-line error. A classifier needs at least two labels."""
    del config
    check(len(task.label_names) >= 2, "task.label_names",
          f"needs at least two labels for {task.kind}, got {tuple(task.label_names)}")

  def entity_markers(self, task) -> tuple[str, ...]:
    """The marker tokens the tokenizer gains for this task (they grow the vocabulary); ()."""
    del task
    return ()

  def label_names_from_data(self, data_cfg, task) -> tuple[str, ...] | None:
    """Label names read from the training data when the config gives none; None: the config's
    are used as they are."""
    del data_cfg, task
    return None

  def adopt_saved_tags(self, task, saved: dict[str, Any]) -> None:
    """Takes from a run's saved config (`saved`, its config.json) what the run read from its
    data, so that a resume, eval, predict and export use what the model was trained with."""
    del task, saved

  # ---- data -----------------------------------------------------------------------------------

  def encode(self, dataset, tokenizer, task, max_length: int, where: str,
             labelled: bool = True):
    """A split (`dataset`) tokenised and packed into a research.data.encoded.EncodedSplit;
    unlabelled rows (`labelled=False`, --mode=predict) get placeholder labels. The helpers of
    research.data.encoded check the rows and tokenise; a `Dataset.map` keyed by
    `research.data.cache.map_fingerprint(..., type(self), ...)` is cached until this kind's code
    (or research/data's) changes."""
    raise NotImplementedError(f"task kind {self.name!r} has no encoder")

  def encode_chunk(self, dataset, tokenizer, task, max_length: int, where: str):
    """A chunk of a corpus read as a stream (kinds that `streams`; research.data.streaming): as
    `encode`, but a chunk with no text, or too little for one row, gives no rows."""
    raise NotImplementedError(f"task kind {self.name!r} does not stream")

  def conll_fields(self, task) -> tuple[str, str] | None:
    """The words and tags fields a CoNLL file is read into (.txt and .tsv files are CoNLL
    files too); None: they are tables or text, one row a line."""
    del task
    return None

  def holdout_field(self, task) -> str:
    """The field `data.validation_from_train` reads to hold rows out (it must exist; it is
    stratified by with `stratify_holdout`)."""
    return task.label_field

  def check_scorable(self, task, split, where: str) -> None:
    """Refuses an evaluation split that this kind's metrics cannot score as configured."""
    del task, split, where

  # ---- model and steps ------------------------------------------------------------------------

  def num_outputs(self, label_names: tuple[str, ...]) -> int:
    """The head's outputs: one logit per label."""
    return len(label_names)

  def build_model(self, config, num_labels: int, *, dtype: Any, param_dtype: Any,
                  classifier_dropout: float | None, task=None):
    """The Flax model (`config`: a bert.BertConfig) with `num_labels` outputs; a kind whose
    head has settings of its own reads them from `task` (config.task; None: its defaults)."""
    del task
    from research.models import families
    return families.model_class(config, "sequence")(
        config=config, num_labels=num_labels, classifier_dropout=classifier_dropout,
        dtype=dtype, param_dtype=param_dtype)

  def losses(self, logits, labels, example_mask, attention_mask):
    """(losses, weights) of a batch, before `loss_sum` adds them up: softmax cross-entropy
    per example, weighted by `example_mask` (0 for padding rows)."""
    del attention_mask
    import optax
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels), example_mask

  def loss_sum(self, logits, labels, example_mask, attention_mask=None):
    """Summed loss and the number of labelled positions it sums over (the mean's denominator).

    Returning the sum and the count, not the mean, lets a step add them up over micro-batches
    and devices first, so that every split of a batch gives exactly the big batch's mean.
    """
    return _weighted_sum(*self.losses(logits, labels, example_mask, attention_mask))

  # Whether `distill_losses` is this kind's (a student can learn from a teacher's outputs).
  distills = False

  def distill_losses(self, logits, teacher_logits, attention_mask, temperature: float):
    """Per-example soft losses of the student's `logits` against the teacher's (same shape):
    KL(teacher_T || student_T) * T^2 over the labels, both softened by `temperature` (Hinton
    et al. 2015); the T^2 keeps its gradients' scale as T changes."""
    import jax
    import jax.numpy as jnp
    del attention_mask
    teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    student = jax.nn.log_softmax(logits / temperature, axis=-1)
    return jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1) * temperature ** 2

  def distill_loss_sum(self, logits, teacher_logits, labels, example_mask, attention_mask,
                       temperature: float, alpha: float):
    """`loss_sum` of alpha * the soft loss + (1 - alpha) * the task's own loss."""
    hard, weights = self.losses(logits, labels, example_mask, attention_mask)
    soft = self.distill_losses(logits, teacher_logits, attention_mask, temperature)
    return _weighted_sum(alpha * soft + (1.0 - alpha) * hard, weights)

  def eval_outputs(self, logits, batch):
    """What the eval step gathers of each row to the host (inside the compiled step): the
    logits themselves."""
    del batch
    return logits

  # ---- evaluation -----------------------------------------------------------------------------

  def predictions(self, split, outputs: np.ndarray):
    """Each example's predicted label id (the argmax of its logits)."""
    del split
    return outputs.argmax(-1)

  def score(self, task, split, outputs: np.ndarray,
            loss: float) -> tuple[dict[str, float], dict[str, Any]]:
    """(scalar metrics incl. loss, report) for a split's outputs (`evaluation.score`)."""
    raise NotImplementedError(f"task kind {self.name!r} has no metrics")

  def per_example(self, task, split, outputs: np.ndarray,
                  report: dict[str, Any]) -> dict[str, Any] | None:
    """Each example's gold and prediction, in split order (`evaluation.per_example`): label
    ids, from which research.compare recomputes the metrics on resamples."""
    del report
    predicted = self.predictions(split, outputs)
    return {"kind": task.kind, "gold": split.labels.tolist(), "prediction": predicted.tolist()}

  def scorers(self, tasks: list[dict[str, Any]], gold: list, predictions: list[list],
              examples: list[dict[str, Any]]) -> dict[str, Any]:
    """research.compare's scorer of each metric over two systems' stacked predictions
    (`research.resampling`): `tasks` are their saved task configs, `examples` their
    per-example records."""
    raise NotImplementedError(f"task kind {self.name!r} cannot be compared")

  # ---- inference ------------------------------------------------------------------------------

  def example_of_output(self, split, row: int) -> int:
    """The input example an output row belongs to: itself."""
    del split
    return row

  def prediction_records(self, task, split, outputs: np.ndarray,
                         count: int) -> list[dict[str, Any]]:
    """--mode=predict's fields of each of the first `count` examples (beside its texts): the
    predicted label and every label's probability."""
    names = tuple(task.label_names)
    predicted = self.predictions(split, outputs)
    records = []
    for i in range(count):
      # In float64: a float32 rounded to 6 digits is written as 0.029416000470519066.
      probabilities = np.exp(outputs[i].astype(np.float64) - outputs[i].max())
      probabilities /= probabilities.sum()
      records.append(dict(label=names[predicted[i]],
                          probabilities=dict(zip(names, probabilities.round(6).tolist()))))
    return records

  def hf_architecture(self, task, model_type: str = "bert") -> str:
    """The transformers class an export loads as, of the checkpoint's family (`model_type`:
    `RobertaForSequenceClassification`, ...)."""
    del task
    from research.models import hf_io
    return hf_io.architecture_name(model_type, self.hf_suffix)

  def export_extra(self, task) -> dict[str, Any] | None:
    """What an export's config.json adds for a head that transformers has no class of."""
    del task
    return None

  def export_params(self, params: Any, checkpoint_dir) -> Any:
    """The params an export writes: the trained ones."""
    del checkpoint_dir
    return params


def _weighted_sum(losses, weights):
  """(sum of losses * weights, sum of weights) of a batch (`TaskKind.loss_sum`). A padding
  row's loss may be inf or NaN (its label is a copy of a real row's and may point past the
  padding row's one token): it is dropped, never multiplied by its weight 0."""
  import jax.numpy as jnp
  weights = weights.astype(jnp.float32)
  return jnp.sum(jnp.where(weights > 0, losses * weights, 0.0)), jnp.sum(weights)
