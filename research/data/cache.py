"""The key under which `datasets` caches a tokenised split: a split is reused only by the same
input, tokenizer, arguments and code.

The code is that of every file that shapes encoded rows: this package's modules and the module
of each class the encoding task kind derives from (research/tasks/, or a researcher's own kind
elsewhere). Editing any of them is a cache miss, never a stale split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import sys

_PACKAGE = pathlib.Path(__file__).resolve().parent


def _file_digest(path: str) -> str:
  stat = pathlib.Path(path).stat()
  return _digest_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
  """A file's sha256, read once per version (every `map` asks)."""
  del mtime_ns, size  # the key: a file edited since is read again
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def code_digest(owner: type) -> str:
  """A digest of the code that shapes a split encoded by the task kind class `owner`: every
  module of research/data/ and the module of each class in `owner`'s hierarchy (a class with no
  source file, e.g. one typed into a session, counts by its qualified name)."""
  parts = [_file_digest(str(path)) for path in sorted(_PACKAGE.glob("*.py"))]
  for cls in owner.__mro__:
    if cls is object:
      continue
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    parts.append(_file_digest(path) if path else f"{cls.__module__}.{cls.__qualname__}")
  return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def tokenizer_digest(tokenizer) -> str:
  """A hash of everything that decides what a fast tokenizer returns: its backend (vocabulary,
  normaliser, pre-tokeniser with add_prefix_space, post-processor, added tokens such as entity
  markers), the Python-side settings a call reads, and the two libraries' versions. Not the
  backend's truncation and padding: each call sets them from its own arguments (part of the
  key), so a tokenizer that has encoded one split keys the next one as a fresh one does."""
  import tokenizers
  import transformers
  backend = json.loads(tokenizer.backend_tokenizer.to_str())
  backend.pop("truncation", None)
  backend.pop("padding", None)
  state = {"backend": backend, "class": type(tokenizer).__name__,
           "inputs": list(tokenizer.model_input_names),
           "sides": [tokenizer.truncation_side, tokenizer.padding_side],
           "versions": [transformers.__version__, tokenizers.__version__]}
  return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def map_fingerprint(dataset, tokenizer, owner: type, *arguments) -> str:
  """The fingerprint of `dataset.map(tokenize)`, the key of its cached result: the input's
  fingerprint, the tokenizer's digest, the code that shapes the rows (`code_digest(owner)`)
  and the call's `arguments`. Left to itself, `datasets` pickles the closure, the whole
  tokenizer included, on every `map`: most of the time a small split takes to encode."""
  from datasets.fingerprint import Hasher
  return Hasher.hash([dataset._fingerprint, tokenizer_digest(tokenizer), code_digest(owner),
                      *arguments])
