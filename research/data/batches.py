"""Batches: length buckets, the training order, evaluation batches, and prefetching.

Every batch is padded to the smallest of a few `length_buckets` that fits its longest sequence,
so XLA compiles at most one program per bucket. The training order is a pure function of (seed,
epoch), so a run resumed at step k sees the batches an uninterrupted run sees. Eval batches cover
each example exactly once; the last one is filled up with padding rows whose `example_mask` is 0
(and `example_index` -1). Masked-LM rows are masked as their batch is built
(research.data.masking): the masks resume and split across devices as the batches do.

Several processes: each holds the whole split (the batch order and every batch's bucket need
all lengths), but builds and places only its own block of rows of each batch (`rows`): the
batch's width is that of the whole global batch, so every process compiles the same shapes.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np

from research.data.encoded import IGNORE, EncodedSplit
from research.data.masking import EVAL_MASK_KEY, mask_tokens, train_mask_key
from research.errors import DataError

Batch = dict[str, np.ndarray]


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
  if split.teacher_logits is not None:  # a token task's: a row of logits per position
    teacher = split.teacher_logits[rows]
    extra["teacher_logits"] = teacher[:, :width] if teacher.ndim == 3 else teacher
  input_ids = np.where(real[:, None], split.input_ids[rows, :width], 0)
  if split.masking is not None:
    slots = split.masking.slots(width)
    positions = np.zeros((len(indices), slots), np.int32)
    labels = np.full((len(indices), slots), IGNORE, np.int32)
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
