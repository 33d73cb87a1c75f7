"""Masked-LM continued pretraining: raw text, masked with each batch.

Rows are masked as their batch is built (input_pipeline.mask_tokens) -> the masked positions'
logits over the vocabulary (BERT's tied LM head), cross-entropy on those positions only. The
eval step keeps the vocabulary's logits on the device and gathers each row's (correct
predictions, targets); its metrics are the masked tokens' accuracy and perplexity.
"""

from __future__ import annotations

import numpy as np

from research.tasks.base import IGNORE, TaskKind
from research.tasks.tokens import position_losses


class MaskedLM(TaskKind):
  """No labels and no examples to resample: the model is exported for fine-tuning."""

  name = "masked_lm"
  metrics = ("accuracy", "perplexity")  # of the masked tokens' predictions
  streams = True
  compare_refusal = "is a masked-LM run: it has no examples to compare"
  predict_refusal = ("--mode=predict is for task heads; a masked-LM run is continued "
                     "pretraining: --mode=export writes its BertForMaskedLM, whose directory is "
                     "then the model.checkpoint of a fine-tuning config")
  hf_suffix = "ForMaskedLM"

  def validate(self, task, config, check):
    check(0 < task.mlm_probability < 1, "task.mlm_probability",
          f"{task.mlm_probability} must be in (0, 1)")
    check(task.line_by_line or len(task.text_fields) == 1, "task.line_by_line",
          "False concatenates the texts of one field; pairs need line_by_line=True")
    check(config.eval.best_metric != "perplexity", "eval.best_metric",
          "perplexity is lower-is-better: pick the best checkpoint by 'loss' (the same order)")

  def encode(self, dataset, tokenizer, task, max_length, where, labelled=True):
    from research.data import input_pipeline
    return input_pipeline.encode_texts(dataset, tokenizer, task, max_length, where)

  def holdout_field(self, task):
    return task.text_fields[0]

  def num_outputs(self, label_names):
    return 0  # the vocabulary, which the model's config gives

  def build_model(self, config, num_labels, *, dtype, param_dtype, classifier_dropout,
                  representation="cls", start_offset=0):
    from research.models import bert
    return bert.BertForMaskedLM(config=config, dtype=dtype, param_dtype=param_dtype)

  def losses(self, logits, labels, example_mask, attention_mask):
    """logits [B, P, vocabulary] of the P prediction slots; IGNORE marks an unused slot."""
    return position_losses(logits, labels, example_mask)

  def eval_outputs(self, logits, batch):
    """The vocabulary's logits stay on the device: per row, (hits, targets) [B, 2]."""
    import jax.numpy as jnp
    targets = batch["labels"] != IGNORE
    hits = jnp.sum((logits.argmax(-1) == batch["labels"]) & targets, -1)
    return jnp.stack([hits, targets.sum(-1)], -1).astype(jnp.float32)

  def score(self, task, split, outputs, loss):
    """Outputs: per row (correct predictions, targets)."""
    scalars: dict[str, float] = {"loss": loss}
    values = {"accuracy": float(outputs[:, 0].sum() / max(outputs[:, 1].sum(), 1.0)),
              "perplexity": float(np.exp(loss))}
    scalars.update({name: values[name] for name in task.metrics})
    return scalars, {}

  def per_example(self, task, split, outputs, report):
    """None: masked LM has no examples to resample."""
    return None

  def export_params(self, params, checkpoint_dir):
    """Plus the pooler of the checkpoint it continued, when it has one
    (`hf_io.with_source_pooler`)."""
    if checkpoint_dir is None:
      return params
    from research.models import hf_io
    return hf_io.with_source_pooler(params, checkpoint_dir)


MASKED_LM = MaskedLM()
