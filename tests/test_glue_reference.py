"""The reference side of experiments/glue_minilm: transformers' Trainer on the same checkpoint.

Its numbers are only worth comparing if they are computed right. The Trainer length-groups its
*eval* batches too when training uses group_by_length, which once scored predictions against
labels in a different order (RTE at exactly the majority class, MRPC below it); the runner now
checks the order of every prediction. This runs it on 64 RTE examples.
"""

import json
import os
import subprocess
import sys

from conftest import REPO, require_data


def test_reference_run_scores_predictions_in_dataset_order(tmp_path):
  require_data("rte")
  result = subprocess.run(
      [sys.executable, "experiments/glue_minilm/run.py", "--smoke", str(tmp_path),
       "--tasks", "rte", "--systems", "reference", "--seeds", "0"],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  record = json.loads((tmp_path / "results" / "rte__reference__seed0.json").read_text())
  assert 0.0 <= record["metrics"]["validation"]["accuracy"] <= 1.0
  # Training time is kept in the run folder, so a resumed run counts the time before it.
  kept = json.loads((tmp_path / "runs" / "rte" / "reference_seed0" / "train_seconds.json")
                    .read_text())
  assert 0 < kept <= record["train_seconds"]
