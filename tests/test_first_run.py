"""A new user's first hour: the main job on a fresh clone with no shared data and no network,
config files checked as overrides are, and the run record that traces a result back."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from configs import default, sst2
from helpers import load_encoded
from research import config_lib, report, run_record, train
from research.data import sources, tokenization
from research.errors import DataError
from research.models import builder, mkl_gemm


def _checkout_files() -> list[str]:
  """The files a clone of this checkout holds: tracked ones and new ones git does not ignore
  (so that the test sees uncommitted work too); without git, the tree minus the usual litter."""
  listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others",
                           "--exclude-standard"], capture_output=True, text=True)
  if listed.returncode == 0 and listed.stdout.strip():
    return [f for f in listed.stdout.splitlines() if (REPO / f).is_file()]
  skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache"}
  return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
          if p.is_file() and not skip & set(p.relative_to(REPO).parts)]


def test_a_fresh_clone_runs_the_quick_config_offline_from_the_shipped_slice(tmp_path):
  clone = tmp_path / "clone"
  for name in _checkout_files():
    (clone / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / name, clone / name)
  assert not (clone.parent / "shared").exists()
  env = {k: v for k, v in os.environ.items() if k not in ("RESEARCH_DATA_DIR", "PYTHONPATH")}
  env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
  command = [sys.executable, "-m", "research.main", "--config", "configs/sst2.py:quick"]
  # The README's main job, shortened to 2 steps of 32 and 64 dev sentences in one length bucket.
  short = ["--config.data.train_examples=64", "--config.data.eval_examples=64",
           "--config.data.max_length=64", "--config.data.length_buckets=(64,)"]
  result = subprocess.run(command + ["--workdir", "runs/first"] + short, cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = clone / "runs" / "first"
  shipped = clone / "data" / "sst2"
  record = json.loads((workdir / "run.json").read_text())
  assert record["data"]["source"] == {"location": str(shipped), "origin": "shipped slice"}
  assert f"data: {shipped} (shipped slice)" in (workdir / "train.log").read_text()
  results = json.loads((workdir / "results.json").read_text())
  assert results["final"]["step"] == 2
  assert 0 < results["final"]["results"]["validation"]["accuracy"] < 1

  # The full config needs all 67,349 training sentences: one line saying where to get them.
  full = [sys.executable, "-m", "research.main", "--config", "configs/sst2.py"]
  result = subprocess.run(full + ["--workdir", "runs/full"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: no data for 'sst2': RESEARCH_DATA_DIR is not set; the hub (nyu-mll/glue) is "
      f"offline or unreachable; the repository's slice {shipped} has train: the first 8,000 of "
      "67,349 rows, the config asks for all of them. Set RESEARCH_DATA_DIR to a folder holding "
      "sst2/, or go online")
  assert not (clone / "runs" / "full").exists()


def test_the_lookup_order_of_a_registered_task(tmp_path, monkeypatch):
  config = sst2.get_config("quick")
  (tmp_path / "sst2").mkdir()
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
  assert sources.locate(config.data) == sources.Source(
      str(tmp_path / "sst2"), "$RESEARCH_DATA_DIR")
  monkeypatch.delenv(sources.DATA_DIR_ENV)
  monkeypatch.setattr(sources, "hub_reachable", lambda: True)
  assert sources.locate(config.data) == sources.Source("nyu-mll/glue", "hub")
  monkeypatch.setattr(sources, "hub_reachable", lambda: False)
  shipped = sources.Source(str(sources.SHIPPED_DIR / "sst2"), "shipped slice")
  assert sources.locate(config.data) == shipped
  config.data.train_examples = 8001  # one more than the slice holds
  with pytest.raises(DataError, match="the first 8,000 of 67,349 rows, the "
                     "config asks for 8,001"):
    sources.locate(config.data)
  config.data.train_examples = 0
  config.data.validation_from_train = 0.1  # carves from the whole training split
  with pytest.raises(DataError, match="asks for all of them .data.validation_"):
    sources.locate(config.data)
  config.data.dataset = str(tmp_path / "sst2")  # an explicit folder wins over everything
  assert sources.locate(config.data).origin == "data.dataset"
  # The hub is not asked for when the environment says offline.
  monkeypatch.undo()
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  assert not sources.hub_reachable()


def test_a_config_file_is_locked_and_takes_a_string_for_a_tuple():
  c = default.get_config()
  with pytest.raises(AttributeError, match='Did you mean "eval_splits" instead of "eval_split"'):
    c.data.eval_split = ("test",)
  c.task.text_fields = "question"
  c.data.eval_splits = "test"
  assert (c.task.text_fields, c.data.eval_splits) == (("question",), ("test",))
  with pytest.raises(TypeError):  # a number is still not a tuple of strings
    c.data.eval_splits = 3
  with pytest.raises(TypeError):  # nor a string a tuple of numbers
    c.data.length_buckets = "64"


def test_config_json_shows_the_checkpoints_architecture():
  config = sst2.get_config("quick")
  resolved = builder.with_checkpoint_architecture(config)
  assert (resolved.model.architecture.hidden_size,
          resolved.model.architecture.num_hidden_layers) == (384, 6)  # all-MiniLM-L6-v2
  assert config.model.architecture.hidden_size == 768  # the caller's config is left alone
  # A workdir written before config.json showed it still resumes.
  saved = json.loads(config_lib.to_json(config))
  assert config_lib.resume_conflicts(saved, resolved) == []
  del saved["log"]["wandb_project"]  # a field added since, at its default: no difference
  assert config_lib.resume_conflicts(saved, resolved) == []
  resolved.log.every_steps = 7  # (resumable)
  resolved.train.batch_size = 16
  assert config_lib.resume_conflicts(saved, resolved) == ["train.batch_size: 32 -> 16"]
  # A run that saved the checkpoint's architecture: a checkpoint folder whose config.json
  # changed since (the same shapes, another activation) is another model, not a resume.
  saved = json.loads(config_lib.to_json(builder.with_checkpoint_architecture(config)))
  assert config_lib.resume_conflicts(saved, builder.with_checkpoint_architecture(config)) == []
  changed = builder.with_checkpoint_architecture(config)
  changed.model.architecture.hidden_act = "relu"
  assert config_lib.resume_conflicts(saved, changed) == [
      "model.architecture.hidden_act: 'gelu' -> 'relu'"]


def test_run_json_records_code_command_versions_devices_data_and_speed(reference_run):
  workdir, config, summary = reference_run
  record = json.loads((workdir / "run.json").read_text())
  assert set(record) == {"command", "cwd", "code", "packages", "devices", "compute", "data",
                         "started", "ended", "outcome", "throughput", "sessions"}
  # What computed: float32 takes XLA's matmuls on every CPU ('auto', research/models/mkl_gemm).
  assert record["compute"] == {
      "dtype": "float32", "gemm": "xla", "gemm_reason": "float32 compute: XLA's GEMMs (MKL's "
      "float32 is no faster on the CPUs measured)", "cpu": mkl_gemm.cpu_description(),
      "xla_flags": os.environ.get("XLA_FLAGS", "")}
  assert record["outcome"] == "finished"
  head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                        text=True)
  if head.returncode == 0:
    assert record["code"]["commit"] == head.stdout.strip()
    assert isinstance(record["code"]["dirty"], bool)
  else:
    assert record["code"]["commit"] is None
  assert set(record["packages"]) == {"python", *run_record.PACKAGES}
  assert all(record["packages"][name] for name in ("jax", "flax", "optax", "transformers"))
  assert record["devices"] | {"host": None, "kind": None} == {
      "backend": "cpu", "devices": 1, "processes": 1, "parallel": "shard_map", "host": None,
      "kind": None}
  assert record["data"]["splits"] == json.loads((workdir / "data.json").read_text())
  assert record["data"]["source"]["origin"] == "$RESEARCH_DATA_DIR"
  assert record["started"] <= record["ended"]
  train_speed, eval_speed = record["throughput"]["train"], record["throughput"]["eval"]
  assert train_speed["examples"] == 24 * config.train.batch_size
  eval_split = load_encoded(config.data, config.task, _tokenizer(), "validation",
                            config.data.eval_examples)
  assert eval_speed["examples"] == 2 * 50  # two evaluations of 50 examples
  assert eval_speed["tokens"] == 2 * int(eval_split.lengths.sum())
  assert train_speed["examples"] < train_speed["tokens"] < 64 * train_speed["examples"]
  for part in (train_speed, eval_speed):
    assert part["examples_per_sec"] == pytest.approx(part["examples"] / part["seconds"])
    assert part["tokens_per_sec"] == pytest.approx(part["tokens"] / part["seconds"])
  assert summary["throughput"] == record["throughput"]  # results.json carries it too
  assert [s["first_step"] for s in record["sessions"]] == [0]
  assert record["sessions"][0]["last_step"] == 24
  # Where the session's wall time went: every part was spent (this run compiles one train and
  # one eval program, evaluates twice, saves every 5 steps), and the parts add up to no more
  # than the session (results.json's wall time, taken a moment after).
  wall = record["sessions"][0]["wall_seconds"]
  assert set(wall) == {"prepare", "compile", "input", "train_steps", "evaluation",
                       "checkpointing", "other"}
  assert all(wall[part] > 0 for part in ("prepare", "compile", "input", "train_steps",
                                         "evaluation", "checkpointing")), wall
  assert wall["other"] >= 0
  assert sum(wall.values()) <= summary["train"]["wall_seconds_this_session"] + 0.01


def _tokenizer():
  from research.models import hf_io
  return tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())


def test_report_names_the_code_and_warns_when_runs_differ(reference_run, tmp_path, capsys):
  workdir, _, _ = reference_run
  for name in ("lr=1,seed=0", "lr=2,seed=0"):
    (tmp_path / name).mkdir()
    for file in ("config.json", "results.json", "metrics.jsonl", "run.json"):
      shutil.copy(workdir / file, tmp_path / name / file)
  report.write_report(tmp_path)
  text = (tmp_path / "results.md").read_text()
  record = json.loads((workdir / "run.json").read_text())
  assert f"jax {record['packages']['jax']}" in text and "Code: " in text
  assert "Warning" not in text and "warning" not in capsys.readouterr().err
  changed = json.loads((tmp_path / "lr=2,seed=0" / "run.json").read_text())
  changed["sessions"][0]["code"] = {"commit": "0" * 40, "dirty": False}
  changed["sessions"][0]["packages"]["jax"] = "0.0.1"
  (tmp_path / "lr=2,seed=0" / "run.json").write_text(json.dumps(changed))
  report.write_report(tmp_path)
  text = (tmp_path / "results.md").read_text()
  assert "**Warning:** the runs were made with 2 different code versions" in text
  assert "000000000000" in text
  assert "different package versions: jax ['0.0.1', " in text
  assert "warning: the runs were made with 2 different code versions" in capsys.readouterr().err
