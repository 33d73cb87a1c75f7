"""What an encoded split is (`EncodedSplit`: padded int matrices), the checks every encoder makes
of its rows, and the tokenising that the sequence and token kinds share.

Each task kind's encoder (`TaskKind.encode`, research/tasks/) builds its splits from these: every
label is validated as a split is encoded (NaN, null, unknown or out of range is one error naming
the file, the row and the value), and so is every text field. Sentence pairs are truncated
longest-first, as Hugging Face does.

Imports numpy only: research.compare and the kinds' config checks load it without `datasets`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import TYPE_CHECKING

import numpy as np

from research.data import cache, tokenization
from research.errors import DataError

if TYPE_CHECKING:
  from research.data.masking import Masking

IGNORE = -100  # label of positions that count in neither the loss nor the metrics


@dataclasses.dataclass
class EncodedSplit:
  """A tokenised split as padded matrices (row i is example i of the split)."""

  input_ids: np.ndarray        # [N, max_length] int32, 0 after the sequence
  token_type_ids: np.ndarray   # [N, max_length] int8
  lengths: np.ndarray          # [N] tokens including [CLS] and [SEP]
  labels: np.ndarray           # [N] int32 class or float32 score; [N, max_length] int32 tags
  word_index: np.ndarray | None = None  # token tasks: [N, max_length] word of each first
                                        # sub-word, -1 elsewhere
  word_labels: np.ndarray | None = None  # token tasks: [N] object array of every word's tag
                                         # id, truncated words included
  entity_spans: np.ndarray | None = None  # relation tasks: [N, 4] int32 first and one-past-last
                                          # token of entity 1, then entity 2 (markers outside)
  # Question answering: a row is a window (feature) of one question's context.
  offsets: np.ndarray | None = None  # [N, max_length, 2] int32 context characters of each
                                     # context token, (-1, -1) for every other token
  feature_example: np.ndarray | None = None  # [N] int32 the question each window belongs to
  examples: list[dict] | None = None  # per question (not per row): id, context, gold answers
  # Masked LM: the unmasked tokens are input_ids; `labels` is unused ([N] zeros), the targets
  # are drawn with each batch (`mask_tokens`).
  mask_groups: np.ndarray | None = None  # [N, max_length] int32: the word of each token
                                         # (sub-words of a word share it), -1: never masked
  masking: "Masking | None" = None
  # Distillation: the teacher's outputs of each row ([N, outputs] float32, research/distill.py).
  teacher_logits: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.lengths)

  def select(self, indices: np.ndarray) -> "EncodedSplit":
    """Rows `indices`; what is not per row (`examples`, per question; `masking`) is kept."""
    return EncodedSplit(**{
        f.name: getattr(self, f.name) if not isinstance(getattr(self, f.name), np.ndarray)
        else getattr(self, f.name)[indices] for f in dataclasses.fields(self)})


class SplitRows(str):
  """How a split is named in messages, when its rows are not its file's rows from the first
  on (`data.validation_from_train`): also the file row (0-based) of each of its rows, so that
  an error names the row the user can find in the file."""

  def __new__(cls, name: str, file_rows: np.ndarray):
    named = super().__new__(cls, name)
    named.file_rows = np.asarray(file_rows)
    return named


def row_number(where: str, index: int) -> int:
  """The 1-based row of its file that row `index` of the split named `where` is."""
  file_rows = getattr(where, "file_rows", None)
  return index + 1 if file_rows is None else int(file_rows[index]) + 1


def check_fields(dataset, fields: tuple[str, ...], where: str):
  missing = [f for f in fields if f not in dataset.column_names]
  if missing:
    raise DataError(f"{where}: no field {missing} (fields there: {dataset.column_names}); "
                    "set task.text_fields / task.label_field")


def check_texts(dataset, fields: tuple[str, ...], words: bool, where: str):
  """Every row has each text field: a string (a list of strings for token tasks)."""
  for field in fields:
    for index, value in enumerate(dataset[field]):
      ok = (isinstance(value, list) and all(isinstance(w, str) for w in value) if words
            else isinstance(value, str))
      if not ok:
        kind = "a list of words" if words else "a text"
        raise DataError(f"{where}: row {row_number(where, index)}: field {field!r} is "
                        f"{value!r}, not {kind}")


def _class_id(value, index: dict[str, int], count: int) -> int | None:
  """A label given as a name or as an id 0..count-1 -> the id; None if it is neither."""
  if isinstance(value, str):
    return index.get(value)
  if isinstance(value, bool) or value is None:
    return None
  if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
    return int(value) if 0 <= value < count else None
  return None


def class_ids(values: list, label_names: tuple[str, ...], where: str,
              row: int | None = None) -> np.ndarray:
  """Labels given as ints (0..K-1) or as label-name strings -> int32 class ids; the first
  other value (NaN, null, unknown name, out of range) is an error naming its row."""
  index = {name: i for i, name in enumerate(label_names)}
  ids = [_class_id(v, index, len(label_names)) for v in values]
  if None in ids:
    position = ids.index(None)
    bad = sum(i is None for i in ids)
    at = (f"row {row}, word {position + 1}" if row is not None
          else f"row {row_number(where, position)}")
    hint = " (a GLUE test split has no labels: -1)" if values[position] == -1 else ""
    raise DataError(f"{where}: {at}: label {values[position]!r} is neither one of "
                    f"task.label_names {list(label_names)} nor an id 0..{len(label_names) - 1}"
                    f"{hint}" + (f"; {bad} such labels" if bad > 1 else ""))
  return np.asarray(ids, np.int32)


def label_scores(values: list, where: str) -> np.ndarray:
  """Regression labels -> float32; a null, NaN or infinite one is an error naming its row."""
  for index, value in enumerate(values):
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
        or not math.isfinite(value)):
      raise DataError(f"{where}: row {row_number(where, index)}: label {value!r} is not a "
                      "finite number")
  return np.asarray(values, np.float32)




def encode_sequences(dataset, tokenizer, task_cfg, max_length: int, where: str, labelled: bool,
                     words: bool, owner: type):
  """The tokenising that classification, regression and token tasks share: one text or a pair
  per row (`task.text_fields`; with `words`, lists of words: a token task's), tokenised in a
  batched `Dataset.map` and packed into padded matrices. Returns (input_ids, token types,
  lengths, each row's raw label, the tokenised rows, the rows); the kind (`owner`, whose code is
  part of the cache key) turns the raw labels into its own. Unlabelled rows (`labelled=False`,
  --mode=predict) get placeholder labels: 0, or 0 on every word."""
  fields = tuple(task_cfg.text_fields)
  check_fields(dataset, fields + ((task_cfg.label_field,) if labelled else ()), where)
  check_texts(dataset, fields, words, where)
  if words:
    tokenizer = tokenization.words_tokenizer(tokenizer)
  if not labelled:
    placeholder = ([[0] * len(row) for row in dataset[fields[0]]] if words
                   else [0] * len(dataset))
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in fields])
    dataset = dataset.add_column(task_cfg.label_field, placeholder)

  def tokenize(batch):
    texts = [batch[f] for f in fields]
    enc = tokenizer(*texts, truncation=True, max_length=max_length, is_split_into_words=words)
    if words:  # the word of each token, None for [CLS]/[SEP]
      enc["word_ids"] = [[-1 if w is None else w for w in enc.word_ids(i)]
                         for i in range(len(enc["input_ids"]))]
    return enc

  encoded = dataset.map(tokenize, batched=True, batch_size=1000,
                        remove_columns=[c for c in dataset.column_names
                                        if c != task_cfg.label_field],
                        desc=f"tokenising {where}",
                        new_fingerprint=cache.map_fingerprint(
                            dataset, tokenizer, owner, "encode", fields, task_cfg.label_field,
                            max_length, words))
  ids = list(encoded["input_ids"])
  n = len(ids)
  lengths = np.fromiter((len(x) for x in ids), np.int32, n)
  input_ids = np.zeros((n, max_length), np.int32)
  token_types = np.zeros((n, max_length), np.int8)
  types = list(encoded["token_type_ids"])
  for i in range(n):
    input_ids[i, :lengths[i]] = ids[i]
    token_types[i, :lengths[i]] = types[i]
  raw_labels = list(encoded[task_cfg.label_field])
  return input_ids, token_types, lengths, raw_labels, encoded, dataset


def fingerprint(split: EncodedSplit) -> str:
  """A digest of a split as the model sees it: token ids, types and labels."""
  digest = hashlib.sha256()
  for array in (split.input_ids, split.token_type_ids, split.lengths, split.labels):
    digest.update(np.ascontiguousarray(array).tobytes())
  for tags in split.word_labels if split.word_labels is not None else ():
    digest.update(np.asarray(tags, np.int32).tobytes())
  if split.entity_spans is not None:
    digest.update(np.ascontiguousarray(split.entity_spans).tobytes())
  return digest.hexdigest()[:16]
