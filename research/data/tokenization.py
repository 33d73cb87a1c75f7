"""Tokenizers: loading a checkpoint's fast tokenizer, and what every encoder asks of one.

A checkpoint of each family we train (BERT, RoBERTa, XLM-R, ELECTRA, ModernBERT, DeBERTa) loads
its fast tokenizer (WordPiece, byte-level BPE or SentencePiece). Its splits and batches have the
same fields whatever the family: a tokenizer whose model has no token types still returns them,
all 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

from research.errors import DataError


@contextlib.contextmanager
def transformers_errors_only():
  """transformers logs only errors here: its tokenizer warns about every text longer than the
  model when texts are tokenised whole, to be cut into rows afterwards."""
  import transformers
  before = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()
  try:
    yield
  finally:
    transformers.logging.set_verbosity(before)



def add_marker_tokens(tokenizer, markers: tuple[str, ...]) -> list[int]:
  """Adds marker strings (a task kind's `entity_markers`) to `tokenizer` as special tokens
  (never split, never lower-cased) if it lacks them; returns their ids."""
  tokenizer.add_tokens(list(markers), special_tokens=True)
  return tokenizer.convert_tokens_to_ids(list(markers))


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
  """The special tokens a tokenizer puts before and after one sequence ([CLS] / [SEP] for
  BERT, <s> / </s> for RoBERTa), read off what it does to a word."""
  bare = tokenizer("a", add_special_tokens=False)["input_ids"]
  full = tokenizer("a")["input_ids"]
  start = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
  return full[:start], full[start + len(bare):]



# The tokenizer class `AutoTokenizer` chooses for each model family we train (transformers'
# TOKENIZER_MAPPING_NAMES; tests/test_families.py checks that they agree).
FAMILY_TOKENIZERS = {"bert": "BertTokenizer", "roberta": "RobertaTokenizer",
                     "xlm-roberta": "XLMRobertaTokenizer", "electra": "BertTokenizer",
                     "deberta-v2": "DebertaV2Tokenizer"}


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
  a class that does not take that option (ModernBERT's plain `PreTrainedTokenizerFast`) gets it
  on the reloaded copy's pre-tokenizer. Any other tokenizer is returned as it is."""
  from tokenizers import pre_tokenizers
  pre = tokenizer.backend_tokenizer.pre_tokenizer
  if not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space:
    return tokenizer
  words = load_tokenizer(tokenizer.name_or_path, add_prefix_space=True)
  backend = words.backend_tokenizer
  if not backend.pre_tokenizer.add_prefix_space:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=True, trim_offsets=pre.trim_offsets, use_regex=pre.use_regex)
  return words


# A validation split carved out of train (`data.validation_from_train`): the same rows for
