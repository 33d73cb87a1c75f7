"""The reference side of experiments/glue_minilm: transformers' Trainer on the same checkpoint.

Its numbers are only worth comparing if they are computed right. The Trainer length-groups its
*eval* batches too when training uses group_by_length, which once scored predictions against
labels in a different order (RTE at exactly the majority class, MRPC below it); the runner now
checks the order of every prediction. This runs it on 64 RTE examples with its own sampler
(the case that went wrong; fed our batches in our order, it is the code path that
tests/test_reference_training.py checks step by step), and checks the diagnostics that change
one random stream of ours.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sklearn.metrics

from conftest import REPO, require_data
from experiments import reference
from helpers import tiny_config, train_losses
from research import train
from research.data.batches import TrainBatches


def test_reference_run_scores_predictions_in_dataset_order(tmp_path):
  require_data("rte")
  result = subprocess.run(
      [sys.executable, "experiments/glue_minilm/run.py", "--smoke", str(tmp_path),
       "--tasks", "rte", "--systems", "reference", "--seeds", "0"],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  record = json.loads((tmp_path / "results" / "rte__reference__seed0.json").read_text())
  # The reported accuracy is scikit-learn's on the predictions, in the order of the dataset's
  # labels. (The trivial baseline on these 64 examples, 32 of each class, is 0.5: the score a
  # constant prediction gets, and roughly what the order bug gave.)
  labels = [json.loads(line)["label"] for line in
            (pathlib.Path(os.environ["RESEARCH_DATA_DIR"]) / "rte" / "validation.jsonl")
            .read_text().splitlines()[:64]]
  predicted = record["predictions"]["validation"]
  assert len(predicted) == 64 and set(predicted) <= {0, 1}
  assert record["metrics"]["validation"]["accuracy"] == sklearn.metrics.accuracy_score(
      labels, predicted)
  # Training time is kept in the run folder, so a resumed run counts the time before it.
  kept = json.loads((tmp_path / "runs" / "rte" / "reference_seed0" / "train_seconds.json")
                    .read_text())
  assert 0 < kept <= record["train_seconds"]


@pytest.fixture(scope="module")
def half_epoch_losses(tmp_path_factory):
  """The training losses of half an epoch of the tiny config, as it is."""
  require_data("sst2")
  workdir = tmp_path_factory.mktemp("ours")
  train.train_and_evaluate(tiny_config(**{"train.num_epochs": 0.5}), workdir)
  return train_losses(workdir)


@pytest.mark.parametrize("option", [{"model.dropout_impl": "threefry"},
                                    {"data.batch_order": "hf_trainer"}])
def test_diagnostic_options_change_training(half_epoch_losses, tmp_path, option):
  """The runner's diagnostics are config options (threefry dropout masks; the Trainer's batch
  order, registered by the runner), never patches of the library: each changes every step."""
  reference.register_trainer_order()
  train.train_and_evaluate(tiny_config(**{"train.num_epochs": 0.5}, **option),
                           tmp_path / "diagnostic")
  ours, diagnostic = half_epoch_losses, train_losses(tmp_path / "diagnostic")
  assert ours.keys() == diagnostic.keys()
  assert all(ours[step] != diagnostic[step] for step in ours)


def test_trainer_order_walks_each_mega_batch_from_longest_to_shortest():
  class Lengths:  # all TrainBatches reads of a split to order it
    def __init__(self, lengths):
      self.lengths = lengths

    def __len__(self):
      return len(self.lengths)

  lengths = np.random.default_rng(0).integers(5, 128, 1000)
  batches = TrainBatches(Lengths(lengths), batch_size=8, accum_steps=1, seed=0,
                         buckets=(128,), group_by_length=50)
  shuffled = batches.epoch_order(0).copy()
  reference.register_trainer_order()
  order = TrainBatches(Lengths(lengths), batch_size=8, accum_steps=1, seed=0,
                       buckets=(128,), group_by_length=50,
                       order="hf_trainer").epoch_order(0)
  assert order.shape == shuffled.shape == (125, 8)
  flat = order.reshape(-1)
  assert sorted(flat) == list(range(1000))  # 125 full batches: nothing dropped here
  assert lengths[flat[0]] == lengths.max()
  mega = min(1000 // (8 * 4), 50) * 8  # the Trainer's mega-batch: 31 batches here
  for start in range(0, 1000, mega):
    seen = lengths[flat[start:start + mega]][1:]  # [0] may be the swapped-in longest
    assert (np.diff(seen) <= 0).all()
  assert not (np.diff(lengths[shuffled.reshape(-1)][:mega]) <= 0).all()  # ours is not
