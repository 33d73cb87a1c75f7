"""Input pipeline: a file or hub dataset -> tokenised numpy matrices -> length-bucketed batches.

* Sources: a local directory holding `<split>.jsonl|json|csv|tsv|parquet|txt|conll` (CoNLL
  columns, `read_conll`), or a Hugging Face hub dataset. A registered task
  (`data.local_name`) is read from, in turn: an explicit `data.dataset` (anything but its own
  hub dataset), `$RESEARCH_DATA_DIR/<local_name>/` when that variable is set (CI and tests
  point it at ../shared/data), its hub dataset when the hub is reachable, or the slice
  shipped in the repository's `data/` when it holds what the config asks for (`locate`).
  `data.validation_from_train` carves a fixed, stratified validation split out of train, for
  datasets with only train and test.
* Checks: every label is validated as a split is encoded (NaN, null, unknown or out of range is
  one error naming the file, the row and the value), and so is every text field. A run records
  each split's fingerprint (`data_record`), so a resumed run refuses other data.
* Tokenisation: the checkpoint's fast tokenizer in a batched `Dataset.map`; sentence pairs are
  truncated longest-first, as Hugging Face does. A split is then held as padded int matrices.
* Batches: every batch is padded to the smallest of a few `length_buckets` that fits its longest
  sequence, so XLA compiles at most one program per bucket. The training order is a pure
  function of (seed, epoch), so a run resumed at step k sees the batches an uninterrupted run
  sees. Eval batches cover each example exactly once; the last one is filled up with padding
  rows whose `example_mask` is 0 (and `example_index` -1). Masked-LM rows are masked as their
  batch is built, from (seed, epoch, example): the masks resume and split across devices as
  the batches do.
* Several processes: each reads and tokenises the whole split (the batch order and every
  batch's bucket need all lengths; tokenising a GLUE split takes seconds), but builds and places
  only its own block of rows of each batch (`rows`): the batch's width is that of the whole
  global batch, so every process compiles the same shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import pathlib
import queue
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterator

import datasets
import numpy as np

from research import named_tasks, tasks

DATA_DIR_ENV = "RESEARCH_DATA_DIR"
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
            ".parquet": "parquet", ".txt": "text",  # .txt: one row per line, field "text"
            ".conll": "conll"}  # a word and its tag a line (`read_conll`)
# A token task reads these as CoNLL files too: its rows are lists of words, which no
# one-row-a-line table holds.
CONLL_SUFFIXES = (".conll", ".txt", ".tsv")
# The fields a .conll file's rows have when no token task names them.
CONLL_FIELDS = ("tokens", "ner_tags")
Batch = dict[str, np.ndarray]


class DataError(ValueError):
  """Data that cannot be used as configured: missing files, fields or labels."""


# ---- sources ------------------------------------------------------------------------------

# Small slices of public datasets shipped with the repository (data/README.md), so that the
# Quick start runs on a fresh clone with no network and no RESEARCH_DATA_DIR.
SHIPPED_DIR = pathlib.Path(__file__).resolve().parents[2] / "data"
HUB_PROBE_SECONDS = 3.0


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a run's data is read: a directory or a hub dataset name, and why that one."""

  location: str
  origin: str  # 'data.dataset' | '$RESEARCH_DATA_DIR' | 'hub' | 'shipped slice'

  def describe(self) -> str:
    return f"{self.location} ({self.origin})"


@functools.lru_cache(maxsize=None)
def _hub_answers(endpoint: str) -> bool:
  """Whether the hub's host accepts a connection within a few seconds (asked once a process):
  offline, `datasets` would otherwise retry for ~40 s before failing."""
  host = urllib.parse.urlparse(endpoint).hostname or endpoint
  try:
    socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
    return True
  except OSError:
    return False


def hub_reachable() -> bool:
  """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub does not answer."""
  if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
         for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
    return False
  return _hub_answers(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def _explicit_dataset(data_cfg) -> bool:
  """Whether `data.dataset` names a folder or dataset the user chose, rather than the hub
  dataset of the registered task `data.local_name` stands for (or nothing)."""
  registered = {spec.local_name: spec.hub_dataset for spec in named_tasks.TASKS.values()}
  stands_for = registered.get(data_cfg.local_name, data_cfg.dataset)
  return data_cfg.dataset not in ("", stands_for)


def _slice_shortfall(folder: pathlib.Path, data_cfg) -> list[str]:
  """What the config asks for that the shipped slice in `folder` does not hold."""
  held = json.loads((folder / "slice.json").read_text())["splits"]
  train_split = data_cfg.get("train_split", "train")
  holdout = bool(data_cfg.get("validation_from_train", 0))
  wanted = {train_split: 0 if holdout else data_cfg.get("train_examples", 0)}
  wanted.update({name: data_cfg.get("eval_examples", 0)
                 for name in data_cfg.get("eval_splits", ())
                 if not (holdout and name == HOLDOUT_SPLIT)})
  short = []
  for name, limit in wanted.items():
    have = held.get(name)
    if have is None:
      short.append(f"no {name!r} split")
    elif have["examples"] < have["of"] and not 0 < limit <= have["examples"]:
      asked = "all of them" if not limit else f"{limit:,}"
      short.append(f"{name}: the first {have['examples']:,} of {have['of']:,} rows, the config "
                   f"asks for {asked}" + (" (data.validation_from_train carves from the whole "
                                          "split)" if holdout and name == train_split else ""))
  return short


def locate(data_cfg) -> Source:
  """Where `data_cfg`'s data is read. A registered task (`data.local_name`) looks in turn at
  an explicit `data.dataset` (anything but the task's own hub dataset), then
  `$RESEARCH_DATA_DIR/<local_name>/`, then its hub dataset if the hub is reachable, then the
  repository's shipped slice if it holds what the config asks for; anything else is read as
  `data.dataset` gives it."""
  if not data_cfg.local_name or _explicit_dataset(data_cfg):
    if not data_cfg.dataset:
      raise DataError("data.dataset is empty: give a local directory or a hub dataset name")
    return Source(data_cfg.dataset, "data.dataset")
  local_root = os.environ.get(DATA_DIR_ENV)
  if local_root:
    path = pathlib.Path(local_root) / data_cfg.local_name
    if not path.is_dir():
      raise DataError(f"{DATA_DIR_ENV}={local_root} has no folder {data_cfg.local_name!r} "
                      f"(expected {path})")
    return Source(str(path), f"${DATA_DIR_ENV}")
  tried = [f"{DATA_DIR_ENV} is not set"]
  if data_cfg.dataset:
    if hub_reachable():
      return Source(data_cfg.dataset, "hub")
    tried.append(f"the hub ({data_cfg.dataset}) is offline or unreachable")
  shipped = SHIPPED_DIR / data_cfg.local_name
  if (shipped / "slice.json").is_file():
    short = _slice_shortfall(shipped, data_cfg)
    if not short:
      return Source(str(shipped), "shipped slice")
    tried.append(f"the repository's slice {shipped} has {'; '.join(short)}")
  raise DataError(f"no data for {data_cfg.local_name!r}: {'; '.join(tried)}. Set "
                  f"{DATA_DIR_ENV} to a folder holding {data_cfg.local_name}/, or go online")


def resolve_source(data_cfg) -> str:
  """The directory or hub dataset name that `data_cfg` points at (see `locate`)."""
  return locate(data_cfg).location


def load_split(source: str, subset: str, split: str,
               conll_fields: tuple[str, str] | None = None) -> datasets.Dataset:
  """One split of a local directory (`<split>.<ext>`) or of a hub dataset. `conll_fields`
  (a token task's words and tags fields): .txt and .tsv files are CoNLL files too."""
  directory = pathlib.Path(os.path.expanduser(source))
  if directory.is_dir():
    files = sorted(p for p in directory.iterdir()
                   if p.stem == split and p.suffix in _FORMATS)
    if not files:
      available = sorted({p.stem for p in directory.iterdir() if p.suffix in _FORMATS})
      raise DataError(f"{directory} has no file for split {split!r} (looked for "
                      f"{split}{{{','.join(_FORMATS)}}}; splits there: {available})")
    return read_file(files[0], conll_fields)
  if source.startswith((".", "/", "~")):
    raise DataError(f"data directory {source} does not exist")
  try:
    return datasets.load_dataset(source, subset or None, split=split)
  except Exception as e:  # offline, unknown name or split: one message either way
    raise DataError(f"could not load split {split!r} of hub dataset {source!r}"
                    f"{f' ({subset})' if subset else ''}: {type(e).__name__}: {e}") from e


def check_utf8(path: pathlib.Path) -> str:
  """A text file's contents; bytes that are not UTF-8 are one error naming the line."""
  raw = path.read_bytes()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({raw[e.start:e.start + 4]!r}); "
                    "save the file as UTF-8") from None


def read_file(path: pathlib.Path, conll_fields: tuple[str, str] | None = None
              ) -> datasets.Dataset:
  """A .jsonl/.json/.csv/.tsv/.parquet/.txt/.conll file's rows; any problem is one error naming
  the file. A .txt file is one row per line in the field "text" (blank lines kept as ''). A
  .conll file, and with `conll_fields` (a token task's) a .txt or .tsv file, is read by
  `read_conll`."""
  if path.stat().st_size == 0:
    raise DataError(f"{path} is empty")
  if path.suffix != ".parquet":
    check_utf8(path)
  if path.suffix == ".conll" or (conll_fields and path.suffix in CONLL_SUFFIXES):
    return read_conll(path, *(conll_fields or CONLL_FIELDS))
  if path.suffix == ".json":  # SQuAD's nested layout is flattened into one row per question
    try:
      rows = squad_rows(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError:
      rows = None  # JSON Lines under a .json name: datasets reads it
    if rows is not None:
      return datasets.Dataset.from_list(rows)
  kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
  try:
    dataset = datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train",
                                    **kwargs)
  except Exception as e:  # a parser error deep inside datasets: name the file
    cause = e.__cause__ or e
    detail = " ".join(str(cause).split())[:300]
    raise DataError(f"cannot read {path}: {type(cause).__name__}: {detail}") from e
  if not len(dataset):
    raise DataError(f"{path} has no rows")
  return dataset


_CONLL_COLUMNS = re.compile(r"[ \t]+")


def read_conll(path: pathlib.Path, words_field: str, tags_field: str) -> datasets.Dataset:
  """A CoNLL file: a word a line, its tag in the last column (CoNLL-2003's `word POS chunk NER`
  reads as word and NER), columns separated by tabs and spaces (so a word holds neither); a
  line that is empty or only whitespace ends a sentence, and `-DOCSTART-` lines (document
  breaks) are skipped. A row per sentence: its words in `words_field`, their tags in
  `tags_field`. A line of one column, or of another number of columns than the file's first,
  is one error naming the file and line."""
  rows, words, tags = [], [], []
  columns, first = 0, 0

  def end_sentence():
    if words:
      rows.append({words_field: list(words), tags_field: list(tags)})
      words.clear()
      tags.clear()

  for number, line in enumerate(check_utf8(path).split("\n"), 1):
    parts = _CONLL_COLUMNS.split(line.strip()) if line.strip() else []
    if not parts or parts[0] == "-DOCSTART-":
      end_sentence()
      continue
    if len(parts) < 2:
      raise DataError(f"{path}:{number}: {line.strip()!r} has one column; a CoNLL line is a "
                      "word and its tag (the last column), separated by tabs or spaces")
    if not columns:
      columns, first = len(parts), number
    if len(parts) != columns:
      raise DataError(f"{path}:{number}: {len(parts)} columns ({line.strip()!r}), line {first} "
                      f"has {columns}")
    words.append(parts[0])
    tags.append(parts[-1])
  end_sentence()
  if not rows:
    raise DataError(f"{path} has no sentences (a CoNLL file: a word and its tag a line)")
  return datasets.Dataset.from_list(rows)


def split_file(source: str, split: str) -> str:
  """What a split is read from: its file in a local directory, or the hub dataset's split."""
  directory = pathlib.Path(os.path.expanduser(source))
  if directory.is_dir():
    files = sorted(p for p in directory.iterdir() if p.stem == split and p.suffix in _FORMATS)
    if files:
      return str(files[0].resolve())
  return f"{source} [{split}] (hub)"


# ---- tokenisation -------------------------------------------------------------------------


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


def _check_fields(dataset: datasets.Dataset, fields: tuple[str, ...], where: str):
  missing = [f for f in fields if f not in dataset.column_names]
  if missing:
    raise DataError(f"{where}: no field {missing} (fields there: {dataset.column_names}); "
                    "set task.text_fields / task.label_field")


def _check_texts(dataset: datasets.Dataset, fields: tuple[str, ...], words: bool, where: str):
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


def _class_ids(values: list, label_names: tuple[str, ...], where: str,
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


def _scores(values: list, where: str) -> np.ndarray:
  """Regression labels -> float32; a null, NaN or infinite one is an error naming its row."""
  for index, value in enumerate(values):
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
        or not math.isfinite(value)):
      raise DataError(f"{where}: row {row_number(where, index)}: label {value!r} is not a "
                      "finite number")
  return np.asarray(values, np.float32)


# This file's code: a tokenised split cached by `datasets` is reused only by the code that made it.
_CODE_DIGEST = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()


def tokenizer_digest(tokenizer) -> str:
  """A hash of everything that decides what a fast tokenizer returns: its backend (vocabulary,
  normaliser, pre-tokeniser with add_prefix_space, post-processor, added tokens such as entity
  markers), the Python-side settings a call reads, and the two libraries' versions."""
  import tokenizers
  import transformers
  state = {"backend": tokenizer.backend_tokenizer.to_str(), "class": type(tokenizer).__name__,
           "inputs": list(tokenizer.model_input_names),
           "sides": [tokenizer.truncation_side, tokenizer.padding_side],
           "versions": [transformers.__version__, tokenizers.__version__]}
  return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def _map_fingerprint(dataset: datasets.Dataset, tokenizer, *arguments) -> str:
  """The fingerprint of `dataset.map(tokenize)`, the key of its cached result: the input's
  fingerprint, the tokenizer's digest, this file's code and the call's `arguments`. Left to
  itself, `datasets` pickles the closure, the whole tokenizer included, on every `map`: most
  of the time a small split takes to encode."""
  from datasets.fingerprint import Hasher
  return Hasher.hash([dataset._fingerprint, tokenizer_digest(tokenizer), _CODE_DIGEST,
                      *arguments])


def encode(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int, where: str,
           labelled: bool = True) -> EncodedSplit:
  """Tokenises a split with a batched `map` and packs it into matrices: the encoder of the
  task's kind (`TaskKind.encode`).

  Unlabelled data (`labelled=False`, for prediction) gets placeholder labels: class 0, score
  0, or tag 0 on every word.
  """
  return tasks.kind_of(task_cfg).encode(dataset, tokenizer, task_cfg, max_length, where,
                                        labelled)


def _encode_sequences(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int,
                      where: str, labelled: bool, token_task: bool):
  """The tokenising that classification, regression and token tasks share: (input_ids, token
  types, lengths, each row's raw label, the tokenised rows, the rows)."""
  fields = tuple(task_cfg.text_fields)
  _check_fields(dataset, fields + ((task_cfg.label_field,) if labelled else ()), where)
  _check_texts(dataset, fields, token_task, where)
  if token_task:
    tokenizer = words_tokenizer(tokenizer)
  if not labelled:
    placeholder = ([[0] * len(words) for words in dataset[fields[0]]] if token_task
                   else [0] * len(dataset))
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in fields])
    dataset = dataset.add_column(task_cfg.label_field, placeholder)

  def tokenize(batch):
    texts = [batch[f] for f in fields]
    enc = tokenizer(*texts, truncation=True, max_length=max_length,
                    is_split_into_words=token_task)
    if token_task:  # the word of each token, None for [CLS]/[SEP]
      enc["word_ids"] = [[-1 if w is None else w for w in enc.word_ids(i)]
                         for i in range(len(enc["input_ids"]))]
    return enc

  encoded = dataset.map(tokenize, batched=True, batch_size=1000,
                        remove_columns=[c for c in dataset.column_names
                                        if c != task_cfg.label_field],
                        desc=f"tokenising {where}",
                        new_fingerprint=_map_fingerprint(dataset, tokenizer, "encode", fields,
                                                         task_cfg.label_field, max_length,
                                                         token_task))
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


def encode_classes(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int, where: str,
                   labelled: bool = True) -> EncodedSplit:
  """Classification: one text or a pair per row, its label a name or an id."""
  input_ids, token_types, lengths, raw_labels, _, _ = _encode_sequences(
      dataset, tokenizer, task_cfg, max_length, where, labelled, token_task=False)
  return EncodedSplit(input_ids, token_types, lengths,
                      _class_ids(raw_labels, tuple(task_cfg.label_names), where))


def encode_scores(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int, where: str,
                  labelled: bool = True) -> EncodedSplit:
  """Regression: one text or a pair per row, its label a finite number."""
  input_ids, token_types, lengths, raw_labels, _, _ = _encode_sequences(
      dataset, tokenizer, task_cfg, max_length, where, labelled, token_task=False)
  return EncodedSplit(input_ids, token_types, lengths, _scores(raw_labels, where))


def encode_tags(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int, where: str,
                labelled: bool = True) -> EncodedSplit:
  """Token classification: a list of words per row and a tag per word."""
  input_ids, token_types, lengths, raw_labels, encoded, dataset = _encode_sequences(
      dataset, tokenizer, task_cfg, max_length, where, labelled, token_task=True)
  fields = tuple(task_cfg.text_fields)
  n = len(input_ids)
  # Each word's tag sits on its first sub-word; every other position is IGNORE.
  labels = np.full((n, max_length), tasks.IGNORE, np.int32)
  word_index = np.full((n, max_length), -1, np.int32)
  word_labels = np.empty(n, object)
  word_ids = list(encoded["word_ids"])
  sentences = dataset[fields[0]]
  for i in range(n):
    if not isinstance(raw_labels[i], list) or len(raw_labels[i]) != len(sentences[i]):
      raise DataError(f"{where}: row {row_number(where, i)}: {task_cfg.label_field!r} is "
                      f"{raw_labels[i]!r}, not one tag per word")
    word_labels[i] = tags = _class_ids(list(raw_labels[i]), tuple(task_cfg.label_names), where,
                                       row=row_number(where, i))
    previous = -1
    for position, word in enumerate(word_ids[i]):
      if word >= 0 and word != previous:
        labels[i, position] = tags[word]
        word_index[i, position] = word
      previous = word
  return EncodedSplit(input_ids, token_types, lengths, labels, word_index, word_labels)


# ---- masked-LM text -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Masking:
  """How a masked-LM batch hides tokens, as BERT: `probability` of each row's maskable tokens
  (rounded, at least one) are chosen, as whole words with `whole_word`; of those, 80% become
  [MASK], 10% a random token of the vocabulary, 10% stay as they are. All are predicted."""

  mask_id: int
  vocab_size: int
  probability: float = 0.15
  whole_word: bool = False

  def slots(self, width: int) -> int:
    """Prediction slots per row of a batch `width` tokens wide: no row there needs more."""
    return max(1, int(self.probability * width + 0.5))


# Random streams of the masks: (stream, 1, seed, epoch, example) in training, so that an
# example is masked anew each epoch, the same way whichever batch, device or process holds it
# and after a resume; (stream, 0, 0, 0, example) in evaluation, the same masks at every eval.
MASK_STREAM = 0x6D6C6D
EVAL_MASK_KEY = (MASK_STREAM, 0, 0, 0)


def train_mask_key(seed: int, epoch: int) -> tuple[int, ...]:
  return (MASK_STREAM, 1, seed, epoch)


def mask_tokens(input_ids: np.ndarray, groups: np.ndarray, masking: Masking,
                rng: np.random.Generator, slots: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One row's (masked input_ids, target positions [slots], target ids [slots]; unused slots
  hold position 0 and IGNORE). `groups` is the row's `mask_groups`: tokens at -1 (special
  tokens, padding) are never chosen; with whole-word masking a word is chosen whole or not at
  all, and skipped if it would overshoot the count (BERT's create_pretraining_data: a short
  row whose every word has more pieces than its count predicts nothing)."""
  ids = input_ids.copy()
  positions = np.zeros(slots, np.int32)
  targets = np.full(slots, tasks.IGNORE, np.int32)
  candidates = np.flatnonzero(groups >= 0)
  if not candidates.size:
    return ids, positions, targets
  count = min(slots, max(1, int(masking.probability * candidates.size + 0.5)))
  if masking.whole_word:  # a word: a run of adjacent tokens with the same group
    cuts = np.flatnonzero((np.diff(groups[candidates]) != 0) | (np.diff(candidates) != 1)) + 1
    words = np.split(candidates, cuts)
    chosen: list[int] = []
    for w in rng.permutation(len(words)):
      if len(chosen) >= count:
        break
      if len(chosen) + len(words[w]) <= count:
        chosen.extend(words[w].tolist())
    chosen = np.sort(np.asarray(chosen, np.int64))
  else:
    chosen = np.sort(rng.choice(candidates, count, replace=False))
  draw = rng.random(chosen.size)
  ids[chosen[draw < 0.8]] = masking.mask_id
  swapped = chosen[(draw >= 0.8) & (draw < 0.9)]
  ids[swapped] = rng.integers(0, masking.vocab_size, swapped.size)
  positions[:chosen.size] = chosen
  targets[:chosen.size] = input_ids[chosen]
  return ids, positions, targets


def encode_texts(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int,
                 where: str, *, empty_ok: bool = False) -> EncodedSplit:
  """Masked LM: raw text (one field, or a pair) as unmasked rows; blank texts are dropped.

  `task.line_by_line`: each text is one row, cut at max_length. Otherwise all texts, each with
  its [CLS] ... [SEP], are concatenated and cut into rows of exactly max_length tokens, the
  remainder dropped (Hugging Face run_mlm's `group_texts`). `mask_groups` numbers the words
  (the tokenizer's word ids, unique over the whole split) for whole-word masking; special
  tokens get -1 and are never masked. `empty_ok` (a chunk of a stream): no text, or too little
  for one row, gives no rows instead of an error.
  """
  fields = tuple(task_cfg.text_fields)
  _check_fields(dataset, fields, where)
  _check_texts(dataset, fields, False, where)
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

  with _transformers_errors_only():
    encoded = dataset.map(tokenize, batched=True, batch_size=1000,
                          remove_columns=dataset.column_names, desc=f"tokenising {where}",
                          new_fingerprint=_map_fingerprint(dataset, tokenizer, "encode_texts",
                                                           fields, line_by_line, max_length))
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


# ---- masked-LM text read as a stream ------------------------------------------------------


def load_stream(source: str, subset: str, split: str) -> datasets.IterableDataset:
  """One split of a local directory or hub dataset as a `datasets` stream: rows are read as
  they are consumed, so a corpus larger than memory (or than the disk, from the hub) trains."""
  directory = pathlib.Path(os.path.expanduser(source))
  try:
    if directory.is_dir():
      path = pathlib.Path(split_file(source, split))
      if not path.is_file():
        load_split(source, subset, split)  # its one-line error: the files that are there
      if path.suffix == ".conll":
        raise DataError(f"{path}: a CoNLL file holds tagged words, not texts to stream")
      kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
      return datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train",
                                   streaming=True, **kwargs)
    return datasets.load_dataset(source, subset or None, split=split, streaming=True)
  except DataError:
    raise
  except Exception as e:  # offline, unknown name or split, unreadable file: one message
    raise DataError(f"could not stream split {split!r} of {source}"
                    f"{f' ({subset})' if subset else ''}: {type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]}") from e


class StreamedTrainBatches:
  """Masked-LM training batches from a corpus read as a stream (`data.streaming`): the corpus
  is never whole in memory, only a shuffle buffer and one chunk of texts.

  Pass p over the stream goes through a shuffle buffer of `shuffle_buffer` texts seeded by
  (seed, p) (`IterableDataset.shuffle` + `set_epoch`); its texts are tokenised in chunks of
  `chunk_texts` exactly as `encode_texts` does a split (so `group_texts` drops each chunk's
  remainder, as Hugging Face's run_mlm does per batch of its `map`); the rows fill batches of
  `batch_size` in stream order, and a pass that runs out starts the next. Batch `step` is thus
  a pure function of (seed, step) as in `TrainBatches`, but is reached by reading the stream
  from its start: a resumed run re-reads and re-tokenises what it skips (no model compute).
  Every process reads the whole stream and builds only its rows of each batch: the simplest
  way to agree on the batches; tokenising is cheap next to the model.

  Row r of step s is masked from (MASK_STREAM, 2, seed, s, r) and its dropout masks are seeded
  by r, so that a row is treated the same on whichever device or process holds it.
  `steps_per_epoch` is the run's length (a stream's epoch length is unknown): progress and
  evaluation count the run as one epoch unless eval.every_steps says otherwise.

  A stream cannot be hashed up front (a hub corpus, one larger than the disk), so a running
  digest of the rows each step consumed is kept with every checkpoint (`resume_record`); a
  resume recomputes it while it reads its way to the checkpoint's step (`check_resume`), so an
  edit to any row the run had trained on is found before it trains on.
  """

  DIGEST_KEY = "stream_rows_digest"  # the key of the digest in a checkpoint's meta
  KEPT_DIGESTS = 64  # digests kept for the steps built last (a checkpoint asks for a recent one)

  def __init__(self, stream: datasets.IterableDataset, tokenizer, task_cfg, max_length: int, *,
               batch_size: int, accum_steps: int, seed: int, buckets: tuple[int, ...],
               total_steps: int, shuffle_buffer: int, limit: int = 0, chunk_texts: int = 1000,
               where: str = "stream"):
    if batch_size % accum_steps:
      raise ValueError(f"train.batch_size {batch_size} is not divisible by "
                       f"train.grad_accum_steps {accum_steps}")
    self.stream, self.tokenizer, self.task_cfg = stream, tokenizer, task_cfg
    self.max_length, self.batch_size, self.accum_steps = max_length, batch_size, accum_steps
    self.seed, self.buckets, self.shuffle_buffer = seed, buckets, shuffle_buffer
    self.limit, self.chunk_texts, self.where = limit, chunk_texts, where
    self.steps_per_epoch = total_steps
    self._tokens: dict[int, int] = {}
    self._digests: dict[int, str] = {}  # step -> digest of the rows of steps [0, step)
    self._resumed: tuple[int, Iterator[EncodedSplit], Any] | None = None

  def _pass(self, index: int) -> Iterator[dict]:
    stream = self.stream
    if self.shuffle_buffer:
      stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
      stream.set_epoch(index)
    if self.limit:
      stream = stream.take(self.limit)
    return iter(stream)

  def _chunks(self) -> Iterator[EncodedSplit]:
    """Tokenised chunks of the stream, pass after pass."""
    for index in itertools.count():
      texts, produced = self._pass(index), False
      while rows := list(itertools.islice(texts, self.chunk_texts)):
        chunk = self._encode(rows, index)
        produced |= len(chunk) > 0
        yield chunk
      if not produced:
        raise DataError(f"{self.where}: no training row in a whole pass over the stream")

  def _encode(self, rows: list[dict], index: int) -> EncodedSplit:
    dataset, where = datasets.Dataset.from_list(rows), f"{self.where}, pass {index}"
    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar per chunk would flood the log
    try:
      return encode_texts(dataset, self.tokenizer, self.task_cfg, self.max_length, where,
                          empty_ok=True)
    finally:
      if not quiet:
        datasets.enable_progress_bars()

  def _steps(self) -> Iterator[EncodedSplit]:
    """Each step's rows, as a `batch_size`-row EncodedSplit, from step 0 on."""
    pending: list[EncodedSplit] = []
    have = 0
    for chunk in self._chunks():
      pending.append(chunk)
      have += len(chunk)
      while have >= self.batch_size:
        rows = _concat_splits(pending)
        yield rows.select(np.arange(self.batch_size))
        pending = [rows.select(np.arange(self.batch_size, len(rows)))]
        have = len(pending[0])

  def _read_to(self, start_step: int) -> tuple[Iterator[EncodedSplit], Any]:
    """The steps from `start_step` on, and the running digest of the rows of those before (read
    from the stream's start; kept from `check_resume` when it read them)."""
    if self._resumed is not None and self._resumed[0] == start_step:
      _, steps, digest = self._resumed
      self._resumed = None
      return steps, digest
    steps, digest = self._steps(), hashlib.sha256()
    for _ in range(start_step):
      digest.update(fingerprint(next(steps)).encode())
    return steps, digest

  def resume_record(self, step: int) -> dict[str, Any]:
    """What a checkpoint at `step` keeps of the stream: the digest of the rows of its steps."""
    return {self.DIGEST_KEY: self._digests[step]} if step in self._digests else {}

  def check_resume(self, step: int, meta: dict[str, Any]) -> None:
    """Reads the stream to `step` and refuses it if the rows differ from those the run had
    consumed when its checkpoint (with `meta`) was saved: the corpus was edited since."""
    saved = meta.get(self.DIGEST_KEY)
    if saved is None:  # a checkpoint from before the digest was kept
      return
    steps, digest = self._read_to(step)
    if digest.hexdigest() != saved:
      raise DataError(f"{self.where}: the rows of the first {step} steps differ from those the "
                      f"run trained on before its checkpoint at step {step}: the corpus was "
                      "edited since; restore it, or train in another --workdir")
    self._resumed = (step, steps, digest)

  def __call__(self, start_step: int, end_step: int, rows: slice = slice(None)
               ) -> Iterator[Batch]:
    if start_step >= end_step:
      return
    steps, digest = self._read_to(start_step)
    for step, split in enumerate(steps, start_step):
      digest.update(fingerprint(split).encode())
      self._digests[step + 1] = digest.hexdigest()
      self._digests.pop(step + 1 - self.KEPT_DIGESTS, None)
      indices = np.arange(self.batch_size)
      self._tokens[step] = int(split.lengths.sum())
      local = indices.reshape(self.accum_steps, -1)[:, rows].reshape(-1)
      batch = make_batch(split, local, self.buckets, batch_width(split, indices, self.buckets),
                         mask_key=(MASK_STREAM, 2, self.seed, step))
      yield {k: v.reshape((self.accum_steps, -1) + v.shape[1:]) for k, v in batch.items()}
      if step + 1 >= end_step:
        return

  def tokens(self, start_step: int, end_step: int) -> int:
    """Real tokens of the steps [start_step, end_step) this object has built."""
    return sum(self._tokens.get(step, 0) for step in range(start_step, end_step))

  def record(self, source: str, split: str) -> dict[str, Any]:
    """The stream's entry in `data_record`: where it is read and the fingerprint of its first
    batch (a resumed run must find the same)."""
    first = next(self._steps())
    return {"file": f"{split_file(source, split)} (streamed)", "examples": "streamed",
            "fingerprint": fingerprint(first)}


def _concat_splits(splits: list[EncodedSplit]) -> EncodedSplit:
  """Masked-LM splits (rows of the same width) one after the other."""
  if len(splits) == 1:
    return splits[0]
  cat = lambda name: np.concatenate([getattr(s, name) for s in splits])  # noqa: E731
  return EncodedSplit(cat("input_ids"), cat("token_type_ids"), cat("lengths"), cat("labels"),
                      mask_groups=cat("mask_groups"), masking=splits[0].masking)


@contextlib.contextmanager
def _transformers_errors_only():
  """transformers logs only errors here: its tokenizer warns about every text longer than the
  model when texts are tokenised whole, to be cut into rows afterwards."""
  import transformers
  before = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()
  try:
    yield
  finally:
    transformers.logging.set_verbosity(before)


# ---- relations between two marked entities ------------------------------------------------

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


def add_entity_markers(tokenizer, markers: tuple[str, ...]) -> list[int]:
  """Adds the four marker strings to `tokenizer` as special tokens (never split, never
  lower-cased) if it lacks them; returns their ids."""
  if len(markers) != 4:
    raise ValueError(f"task.entity_markers needs four strings (start and end of entity 1, "
                     f"then of entity 2), got {tuple(markers)}")
  tokenizer.add_tokens(list(markers), special_tokens=True)
  return tokenizer.convert_tokens_to_ids(list(markers))


def _token_span(offsets, start: int, end: int) -> tuple[int, int] | None:
  """First and one-past-last token whose characters overlap [start, end)."""
  inside = [t for t, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
  return (inside[0], inside[-1] + 1) if inside else None


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
  """The special tokens a tokenizer puts before and after one sequence ([CLS] / [SEP] for
  BERT, <s> / </s> for RoBERTa), read off what it does to a word."""
  bare = tokenizer("a", add_special_tokens=False)["input_ids"]
  full = tokenizer("a")["input_ids"]
  start = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
  return full[:start], full[start + len(bare):]


def encode_relations(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int,
                     where: str, labelled: bool = True) -> EncodedSplit:
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
  _check_fields(dataset, fields + span_fields
                + ((task_cfg.label_field,) if labelled else ()), where)
  _check_texts(dataset, fields, False, where)
  markers = tuple(task_cfg.entity_markers)
  marker_ids = tokenizer.convert_tokens_to_ids(list(markers)) if markers else []
  if markers and tokenizer.unk_token_id in marker_ids:
    raise DataError(f"the tokenizer has no token for the entity markers {markers}: "
                    "add them with input_pipeline.add_entity_markers")
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
  before, after = special_affixes(tokenizer)
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
    labels = _class_ids(list(dataset[task_cfg.label_field]), tuple(task_cfg.label_names), where)
  else:
    labels = np.zeros(n, np.int32)
  return EncodedSplit(input_ids, np.zeros((n, max_length), np.int8), lengths, labels,
                      entity_spans=entity_spans)


# ---- extractive question answering -------------------------------------------------------


def squad_rows(data: dict) -> list[dict] | None:
  """The questions of a file in SQuAD's JSON layout (`data[].paragraphs[].qas[]`) as rows of
  the hub's flat layout (`id, title, context, question, answers{text, answer_start}`; an
  unanswerable question has empty lists); None if `data` is not in that layout."""
  articles = data.get("data") if isinstance(data, dict) else None
  if not (isinstance(articles, list) and articles and "paragraphs" in articles[0]):
    return None
  rows = []
  for article in articles:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        answers = [] if qa.get("is_impossible") else qa.get("answers", [])
        rows.append({"id": str(qa["id"]), "title": article.get("title", ""),
                     "context": paragraph["context"], "question": qa["question"],
                     "answers": {"text": [a["text"] for a in answers],
                                 "answer_start": [int(a["answer_start"]) for a in answers]}})
  return rows


def _gold_answers(value, context: str, where: str, row: int) -> tuple[list[str], list[int]]:
  """A row's `answers` ({text: [...], answer_start: [...]}, empty lists when unanswerable),
  each checked to point at its text in the context."""
  if not (isinstance(value, dict) and isinstance(value.get("text"), list)
          and isinstance(value.get("answer_start"), list)
          and len(value["text"]) == len(value["answer_start"])):
    raise DataError(f"{where}: row {row}: answers is {value!r}, not {{'text': [...], "
                    "'answer_start': [...]}} of equal lengths")
  for text, start in zip(value["text"], value["answer_start"]):
    if not isinstance(start, int) or context[start:start + len(text)] != text:
      raise DataError(f"{where}: row {row}: the answer {text!r} is not at character {start} "
                      "of its context")
  return list(value["text"]), list(value["answer_start"])


def _answer_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int]:
  """The first and last context token of characters [start, end) in a window, or (0, 0)
  (the [CLS] position: no answer here) when the window does not hold all of them."""
  context = np.flatnonzero(offsets[:, 0] >= 0)
  if not (offsets[context[0], 0] <= start and offsets[context[-1], 1] >= end):
    return 0, 0
  first = context[offsets[context, 1] > start][0]
  last = context[offsets[context, 0] < end][-1]
  return int(first), int(last)


def encode_questions(dataset: datasets.Dataset, tokenizer, task_cfg, max_length: int,
                     where: str, labelled: bool = True) -> EncodedSplit:
  """Question + context pairs as windows of `max_length` tokens, as Hugging Face's run_qa does:
  the question first and whole, the context cut into windows that overlap by
  `task.doc_stride` tokens. Each window's label is the first gold answer's first and last
  token if the window holds all of it, else (0, 0), the [CLS] position (also for questions
  without an answer). `offsets` maps every context token back to its characters, so that an
  answer is always a span of the original context.
  """
  question_field, context_field = tuple(task_cfg.text_fields)
  fields = (question_field, context_field)
  _check_fields(dataset, fields + ((task_cfg.label_field,) if labelled else ()), where)
  _check_texts(dataset, fields, False, where)
  questions = [q.lstrip() for q in dataset[question_field]]  # leading blanks waste the window
  contexts = list(dataset[context_field])
  ids = (list(dataset["id"]) if "id" in dataset.column_names
         else [str(i) for i in range(len(dataset))])
  golds = ([_gold_answers(a, c, where, row_number(where, i)) for i, (a, c) in
            enumerate(zip(dataset[task_cfg.label_field], contexts))] if labelled
           else [([], [])] * len(dataset))
  room = max_length - task_cfg.doc_stride
  for i, question in enumerate(questions):
    if (len(tokenizer(question, add_special_tokens=False)["input_ids"])
        + tokenizer.num_special_tokens_to_add(pair=True) >= room):
      raise DataError(f"{where}: row {row_number(where, i)}: the question takes too much of "
                      f"data.max_length={max_length} to leave windows of context with "
                      f"task.doc_stride={task_cfg.doc_stride}")
  encoded = tokenizer(questions, contexts, truncation="only_second", max_length=max_length,
                      stride=task_cfg.doc_stride, return_overflowing_tokens=True,
                      return_offsets_mapping=True)
  n = len(encoded["input_ids"])
  input_ids = np.zeros((n, max_length), np.int32)
  token_types = np.zeros((n, max_length), np.int8)
  lengths = np.zeros(n, np.int32)
  offsets = np.full((n, max_length, 2), -1, np.int32)
  labels = np.zeros((n, 2), np.int32)
  feature_example = np.asarray(encoded["overflow_to_sample_mapping"], np.int32)
  for f in range(n):
    length = len(encoded["input_ids"][f])
    lengths[f] = length
    input_ids[f, :length] = encoded["input_ids"][f]
    token_types[f, :length] = encoded["token_type_ids"][f]
    in_context = np.asarray([s == 1 for s in encoded.sequence_ids(f)])
    offsets[f, :length][in_context] = np.asarray(encoded["offset_mapping"][f])[in_context]
    texts, starts = golds[feature_example[f]]
    if texts:
      labels[f] = _answer_tokens(offsets[f], starts[0], starts[0] + len(texts[0]))
  examples = [{"id": str(ids[i]), "context": contexts[i], "answers": golds[i][0]}
              for i in range(len(dataset))]
  return EncodedSplit(input_ids, token_types, lengths, labels, offsets=offsets,
                      feature_example=feature_example, examples=examples)


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


def data_record(data_cfg, splits: dict[str, EncodedSplit]) -> dict[str, Any]:
  """What a run trains and evaluates on: per split, where it was read, how many examples, and
  their fingerprint (saved as `<workdir>/data.json`; a resumed run must find the same)."""
  source = resolve_source(data_cfg)
  amount = data_cfg.get("validation_from_train", 0)
  train_split = data_cfg.get("train_split", "train")

  def origin(name: str) -> str:
    if amount and name == HOLDOUT_SPLIT:
      return (f"{split_file(source, train_split)} (validation_from_train={amount}, seed "
              f"{HOLDOUT_SEED})")
    return split_file(source, name)

  return {name: {"file": origin(name), "examples": len(split),
                 "fingerprint": fingerprint(split)} for name, split in splits.items()}


def data_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """What differs between two `data_record`s, one line each."""
  changes = []
  for name in sorted(set(saved) | set(current)):
    old, new = saved.get(name, {}), current.get(name, {})
    for key in ("file", "examples", "fingerprint"):
      if old.get(key) != new.get(key):
        changes.append(f"{name} {key}: {old.get(key)} -> {new.get(key)}")
  return changes


# The tokenizer class `AutoTokenizer` chooses for each model family we train (transformers'
# TOKENIZER_MAPPING_NAMES; tests/test_families.py checks that they agree).
FAMILY_TOKENIZERS = {"bert": "BertTokenizer", "roberta": "RobertaTokenizer",
                     "xlm-roberta": "XLMRobertaTokenizer", "electra": "BertTokenizer"}


def _family_tokenizer_class(path: pathlib.Path):
  """The class `AutoTokenizer` would load `path` with, when that is certain without asking it:
  a checkpoint directory of one of our families whose tokenizer_config.json declares that
  family's class (no custom code). `AutoTokenizer` imports transformers' configuration module
  and torch with it, seconds at every start of a run; otherwise None, and it decides."""
  try:
    declared = json.loads((path / "tokenizer_config.json").read_text())
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
  except (OSError, ValueError, AttributeError):
    return None
  name = FAMILY_TOKENIZERS.get(model_type)
  if (name is None or "auto_map" in declared
      or str(declared.get("tokenizer_class")).removesuffix("Fast") != name):
    return None
  import transformers
  return getattr(transformers, name)


def load_tokenizer(path: str | os.PathLike, **kwargs):
  """The fast tokenizer of a model directory (WordPiece, byte-level BPE or SentencePiece, of
  the class `AutoTokenizer` finds; `kwargs` go to `from_pretrained`). One whose model has no
  token types (RoBERTa's, XLM-R's) still returns `token_type_ids`, all 0, so that every
  family's splits and batches have the same fields."""
  tokenizer_class = _family_tokenizer_class(pathlib.Path(path))
  if tokenizer_class is None:
    from transformers import AutoTokenizer as tokenizer_class
  tokenizer = tokenizer_class.from_pretrained(str(path), **kwargs)
  if not tokenizer.is_fast:
    raise DataError(f"the tokenizer in {path} is not a fast tokenizer (no tokenizer.json?)")
  if "token_type_ids" not in tokenizer.model_input_names:
    tokenizer.model_input_names = [*tokenizer.model_input_names, "token_type_ids"]
  return tokenizer


def words_tokenizer(tokenizer):
  """`tokenizer` for pre-split words (`is_split_into_words`). A byte-level BPE tokenizer
  (RoBERTa's) reads the space before a word as part of it ('Ġword'): without add_prefix_space
  it would tokenise every word as the start of a text, unlike the same word in running text.
  Such a tokenizer is reloaded with add_prefix_space=True (what transformers asks for words);
  any other is returned as it is."""
  from tokenizers import pre_tokenizers
  pre = tokenizer.backend_tokenizer.pre_tokenizer
  if not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space:
    return tokenizer
  return load_tokenizer(tokenizer.name_or_path, add_prefix_space=True)


# A validation split carved out of train (`data.validation_from_train`): the same rows for
# every config.seed, so that seeds are compared on one split.
HOLDOUT_SPLIT = "validation"
HOLDOUT_SEED = 0


def holdout_size(amount: float, n: int) -> int:
  """`data.validation_from_train` as a number of rows of an `n`-row train split: a fraction
  when below 1, else a count."""
  size = round(amount * n) if amount < 1 else int(amount)
  if amount < 0 or (amount >= 1 and amount != int(amount)) or not 0 < size < n:
    raise DataError(f"data.validation_from_train={amount} must be a fraction in (0, 1) or a "
                    f"whole number of rows, leaving rows of the {n:,} to train on")
  return size


def holdout_indices(labels: list, size: int, stratify: bool) -> np.ndarray:
  """Sorted row indices of a `size`-row validation split drawn from `len(labels)` rows with
  the fixed `HOLDOUT_SEED`; `stratify` keeps each label's share (largest remainders decide the
  rounding), so a rare class is neither lost nor inflated."""
  order = np.random.default_rng(HOLDOUT_SEED).permutation(len(labels))
  if not stratify:
    return np.sort(order[:size])
  groups: dict[str, list[int]] = {}
  for i in order:
    groups.setdefault(repr(labels[i]), []).append(int(i))
  keys = sorted(groups)
  exact = {k: size * len(groups[k]) / len(labels) for k in keys}
  quota = {k: math.floor(exact[k]) for k in keys}
  for k in sorted(keys, key=lambda k: (quota[k] - exact[k], k))[:size - sum(quota.values())]:
    quota[k] += 1
  return np.sort(np.concatenate([np.asarray(groups[k][:quota[k]], np.int64) for k in keys]))


def _read_split(data_cfg, task_cfg, source: str, split: str) -> tuple[datasets.Dataset, str]:
  """The rows of `split` and how to name them in messages; with `data.validation_from_train`
  the train split loses the rows that make up the 'validation' split."""
  amount = data_cfg.get("validation_from_train", 0)
  train_split = data_cfg.get("train_split", "train")
  kind = tasks.kind_of(task_cfg)
  conll = kind.conll_fields(task_cfg)
  if not amount or split not in (train_split, HOLDOUT_SPLIT):
    return load_split(source, data_cfg.subset, split, conll), f"{source} [{split}]"
  rows = load_split(source, data_cfg.subset, train_split, conll)
  # Stratified by label for classification; for the other kinds only the number of rows counts.
  field = kind.holdout_field(task_cfg)
  _check_fields(rows, (field,), f"{source} [{train_split}]")
  held = holdout_indices(rows[field], holdout_size(amount, len(rows)),
                         stratify=kind.stratify_holdout)
  if split == HOLDOUT_SPLIT:
    return rows.select(held), SplitRows(f"{source} [{train_split}, the rows held out for "
                                        f"{split}]", held)
  kept = np.setdiff1d(np.arange(len(rows)), held)
  return rows.select(kept), SplitRows(f"{source} [{train_split}, without the rows held out]",
                                      kept)


def _tag_rows(dataset: datasets.Dataset, task_cfg, where: str) -> Iterator[tuple[int, list]]:
  """(file row, tags) of each row of a token-task split whose tags are names."""
  _check_fields(dataset, (task_cfg.label_field,), where)
  for index, tags in enumerate(dataset[task_cfg.label_field]):
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
      raise DataError(f"{where}: row {row_number(where, index)}: {task_cfg.label_field!r} is "
                      f"{tags!r}, not a tag name per word: task.label_names is empty, so the "
                      "names are read from the training split (or list them there)")
    yield row_number(where, index), tags


def training_tags(data_cfg, task_cfg) -> tuple[str, ...]:
  """A token task's tag names when `task.label_names` is empty: every tag of the training
  split, sorted, "O" first. A tag of an evaluation split that the training split lacks is
  an error naming it (the model could never predict it)."""
  source = resolve_source(data_cfg)
  train_split = data_cfg.get("train_split", "train")
  dataset, where = _read_split(data_cfg, task_cfg, source, train_split)
  found = {tag for _, tags in _tag_rows(dataset, task_cfg, where) for tag in tags}
  names = tuple(sorted(found, key=lambda tag: (tag != "O", tag)))
  if len(names) < 2:
    raise DataError(f"{where}: the tags of the training split are {list(names)}: a token task "
                    "needs at least two (task.label_names is empty, so they are read there)")
  for split in data_cfg.get("eval_splits", ()):
    dataset, where = _read_split(data_cfg, task_cfg, source, split)
    if data_cfg.get("eval_examples", 0):
      dataset = dataset.select(range(min(data_cfg.eval_examples, len(dataset))))
    for row, tags in _tag_rows(dataset, task_cfg, where):
      unknown = [tag for tag in tags if tag not in found]
      if unknown:
        raise DataError(f"{where}: row {row}: tag {unknown[0]!r} is not a tag of the training "
                        f"split {list(names)}, where the tags are read from (task.label_names "
                        "is empty): list every tag in task.label_names to evaluate it")
  return names


def load_encoded(data_cfg, task_cfg, tokenizer, split: str, limit: int = 0) -> EncodedSplit:
  """Reads, optionally truncates to the first `limit` examples, and tokenises one split."""
  start = time.time()
  source = resolve_source(data_cfg)
  dataset, where = _read_split(data_cfg, task_cfg, source, split)
  if limit:
    dataset = dataset.select(range(min(limit, len(dataset))))
  encoded = encode(dataset, tokenizer, task_cfg, data_cfg.max_length, where)
  if split != data_cfg.get("train_split", "train"):
    tasks.kind_of(task_cfg).check_scorable(task_cfg, encoded, where)
  truncated = int(np.sum(encoded.lengths >= data_cfg.max_length))
  logging.info("%s: %d examples, mean %.1f tokens, %d at max_length %d (%.1fs)", where,
               len(encoded), encoded.lengths.mean(), truncated, data_cfg.max_length,
               time.time() - start)
  return encoded


# ---- batches ------------------------------------------------------------------------------


def bucket_length(longest: int, buckets: tuple[int, ...]) -> int:
  """The smallest bucket that holds `longest` tokens."""
  for b in buckets:
    if longest <= b:
      return b
  raise ValueError(f"sequence of {longest} tokens exceeds the largest bucket {buckets[-1]}")


def batch_width(split: EncodedSplit, indices: np.ndarray, buckets: tuple[int, ...]) -> int:
  """The bucket that holds the longest of rows `indices` (-1: a padding row)."""
  real = indices[indices >= 0]
  return bucket_length(int(split.lengths[real].max()) if real.size else 1, buckets)


def make_batch(split: EncodedSplit, indices: np.ndarray, buckets: tuple[int, ...],
               width: int | None = None, mask_key: tuple[int, ...] = EVAL_MASK_KEY) -> Batch:
  """Rows `indices` (-1: a padding row) padded to `width` (default: their bucket length).

  `example_index` is each row's index in the split (-1 for padding): it seeds the row's dropout
  masks and tells the host where each row's output belongs. A masked-LM split's rows are
  masked here, each from the random stream (*mask_key, its index): `masked_positions` and
  `labels` are [rows, Masking.slots(width)].
  """
  real = indices >= 0
  rows = np.where(real, indices, 0)
  lengths = np.where(real, split.lengths[rows], 1)
  if width is None:
    width = batch_width(split, indices, buckets)
  labels = split.labels[rows]
  if split.word_index is not None:  # token tasks: a tag per position
    labels = labels[:, :width]
  extra = {} if split.entity_spans is None else {"entity_spans": split.entity_spans[rows]}
  input_ids = np.where(real[:, None], split.input_ids[rows, :width], 0)
  if split.masking is not None:
    slots = split.masking.slots(width)
    positions = np.zeros((len(indices), slots), np.int32)
    labels = np.full((len(indices), slots), tasks.IGNORE, np.int32)
    for r in np.flatnonzero(real):
      rng = np.random.default_rng((*mask_key, int(indices[r])))
      input_ids[r], positions[r], labels[r] = mask_tokens(
          input_ids[r], split.mask_groups[indices[r], :width], split.masking, rng, slots)
    extra["masked_positions"] = positions
  return {
      "input_ids": input_ids,
      "attention_mask": (np.arange(width) < lengths[:, None]).astype(np.int32),
      "token_type_ids": split.token_type_ids[rows, :width].astype(np.int32),
      "labels": labels,
      "example_mask": real.astype(np.float32),
      "example_index": np.where(real, indices, -1).astype(np.int32),
      **extra,
  }


# A batch order: (each example's length, batch size, the epoch's generator) -> example indices;
# the first steps_per_epoch * batch_size of them, in order, make the epoch's batches.
BatchOrder = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
BATCH_ORDERS: dict[str, BatchOrder] = {}


def register_batch_order(name: str, order: BatchOrder) -> None:
  """Makes `order` selectable as `config.data.batch_order = name` (e.g. an experiment that
  feeds another trainer's batch order; experiments/reference.py)."""
  BATCH_ORDERS[name] = order


def shuffled_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, *,
                   group_by_length: int = 0, steps: int | None = None) -> np.ndarray:
  """The default order: a permutation; with `group_by_length=m`, each run of m batches is
  sorted by length before being cut, and the batches are shuffled again."""
  steps = len(lengths) // batch_size if steps is None else steps
  order = rng.permutation(len(lengths))[:steps * batch_size]
  if group_by_length:
    chunk = group_by_length * batch_size
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")]
                            for c in np.split(order, range(chunk, len(order), chunk))])
    order = order.reshape(steps, batch_size)[rng.permutation(steps)].reshape(-1)
  return order


class TrainBatches:
  """The training batches: batch `step` is a pure function of (seed, epoch, position).

  An epoch is a permutation of the split drawn from (seed, epoch), cut into full batches (the
  remainder is dropped and differs from epoch to epoch). With `group_by_length=m`, each run of
  m batches is sorted by length before being cut, and the batches are shuffled again: batches
  of similar lengths waste less padding (Hugging Face's `group_by_length`). `order` names a
  registered `BatchOrder` to use instead ('' = this one).
  """

  def __init__(self, split: EncodedSplit, *, batch_size: int, accum_steps: int, seed: int,
               buckets: tuple[int, ...], group_by_length: int = 0, order: str = ""):
    if batch_size % accum_steps:
      raise ValueError(f"train.batch_size {batch_size} is not divisible by "
                       f"train.grad_accum_steps {accum_steps}")
    self.split, self.batch_size, self.accum_steps = split, batch_size, accum_steps
    self.seed, self.buckets, self.group_by_length = seed, buckets, group_by_length
    self.steps_per_epoch = len(split) // batch_size
    if not self.steps_per_epoch:
      raise DataError(f"the training split has {len(split)} examples, fewer than one batch "
                      f"of {batch_size}")
    if order and order not in BATCH_ORDERS:
      raise DataError(f"data.batch_order {order!r} is not a registered batch order "
                      f"({sorted(BATCH_ORDERS)}; '' is the default)")
    self.order = order
    self._orders: dict[int, np.ndarray] = {}

  def epoch_order(self, epoch: int) -> np.ndarray:
    """[steps_per_epoch, batch_size] example indices of one epoch."""
    if epoch not in self._orders:
      rng = np.random.default_rng([self.seed, epoch])
      if self.order:
        order = np.asarray(BATCH_ORDERS[self.order](self.split.lengths, self.batch_size, rng))
      else:
        order = shuffled_order(self.split.lengths, self.batch_size, rng,
                               group_by_length=self.group_by_length, steps=self.steps_per_epoch)
      order = order[:self.steps_per_epoch * self.batch_size]
      self._orders = {epoch: order.reshape(self.steps_per_epoch, self.batch_size)}
    return self._orders[epoch]

  def batch(self, step: int, rows: slice = slice(None)) -> Batch:
    """Batch of optimizer step `step`, as `[accum_steps, micro_batch, ...]`: of each
    micro-batch, only `rows` (this process's block; default all), padded to the bucket of the
    whole batch."""
    epoch, position = divmod(step, self.steps_per_epoch)
    indices = self.epoch_order(epoch)[position]
    width = batch_width(self.split, indices, self.buckets)
    local = indices.reshape(self.accum_steps, -1)[:, rows]
    batch = make_batch(self.split, local.reshape(-1), self.buckets, width,
                       mask_key=train_mask_key(self.seed, epoch))
    return {k: v.reshape((self.accum_steps, -1) + v.shape[1:]) for k, v in batch.items()}

  def resume_record(self, step: int) -> dict[str, Any]:
    """What a checkpoint at `step` keeps of the batches (nothing: they are a function of the
    split, whose fingerprint data.json holds)."""
    return {}

  def check_resume(self, step: int, meta: dict[str, Any]) -> None:
    """Nothing to check: data.json's fingerprint covers the whole split."""

  def tokens(self, start_step: int, end_step: int) -> int:
    """Real (unpadded) tokens in the batches of steps [start_step, end_step)."""
    total = 0
    for step in range(start_step, end_step):
      epoch, position = divmod(step, self.steps_per_epoch)
      total += int(self.split.lengths[self.epoch_order(epoch)[position]].sum())
    return total

  def __call__(self, start_step: int, end_step: int, rows: slice = slice(None)
               ) -> Iterator[Batch]:
    for step in range(start_step, end_step):
      yield self.batch(step, rows)


def eval_batches(split: EncodedSplit, batch_size: int, buckets: tuple[int, ...],
                 rows: slice = slice(None)) -> Iterator[Batch]:
  """Batches of `batch_size` covering every example once, in order of length; of each, only
  `rows` (this process's block; default all), padded to the bucket of the whole batch.

  Sorting by length keeps padding small; the caller scatters outputs back by `example_index`.
  The last batch is filled up to `batch_size` with padding rows (index -1, example_mask 0), so
  every process runs the same number of batches.
  """
  order = np.argsort(split.lengths, kind="stable")
  for start in range(0, len(order), batch_size):
    indices = order[start:start + batch_size]
    padded = np.concatenate([indices, np.full(batch_size - len(indices), -1)])
    yield make_batch(split, padded[rows], buckets, batch_width(split, padded, buckets))


def prefetch(iterator: Iterator[Any], put: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
  """Runs `put` (building and placing the next batches) in a thread, `size` items ahead."""
  items: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def offer(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def worker():
    try:
      for item in iterator:
        if not offer(put(item)):
          return
      offer(done)
    except BaseException as e:  # re-raised in the consumer
      offer(e)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while (item := items.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:  # (the consumer closes the generator): the worker must not outlive it mid-transfer
    stop.set()
    thread.join()
