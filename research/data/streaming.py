"""Masked-LM training batches from a corpus read as a stream (`data.streaming`): a corpus larger
than memory, or than the disk, trains with only a shuffle buffer and a chunk of texts in memory.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Callable, Iterator

import datasets
import numpy as np

from research.data.batches import Batch, batch_width, make_batch
from research.data.encoded import EncodedSplit, fingerprint
from research.data.masking import MASK_STREAM
from research.data.sources import split_file
from research.errors import DataError

# What turns a chunk of the stream's texts into rows (the kind's `TaskKind.encode_chunk`, its
# tokenizer and settings bound): (rows as a Dataset, where) -> an EncodedSplit, maybe of no rows.
ChunkEncoder = Callable[[datasets.Dataset, str], EncodedSplit]


class StreamedTrainBatches:
  """Masked-LM training batches from a corpus read as a stream (`data.streaming`): the corpus
  is never whole in memory, only a shuffle buffer and one chunk of texts.

  Pass p over the stream goes through a shuffle buffer of `shuffle_buffer` texts seeded by
  (seed, p) (`IterableDataset.shuffle` + `set_epoch`); its texts are tokenised in chunks of
  `chunk_texts` by `encode` exactly as the kind encodes a split (so `group_texts` drops each chunk's
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

  def __init__(self, stream: datasets.IterableDataset, encode: ChunkEncoder, *,
               batch_size: int, accum_steps: int, seed: int, buckets: tuple[int, ...],
               total_steps: int, shuffle_buffer: int, limit: int = 0, chunk_texts: int = 1000,
               where: str = "stream"):
    if batch_size % accum_steps:
      raise ValueError(f"train.batch_size {batch_size} is not divisible by "
                       f"train.grad_accum_steps {accum_steps}")
    self.stream, self.encode = stream, encode
    self.batch_size, self.accum_steps = batch_size, accum_steps
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
      return self.encode(dataset, where)
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
        rows = _concatenated(pending)
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


def _concatenated(splits: list[EncodedSplit]) -> EncodedSplit:
  """Masked-LM splits (rows of the same width) one after the other."""
  if len(splits) == 1:
    return splits[0]
  cat = lambda name: np.concatenate([getattr(s, name) for s in splits])  # noqa: E731
  return EncodedSplit(cat("input_ids"), cat("token_type_ids"), cat("lengths"), cat("labels"),
                      mask_groups=cat("mask_groups"), masking=splits[0].masking)
