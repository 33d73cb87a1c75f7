"""Masked-LM continued pretraining: raw text, masked with each batch.

Rows are masked as their batch is built (research.data.masking) -> the masked positions'
logits over the vocabulary (BERT's tied LM head), cross-entropy on those positions only. The
eval step keeps the vocabulary's logits on the device and gathers each row's (correct
predictions, targets); its metrics are the masked tokens' accuracy and perplexity.
"""

from __future__ import annotations

import numpy as np

from research.data import cache, tokenization
from research.data.encoded import IGNORE, EncodedSplit, check_fields, check_texts
from research.data.masking import Masking
from research.errors import DataError
from research.tasks.base import TaskKind
from research.tasks.tokens import position_losses


def encode_texts(dataset, tokenizer, task_cfg, max_length: int, where: str, *, owner: type,
                 empty_ok: bool = False) -> EncodedSplit:
  """Masked LM: raw text (one field, or a pair) as unmasked rows; blank texts are dropped.

  `task.line_by_line`: each text is one row, cut at max_length. Otherwise all texts, each with
  its [CLS] ... [SEP], are concatenated and cut into rows of exactly max_length tokens, the
  remainder dropped (Hugging Face run_mlm's `group_texts`). `mask_groups` numbers the words
  (the tokenizer's word ids, unique over the whole split) for whole-word masking; special
  tokens get -1 and are never masked. `empty_ok` (a chunk of a stream): no text, or too little
  for one row, gives no rows instead of an error. `owner`: the kind, whose code is part of the
  cache key.
  """
  fields = tuple(task_cfg.text_fields)
  check_fields(dataset, fields, where)
  check_texts(dataset, fields, False, where)
  if tokenizer.mask_token_id is None:
    raise DataError(f"the tokenizer has no mask token: it cannot be used for masked-LM "
                    f"training ({where})")
  line_by_line = bool(task_cfg.line_by_line)
  if not line_by_line and len(fields) != 1:
    raise DataError(f"{where}: task.line_by_line=False concatenates one text field, got "
                    f"{fields}")
  texts = dataset[fields[0]]
  dataset = dataset.select([i for i, t in enumerate(texts) if t.strip()])
  masking = Masking(int(tokenizer.mask_token_id), len(tokenizer),
                    float(task_cfg.mlm_probability), bool(task_cfg.whole_word_masking))
  if not len(dataset) and empty_ok:
    return _no_rows(max_length, masking)
  if not len(dataset):
    raise DataError(f"{where}: no text in field {fields[0]!r} (every row is blank)")

  def tokenize(batch):
    enc = tokenizer(*[batch[f] for f in fields], truncation=line_by_line,
                    max_length=max_length if line_by_line else None)
    enc["word_ids"] = [[-1 if w is None else w for w in enc.word_ids(i)]
                       for i in range(len(enc["input_ids"]))]
    return enc

  with tokenization.transformers_errors_only():
    encoded = dataset.map(tokenize, batched=True, batch_size=1000,
                          remove_columns=dataset.column_names, desc=f"tokenising {where}",
                          new_fingerprint=cache.map_fingerprint(dataset, tokenizer, owner,
                                                                "encode_texts", fields,
                                                                line_by_line, max_length))
  ids = [np.asarray(x, np.int32) for x in encoded["input_ids"]]
  types = [np.asarray(x, np.int8) for x in encoded["token_type_ids"]]
  words, offset = [], 0
  for w in encoded["word_ids"]:  # word ids unique over the split
    w = np.asarray(w, np.int32)
    words.append(np.where(w >= 0, w + offset, -1))
    offset += int(w.max()) + 1 if w.size else 0
  if line_by_line:
    n = len(ids)
    lengths = np.fromiter((len(x) for x in ids), np.int32, n)
    input_ids = np.zeros((n, max_length), np.int32)
    token_types = np.zeros((n, max_length), np.int8)
    groups = np.full((n, max_length), -1, np.int32)
    for i in range(n):
      input_ids[i, :lengths[i]], token_types[i, :lengths[i]] = ids[i], types[i]
      groups[i, :lengths[i]] = words[i]
  else:
    stream = np.concatenate(ids)
    n = len(stream) // max_length
    if not n and empty_ok:
      return _no_rows(max_length, masking)
    if not n:
      raise DataError(f"{where}: {len(stream)} tokens in all, fewer than one row of "
                      f"data.max_length {max_length}")
    input_ids = stream[:n * max_length].reshape(n, max_length)
    token_types = np.zeros((n, max_length), np.int8)
    groups = np.concatenate(words)[:n * max_length].reshape(n, max_length)
    lengths = np.full(n, max_length, np.int32)
  return EncodedSplit(input_ids, token_types, lengths, np.zeros(n, np.int32),
                      mask_groups=groups, masking=masking)


def _no_rows(max_length: int, masking: Masking) -> EncodedSplit:
  return EncodedSplit(np.zeros((0, max_length), np.int32), np.zeros((0, max_length), np.int8),
                      np.zeros(0, np.int32), np.zeros(0, np.int32),
                      mask_groups=np.zeros((0, max_length), np.int32), masking=masking)


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
    return encode_texts(dataset, tokenizer, task, max_length, where, owner=type(self))

  def encode_chunk(self, dataset, tokenizer, task, max_length, where):
    return encode_texts(dataset, tokenizer, task, max_length, where, owner=type(self),
                        empty_ok=True)

  def holdout_field(self, task):
    return task.text_fields[0]

  def num_outputs(self, label_names):
    return 0  # the vocabulary, which the model's config gives

  def build_model(self, config, num_labels, *, dtype, param_dtype, classifier_dropout,
                  task=None):
    from research.models import families
    return families.model_class(config, "masked_lm")(config=config, dtype=dtype,
                                                     param_dtype=param_dtype)

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
