"""Masked-LM masking, done as each batch is built: BERT's 80/10/10 rule, token or whole-word.

A row's masks are drawn from its own random stream, keyed by (seed, epoch, example) in training:
an example is masked anew each epoch, and the same way whichever batch, device or process holds
it and after a resume.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.data.encoded import IGNORE


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
  targets = np.full(slots, IGNORE, np.int32)
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
