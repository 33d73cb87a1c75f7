"""Where a run's data is read, and reading it: files of every format we take, or a hub dataset.

A registered task (`data.local_name`) is read from, in turn: an explicit `data.dataset`
(anything but its own hub dataset), `$RESEARCH_DATA_DIR/<local_name>/` when that variable is set
(CI and tests point it at ../shared/data), its hub dataset when the hub is reachable, or the
slice shipped in the repository's `data/` when it holds what the config asks for (`locate`). A
local directory holds `<split>.jsonl|json|csv|tsv|parquet|txt|conll` (CoNLL columns,
`read_conll`; SQuAD's nested JSON, `squad_rows`). Every problem is one `DataError` naming the
file (and line).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import socket
import urllib.parse

import datasets

# The registry of named datasets: where each lives (its hub dataset, its folder). Plain data; it
# knows no task kind's code.
from research import named_tasks
from research.errors import DataError

DATA_DIR_ENV = "RESEARCH_DATA_DIR"
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
            ".parquet": "parquet", ".txt": "text",  # .txt: one row per line, field "text"
            ".conll": "conll"}  # a word and its tag a line (`read_conll`)
# A token task reads these as CoNLL files too: its rows are lists of words, which no
# one-row-a-line table holds.
CONLL_SUFFIXES = (".conll", ".txt", ".tsv")
# The fields a .conll file's rows have when no token task names them.
CONLL_FIELDS = ("tokens", "ner_tags")
# A validation split carved out of train (`data.validation_from_train`, research.data.splits):
# its name, and the seed that draws its rows (the same for every config.seed, so that seeds are
# compared on one split).
HOLDOUT_SPLIT = "validation"
HOLDOUT_SEED = 0

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


def shipped_splits(local_name: str) -> dict[str, dict[str, int]] | None:
  """The rows of each split the repository's slice of a registered task holds
  ({split: {"examples": kept, "of": in the whole split}}); None when it ships none."""
  path = SHIPPED_DIR / local_name / "slice.json"
  return json.loads(path.read_text())["splits"] if local_name and path.is_file() else None


def _slice_shortfall(held: dict[str, dict[str, int]], data_cfg) -> list[str]:
  """What the config asks for that a shipped slice holding `held` (`shipped_splits`) lacks."""
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
  shipped, held = SHIPPED_DIR / data_cfg.local_name, shipped_splits(data_cfg.local_name)
  if held is not None:
    short = _slice_shortfall(held, data_cfg)
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
