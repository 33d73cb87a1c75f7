"""Weights & Biases logging (writers.MetricWriter with wandb_project), in W&B's offline mode.

What W&B logged is read back from the run's transaction log (`run-<id>.wandb`): a LevelDB-style
log of protobuf records, the file `wandb sync` uploads. wandb is optional: without it these
tests skip.
"""

import json
import pathlib
import struct
import sys

import numpy as np
import pytest

from helpers import jsonl_history, write_steps
from research import writers

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True, scope="module")
def _stop_wandb_service():
  """wandb.init starts a wandb-core process that would otherwise live until the suite ends."""
  yield
  wandb.teardown()


def read_records(path: pathlib.Path):
  """The protobuf records of a `.wandb` file: a 7-byte header (":W&B", magic 0xBEE1, version
  0), then 32 KiB blocks of chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
  data = path.read_bytes()
  assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
  position, pending = 7, b""
  while position + 7 <= len(data):
    if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
      position += 32768 - position % 32768
      continue
    _, length, kind = struct.unpack("<IHB", data[position:position + 7])
    pending += data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record
      pending = b""


def offline_runs(workdir: pathlib.Path) -> list[dict]:
  """Each offline run under `<workdir>/wandb`, oldest first: its id, name, project, config and
  history ({step: {key: value}}, W&B's own `_` keys left out)."""
  # run.finish() can return before wandb-core has written all of the file (seen with 0.31: a
  # resumed run's file without its `run` record); the process's exit waits, as teardown does.
  wandb.teardown()
  runs = []
  for folder in sorted((workdir / "wandb").glob("offline-run-*")):
    [path] = folder.glob("run-*.wandb")
    run = {"file": path.name, "config": {}, "history": {}}
    for record in read_records(path):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        run.update(id=record.run.run_id, name=record.run.display_name,
                   project=record.run.project)
        run["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
      elif kind == "config":
        run["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
      elif kind == "history":
        row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
               for i in record.history.item}
        assert record.history.step.num == row["_step"]
        run["history"][record.history.step.num] = {k: v for k, v in row.items()
                                                   if not k.startswith("_")}
    runs.append(run)
  return runs


def test_logs_the_scalars_config_and_record(tmp_path):
  writer = writers.MetricWriter(tmp_path, wandb_project="research-test",
                                wandb_config={"seed": 0, "train": {"batch_size": 16}})
  write_steps(writer, range(1, 5))
  record = {"versions": {"jax": "0.x", "wandb": wandb.__version__}, "commit": "0123abc",
            "examples_per_sec": 123.5}
  writer.record(record)
  writer.close()

  [run] = offline_runs(tmp_path)
  run_id = (tmp_path / "wandb_id.txt").read_text().strip()
  assert (run["id"], run["file"]) == (run_id, f"run-{run_id}.wandb")
  assert (run["name"], run["project"]) == (tmp_path.name, "research-test")
  assert run["history"] == jsonl_history(tmp_path)
  assert run["history"][4] == {"train/loss": float(np.float32(0.25)), "train/learning_rate": 4e-3,
                               "eval/accuracy": 0.54, "eval/examples": 50}
  assert sorted(run["history"]) == [1, 2, 3, 4]
  assert run["config"]["seed"] == 0 and run["config"]["train"] == {"batch_size": 16}
  assert run["config"]["record"] == record


def test_a_resumed_run_continues_the_same_run(tmp_path, monkeypatch):
  writer = writers.MetricWriter(tmp_path, wandb_project="research-test")
  write_steps(writer, range(1, 5))
  writer.close()
  run_id = (tmp_path / "wandb_id.txt").read_text().strip()
  # As W&B's server answers a resumed run whose steps 1 and 2 it holds (step 3 not yet sent when
  # the run stopped): the next step is 3. Offline, there is no server to say so.
  monkeypatch.setattr(wandb.sdk.wandb_run.Run, "starting_step", property(lambda run: 3))
  writer = writers.MetricWriter(tmp_path, resume_step=2, wandb_project="research-test")
  write_steps(writer, range(2, 7))  # resumed from the checkpoint at step 2
  writer.close()

  first, resumed = offline_runs(tmp_path)
  assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
  assert first["id"] == resumed["id"] == run_id
  assert resumed["file"] == f"run-{run_id}.wandb"
  assert sorted(first["history"]) == [1, 2, 3, 4]
  assert sorted(resumed["history"]) == [3, 4, 5, 6]  # step 2 is on the server already
  assert {**first["history"], **resumed["history"]} == jsonl_history(tmp_path)


def test_without_a_project_there_is_no_wandb(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  write_steps(writer, range(1, 3))
  writer.record({"commit": "0123abc"})
  writer.close()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]
  # A fresh process does not import wandb either: tests/test_writers.py.


def test_without_wandb_installed_the_error_says_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
  with pytest.raises(writers.WorkdirError, match="wandb is not installed: pip install wandb"):
    writers.MetricWriter(tmp_path, wandb_project="research-test")
  assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_id.txt").exists()


def test_a_run_with_log_wandb_project_logs_its_metrics_and_record(tmp_path):
  from conftest import require_data
  from helpers import tiny_config
  from research import train
  require_data("sst2")
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(**{"log.wandb_project": "research-test",
                                          "train.num_epochs": 1.0}), workdir)
  [run] = offline_runs(workdir)
  assert run["history"] == jsonl_history(workdir)
  assert sorted(run["history"]) == list(range(1, 13))  # every train step, and the eval at 12
  assert run["config"]["train"]["num_epochs"] == 1.0
  record = json.loads((workdir / "run.json").read_text())
  assert run["config"]["record"] == record  # commit, versions, data source, throughput


def test_a_failed_wandb_start_writes_nothing(tmp_path, monkeypatch):
  """Not logged in: the run stops at W&B's start with one line, and leaves no config.json,
  run.json, checkpoints/ or wandb_id.txt behind (a failed start writes nothing)."""
  from conftest import require_data
  from helpers import tiny_config
  from research import train
  require_data("sst2")
  monkeypatch.setenv("WANDB_MODE", "online")
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no W&B settings
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home"))
  (tmp_path / "run").mkdir()
  with pytest.raises(writers.WorkdirError, match=r"^W&B could not start the run "
                     r"\(log.wandb_project=research-test\): No API key configured"):
    train.train_and_evaluate(tiny_config(**{"log.wandb_project": "research-test"}),
                             tmp_path / "run")
  assert list((tmp_path / "run").iterdir()) == []
