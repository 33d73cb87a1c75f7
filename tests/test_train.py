"""Whole runs: determinism, resume, the modes of research.main, and bad input."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, require_data
from helpers import (assert_rescored, assert_same_params, final_state, tiny_config, train_losses,
                     train_rows)
from research import checkpoints, config_lib, errors, inference, metrics, train
from research.data.batches import TrainBatches


@pytest.fixture(autouse=True)
def _needs_sst2():
  require_data("sst2")


def test_run_writes_everything_a_researcher_reads(reference_run):
  workdir, config, summary = reference_run
  assert summary["final"]["step"] == 24
  for name in ("config.json", "metrics.jsonl", "results.json", "train.log"):
    assert (workdir / name).is_file(), name
  assert list((workdir / "tensorboard").iterdir())
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["optimizer"]["learning_rate"] == config.optimizer.learning_rate
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 25))
  assert [r["step"] for r in rows if r["split"] == "validation"] == [12, 24]
  assert all(r["examples_per_sec"] > 0 for r in rows if r["split"] == "train")
  report = json.loads((workdir / "eval" / "validation_step24.json").read_text())
  assert report["report"]["macro avg"]["support"] == 50  # every eval example, once
  assert "precision" in report["report_text"]
  assert summary["best"]["step"] in (12, 24)
  # One train and one eval program (one length bucket), whatever the batches: compiled once.
  assert summary["compiles"] == {"train_step": 1, "update_step": 1, "eval_step": 1}


def test_same_seed_same_loss_curve(reference_run, tmp_path):
  workdir, config, _ = reference_run
  train.train_and_evaluate(tiny_config(), tmp_path / "again")
  assert train_losses(tmp_path / "again") == train_losses(workdir)
  train.train_and_evaluate(tiny_config(seed=1), tmp_path / "seed1")
  assert train_losses(tmp_path / "seed1") != train_losses(workdir)


def _memory_maps() -> int:
  return len(pathlib.Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.skipif(not pathlib.Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_runs_one_after_another_do_not_accumulate_compiled_programs(tmp_path):
  """Each run's compiled programs held ~800 memory maps for the life of the process; at the
  kernel's limit (65530) a later compilation crashed the process (the full test suite did)."""
  config = tiny_config(**{"train.num_epochs": 0.25})
  train.train_and_evaluate(config, tmp_path / "first")
  before = _memory_maps()
  train.train_and_evaluate(config, tmp_path / "second")
  assert _memory_maps() - before < 100


def _interrupt_at(monkeypatch, step, action):
  """Calls `action` when the input pipeline builds batch `step` (a few steps ahead of training)."""
  original = TrainBatches.batch

  def batch(self, s, *args):
    if s == step:
      action()
    return original(self, s, *args)
  monkeypatch.setattr(TrainBatches, "batch", batch)


def _crash():
  raise RuntimeError("killed")


@pytest.mark.parametrize("stop_step,action,error", [
    # Ctrl-C: the run finishes its step, saves a checkpoint there and stops.
    (7, lambda: os.kill(os.getpid(), signal.SIGINT), errors.Interrupted),
    (7, lambda: os.kill(os.getpid(), signal.SIGTERM), errors.Interrupted),  # a preemption
    (13, _crash, RuntimeError),          # a crash: resumes from the step-12 eval checkpoint
])
def test_resumed_run_ends_where_an_uninterrupted_one_does(reference_run, tmp_path, monkeypatch,
                                                          stop_step, action, error):
  reference_dir, _, reference_summary = reference_run
  workdir = tmp_path / "run"
  with monkeypatch.context() as patch:
    _interrupt_at(patch, stop_step, action)
    with pytest.raises(error) as raised:
      train.train_and_evaluate(tiny_config(), workdir)
  step, _ = final_state(workdir)
  if error is errors.Interrupted:  # stopped at the step boundary the message names
    assert f"at step {step} of 24" in str(raised.value)
    assert 5 <= step < 12  # the batch is built up to 2 steps ahead; before the epoch's eval
  else:
    assert step == 12
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
  summary = train.train_and_evaluate(tiny_config(), workdir)
  _, resumed = final_state(workdir)
  _, uninterrupted = final_state(reference_dir)
  assert_same_params(resumed, uninterrupted)
  assert train_losses(workdir) == train_losses(reference_dir)  # no gaps, no duplicates
  assert summary["final"]["results"] == reference_summary["final"]["results"]
  assert summary["best"]["step"] == reference_summary["best"]["step"]


def test_a_workdir_with_another_config_is_refused(reference_run):
  workdir, _, _ = reference_run
  before = (workdir / "config.json").read_text()
  with pytest.raises(errors.RunError, match=r"optimizer.learning_rate: 5e-05 -> 0.001"):
    train.train_and_evaluate(tiny_config(**{"optimizer.learning_rate": 1e-3}), workdir)
  assert (workdir / "config.json").read_text() == before


def test_eval_predict_and_export_use_the_best_checkpoint(reference_run, tmp_path):
  workdir, config, summary = reference_run
  results = inference.evaluate(config, workdir)
  assert assert_rescored(workdir) == ["accuracy", "macro_f1"]
  # --mode=eval saves the best checkpoint's per-example predictions (an older run's too).
  assert (workdir / "eval" / "validation_best_per_example.json").is_file()
  assert assert_rescored(workdir, checkpoint="best") == ["accuracy", "macro_f1"]
  best = summary["best"]["results"]["validation"]
  assert results["validation"]["accuracy"] == pytest.approx(best["accuracy"])
  assert results["validation"]["loss"] == pytest.approx(best["loss"], rel=1e-5)
  inputs = tmp_path / "in.txt"
  inputs.write_text("a gorgeous , witty film\nthe worst movie of the year\n")
  assert inference.predict(config, workdir, inputs, tmp_path / "out.jsonl") == 2
  rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert rows[0]["sentence"] == "a gorgeous , witty film"
  assert rows[0]["label"] in ("negative", "positive")
  assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  with pytest.raises(errors.RunError, match="exists"):
    inference.predict(config, workdir, inputs, tmp_path / "out.jsonl")
  exported = inference.export(config, workdir, tmp_path / "hf")
  assert (exported / "model.safetensors").is_file() and (exported / "vocab.txt").is_file()


def _cli(*args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "research.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_typo_in_an_override_names_the_key(tmp_path):
  result = _cli("--config", "configs/sst2.py", "--workdir", str(tmp_path / "w"),
                "--config.optimizer.learnign_rate=1")
  assert result.returncode != 0
  message = result.stderr.strip().splitlines()[-1]
  assert "learnign_rate" in message and "learning_rate" in message
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_cli_wrong_type_and_bad_config_argument(tmp_path):
  result = _cli("--config", "configs/sst2.py", "--workdir", str(tmp_path),
                "--config.train.batch_size=many")
  assert result.returncode != 0 and "batch_size" in result.stderr
  result = _cli("--config", "configs/sst2.py:quik", "--workdir", str(tmp_path))
  assert result.returncode != 0 and "quik" in result.stderr.splitlines()[-1]


def test_cli_inconsistent_config_is_one_clear_error(tmp_path):
  result = _cli("--config", "configs/sst2.py", "--workdir", str(tmp_path),
                "--config.data.length_buckets=(32,64)")
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: config.data.length_buckets: the largest bucket 64 "
                                   "must equal data.max_length 128")


def test_a_repeated_override_keeps_its_last_value(tmp_path):
  """config_flags concatenates a tuple field given twice; the last value must win, for every
  field type and either spelling (`--config.x=v`, `--config.x v`)."""
  from absl import flags
  from ml_collections import config_flags
  from research import main
  argv = ["main", "--config", "configs/sst2.py", "--workdir", str(tmp_path),
          "--config.data.length_buckets=(16,32)", "--config.data.length_buckets=(48,64)",
          "--config.task.text_fields=sentence", "--config.task.text_fields=sentence",
          "--config.seed", "1", "--config.seed=2", "--config.data.max_length=64"]
  flag_values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  main.parse_flags(argv, flag_values)
  assert config.value.data.length_buckets == (48, 64)
  assert config.value.task.text_fields == ("sentence",)
  assert config.value.seed == 2 and config.value.data.max_length == 64


@pytest.mark.parametrize("help_flag", ["--help", "-h", "--helpfull"])
def test_cli_help_exits_0_with_the_usage(help_flag):
  result = _cli(help_flag)
  assert result.returncode == 0, result.stderr
  assert "--workdir" in result.stdout and "--config" in result.stdout


def test_config_validation_names_the_field():
  config = tiny_config(**{"train.grad_accum_steps": 3})
  with pytest.raises(config_lib.ConfigError, match="train.grad_accum_steps"):
    config_lib.validate(config)
  config = tiny_config(**{"eval.best_metric": "f1"})
  with pytest.raises(config_lib.ConfigError, match="eval.best_metric"):
    config_lib.validate(config)
  config = tiny_config(**{"train.max_skipped_fraction": 1.5})
  with pytest.raises(config_lib.ConfigError, match="train.max_skipped_fraction"):
    config_lib.validate(config)


# ---- stopping: signals, time-based checkpoints -------------------------------------------------


def test_sigterm_stops_the_cli_at_a_step_boundary_with_exit_75(reference_run, tmp_path):
  reference_dir, _, reference_summary = reference_run
  workdir, marker = tmp_path / "run", tmp_path / "paused"
  env = dict(os.environ, **{train.PAUSE_ENV: f"step:6:{marker}"})
  process = subprocess.Popen([sys.executable, "-m", "research.main", "--config",
                              "tests/helpers.py", "--workdir", str(workdir)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 240
  while not pathlib.Path(f"{marker}.0").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == errors.EXIT_INTERRUPTED == 75
  assert "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  step, _ = final_state(workdir)
  assert last == (f"error: stopped by SIGTERM at step {step} of 24, with a checkpoint: rerun "
                  "the same command to resume")
  assert 6 < step < 12  # the steps already under way when it came, then a checkpoint
  summary = train.train_and_evaluate(tiny_config(), workdir)
  assert_same_params(final_state(workdir)[1],
                      final_state(reference_dir)[1])
  assert train_losses(workdir) == train_losses(reference_dir)
  assert summary["best"] == reference_summary["best"]
  # run.json: the stopped session and the one that finished, each with its command and steps.
  record = json.loads((workdir / "run.json").read_text())
  assert [(s["outcome"], s["first_step"], s["last_step"]) for s in record["sessions"]] == [
      ("stopped by a signal", 0, step), ("finished", step, 24)]
  assert record["command"] == (f"python -m research.main --config tests/helpers.py --workdir "
                               f"{workdir}")
  assert record["throughput"]["train"]["examples"] == 24 * 16


def test_time_based_checkpoints_come_between_the_periodic_ones(reference_run, tmp_path):
  reference_dir, _, _ = reference_run
  config = tiny_config(**{"checkpoint.every_seconds": 0.2, "checkpoint.keep": 100,
                          "checkpoint.every_steps": 1000})
  train.train_and_evaluate(config, tmp_path)
  ckpts = checkpoints.Checkpoints(tmp_path, keep=100, best_metric="accuracy", best_mode="max")
  saved = ckpts._latest.all_steps()
  ckpts.close()
  assert set(saved) - {12, 24}  # steps saved for the time alone (evaluations save too)
  assert_same_params(final_state(tmp_path)[1],
                      final_state(reference_dir)[1])


def test_itstime():
  assert [s for s in range(1, 11) if train.itstime(s, 4, 10)] == [4, 8, 10]
  assert [s for s in range(1, 11) if train.itstime(s, 4, 10, last=False)] == [4, 8]
  assert [s for s in range(1, 11) if train.itstime(s, 0, 10)] == [10]


# ---- precision ---------------------------------------------------------------------------------


def test_float16_is_refused_in_one_line(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="model.dtype: float16 needs loss scaling"):
    config_lib.validate(tiny_config(**{"model.dtype": "float16"}))
  result = _cli("--config", "tests/helpers.py", "--workdir", str(tmp_path / "w"),
                "--config.model.param_dtype=float16")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: config.model.param_dtype: float16 needs loss scaling, which this codebase does "
      "not do; use 'bfloat16' (the same memory and speed on GPUs and TPUs, float32's range: no "
      "scaling needed)"]
  assert not (tmp_path / "w").exists()


BF16_STEPS = 8


def test_bfloat16_training_follows_float32_on_the_embedded_model(tmp_path):
  """bf16 compute, float32 parameters and optimizer state: 8 steps of the real MiniLM on
  sentences cut to 32 tokens. The loss stays within 0.1% of float32's (measured: 0.02%; its
  head is fresh, so the loss is still near ln 2) and the gradient norm, which sees every layer,
  within 2% (measured: 0.7%)."""
  def run(dtype):
    config = tiny_config(**{"model.checkpoint": "embedded", "model.tokenizer": "",
                            "model.dtype": dtype, "data.train_examples": BF16_STEPS * 16,
                            "data.eval_examples": 16, "data.max_length": 32,
                            "data.length_buckets": (32,), "train.num_epochs": 1.0,
                            "checkpoint.every_steps": BF16_STEPS,  # the last state only
                            "optimizer.learning_rate": 2e-4, "optimizer.warmup_ratio": 0.0})
    train.train_and_evaluate(config, tmp_path / dtype)
    return train_rows(tmp_path / dtype), final_state(tmp_path / dtype)[1]
  rows32, _ = run("float32")
  rows16, state16 = run("bfloat16")
  assert [r["step"] for r in rows16] == list(range(1, BF16_STEPS + 1))
  for r32, r16 in zip(rows32, rows16):
    assert r16["loss"] == pytest.approx(r32["loss"], rel=1e-3)
    assert r16["grad_norm"] == pytest.approx(r32["grad_norm"], rel=0.02)
  assert max(abs(r16["grad_norm"] / r32["grad_norm"] - 1)
             for r32, r16 in zip(rows32, rows16)) > 1e-3  # bf16 did compute
  import jax
  assert {x.dtype for x in jax.tree.leaves(state16["params"])} == {np.dtype("float32")}
  assert {x.dtype for x in jax.tree.leaves(state16["opt_state"])
          if np.issubdtype(x.dtype, np.floating)} == {np.dtype("float32")}


def test_cli_on_two_real_runs(reference_run, tmp_path):
  """`python -m research.compare` on the tiny SST-2 run and a copy of it whose per-example
  predictions (and reported accuracy) are changed on 10 examples; the run against itself gives
  p = 1 and a zero interval."""
  workdir, _, summary = reference_run
  step = summary["final"]["step"]
  other = tmp_path / "other"
  shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("checkpoints", "best", ".lock"))
  path = other / "eval" / f"validation_step{step}_per_example.json"
  examples = json.loads(path.read_text())
  examples["prediction"] = [1 - p if i < 10 else p for i, p in enumerate(examples["prediction"])]
  path.write_text(json.dumps(examples))
  record_path = other / "eval" / f"validation_step{step}.json"
  record = json.loads(record_path.read_text())
  record["metrics"]["accuracy"] = metrics.accuracy(np.asarray(examples["gold"]),
                                                   np.asarray(examples["prediction"]))
  record_path.write_text(json.dumps(record))
  result = subprocess.run([sys.executable, "-m", "research.compare", str(workdir), str(other),
                           str(workdir), "--samples", "2000", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  saved = json.loads((tmp_path / "compare.json").read_text())
  changed, same = (c["pairs"][0] for c in saved["comparisons"])
  assert same["p"] == 1.0 and same["ci"] == [0.0, 0.0]
  assert changed["difference"] == pytest.approx(record["metrics"]["accuracy"] - summary[
      "final"]["results"]["validation"]["accuracy"])
  assert changed["ci"][0] <= changed["difference"] <= changed["ci"][1]
  assert "[2/2]" in result.stderr and "| accuracy |" in result.stdout
