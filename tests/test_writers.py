"""What a run writes for TensorBoard, read back as TensorBoard reads it, and what a run's start
imports (seconds each for torch and wandb, at every start of a run)."""

import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import REPO
from helpers import jsonl_history, write_steps
from research import writers


def tensorboard_history(folder) -> dict[int, dict]:
  """The scalars TensorBoard shows for a folder of event files, purges applied: {step: {tag:
  value}}; a (step, tag) shown twice fails."""
  events = event_accumulator.EventAccumulator(
      str(folder), size_guidance={event_accumulator.SCALARS: 0})
  events.Reload()
  history = {}
  for tag in events.Tags()["scalars"]:
    for event in events.Scalars(tag):
      assert tag not in history.setdefault(event.step, {}), (event.step, tag)
      history[event.step][tag] = event.value
  return history


def test_tensorboard_shows_what_metrics_jsonl_holds_after_a_resume(tmp_path):
  # The two writers' files get event_file_writer's counters 9 and 10 (or 99 and 100, ...):
  # within one second their names sort 10 before 9, which once showed the first run's steps.
  from tensorboard.summary.writer import event_file_writer
  counter = event_file_writer._global_uid  # the next file's is counter._value
  while len(str(counter._value)) == len(str(counter._value + 1)):
    counter.get()
  writer = writers.MetricWriter(tmp_path)
  write_steps(writer, range(1, 6))
  writer.close()
  # Resumed from step 2: steps 3-5 are done again, here with other values (a real resume
  # recomputes the same ones), so that what TensorBoard shows for them tells which it kept.
  writer = writers.MetricWriter(tmp_path, resume_step=2)
  write_steps(writer, range(3, 7), scale=2.0)
  writer.close()
  expected = {step: {tag: float(np.float32(value)) for tag, value in row.items()}
              for step, row in jsonl_history(tmp_path).items()}
  assert sorted(expected) == [1, 2, 3, 4, 5, 6]
  assert expected[4]["train/loss"] == float(np.float32(0.5))  # the resumed run's value
  assert tensorboard_history(tmp_path / "tensorboard") == expected


def test_starting_a_run_imports_neither_torch_nor_wandb(tmp_path):
  """The tokenizer (transformers' AutoTokenizer imports torch) and the metric writer
  (tensorboardX imports torch; wandb only with log.wandb_project), in a fresh process."""
  script = ("import pathlib, sys; sys.path.insert(0, 'tests'); from helpers import tiny_config; "
            "from research import writers; from research.models import builder; "
            "builder.build_model(tiny_config()); "
            "w = writers.MetricWriter(pathlib.Path(sys.argv[1])); "
            "w.write(1, 'train', {'loss': 1.0}); w.record({}); w.close(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'wandb', 'tensorboardX'}))")
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == "[]"


def test_a_resume_drops_a_metrics_line_cut_short_and_names_a_damaged_one(tmp_path):
  """A kill while a row was appended leaves its last line cut short: the resume drops it (its
  step came after the checkpoint) instead of a JSONDecodeError traceback; a damaged line before
  the last is one error naming the file and line."""
  path = tmp_path / "metrics.jsonl"
  rows = [f'{{"step": {step}, "split": "train", "loss": 0.{8 - step}}}' for step in (1, 2, 3)]
  path.write_text("\n".join(rows) + '\n{"step": 4, "split": "tra')
  writers.MetricWriter(tmp_path, resume_step=3).close()
  assert path.read_text() == "\n".join(rows) + "\n"
  writers.MetricWriter(tmp_path, resume_step=2).close()
  assert path.read_text() == "\n".join(rows[:2]) + "\n"
  path.write_text(rows[0] + "\n{not json\n" + rows[1] + "\n")
  with pytest.raises(writers.WorkdirError, match=rf"{path}:2 is damaged"):
    writers.MetricWriter(tmp_path, resume_step=2)
  assert path.read_text() == rows[0] + "\n{not json\n" + rows[1] + "\n"  # nothing changed
