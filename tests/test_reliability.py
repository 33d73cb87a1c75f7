"""Faults and bad input: no wrong model, no lost work, and one clear line for every mistake.

Fault cases run the real command line and stop it with real signals or kill -9 at a named
point of the loop (`RESEARCH_TEST_PAUSE` holds the process there until the kill lands), then
resume and compare everything a researcher reads with the uninterrupted tiny run
(`reference_run`): parameters, best checkpoint, results.json and metrics.jsonl.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, require_data
from helpers import assert_same_params, final_state, load_encoded, tiny_config, train_rows
from research import checkpoints, errors, inference, sweep, train, writers
from research.data import sources, tokenization
from research.data.batches import TrainBatches
from research.models import builder


@pytest.fixture(autouse=True)
def _needs_sst2():
  require_data("sst2")


def _cli(*args, env_extra=None, timeout=300):
  env = dict(os.environ, **(env_extra or {}))
  env.pop("RESEARCH_DEBUG", None)
  return subprocess.run([sys.executable, "-m", "research.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _tiny_cli(workdir, *overrides, **kwargs):
  return _cli("--config", "tests/helpers.py", "--workdir", str(workdir), *overrides, **kwargs)


def _rows(workdir):
  """metrics.jsonl without the throughput (the one value a resumed run may log otherwise)."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]


def _best(workdir, metric="accuracy"):
  return final_state(workdir, best=True, metric=metric)


def _assert_same_run(workdir, reference_dir):
  """Everything a finished run leaves equals the uninterrupted run's."""
  assert_same_params(final_state(workdir)[1], final_state(reference_dir)[1])
  assert _rows(workdir) == _rows(reference_dir)  # no row twice, none missing
  resumed, uninterrupted = (json.loads((w / "results.json").read_text())
                            for w in (workdir, reference_dir))
  assert resumed["final"] == uninterrupted["final"]
  assert resumed["best"] == uninterrupted["best"]
  (step, params), (reference_step, reference_params) = _best(workdir), _best(reference_dir)
  assert step == reference_step
  assert_same_params({"params": params}, {"params": reference_params})


# ---- stops anywhere ----------------------------------------------------------------------------


def test_ctrl_c_during_an_evaluation_keeps_that_evaluation(reference_run, tmp_path,
                                                           monkeypatch):
  """Ctrl-C while step 12 is evaluated: the evaluation ends, its result and best are kept with
  the checkpoint, and the resumed run is the uninterrupted one (the best was once wrong)."""
  reference_dir, _, _ = reference_run
  evaluate = train.evaluate

  def interrupted_evaluate(run, device_state, step):
    if step == 12:
      os.kill(os.getpid(), signal.SIGINT)
    return evaluate(run, device_state, step)

  with monkeypatch.context() as patch:
    patch.setattr(train, "evaluate", interrupted_evaluate)
    with pytest.raises(errors.Interrupted, match="at step 12 of 24"):
      train.train_and_evaluate(tiny_config(), tmp_path)
  assert final_state(tmp_path)[0] == 12
  assert _best(tmp_path)[0] == 12
  train.train_and_evaluate(tiny_config(), tmp_path)
  _assert_same_run(tmp_path, reference_dir)


@pytest.mark.parametrize("point,step", [
    ("step", 3),      # before the first checkpoint (rows were logged twice)
    ("eval", 12),     # during an evaluation
    ("best", 24),     # after the best is saved, before the checkpoint
    ("results", 24),  # after the last checkpoint, before results.json
])
def test_kill_9_anywhere_resumes_to_the_uninterrupted_run(reference_run, tmp_path, point, step):
  reference_dir, _, _ = reference_run
  workdir, marker = tmp_path / "run", tmp_path / "paused"
  process = subprocess.Popen(
      [sys.executable, "-m", "research.main", "--config", "tests/helpers.py", "--workdir",
       str(workdir)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      env=dict(os.environ, **{train.PAUSE_ENV: f"{point}:{step}:{marker}"}))
  deadline = time.monotonic() + 240
  while not pathlib.Path(f"{marker}.0").exists():
    assert time.monotonic() < deadline and process.poll() is None
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL
  assert not (workdir / "results.json").exists()
  train.train_and_evaluate(tiny_config(), workdir)
  _assert_same_run(workdir, reference_dir)


# ---- divergence ----------------------------------------------------------------------------------


BAD_ROW = 100  # its label, 1e30, squares to inf in float32: the step that draws it diverges


@pytest.fixture(scope="module")
def exploding_regression(tmp_path_factory):
  """SST-2 sentences as a regression task whose row 100 has the label 1e30, and the steps that
  draw it (each epoch once)."""
  require_data("sst2")  # module fixtures come before the autouse skip
  folder = tmp_path_factory.mktemp("exploding")
  source = pathlib.Path(os.environ["RESEARCH_DATA_DIR"]) / "sst2"
  for split, n in (("train", 192), ("validation", 50)):
    with (source / f"{split}.jsonl").open() as f:
      rows = [json.loads(next(f)) for _ in range(n)]
    (folder / f"{split}.jsonl").write_text("".join(
        json.dumps({"sentence": r["sentence"],
                    "score": 1e30 if split == "train" and i == BAD_ROW else float(r["label"])})
        + "\n" for i, r in enumerate(rows)))
  config = _regression_config(folder)
  tokenizer = tokenization.load_tokenizer(builder.build_model(config).tokenizer_dir)
  split = load_encoded(config.data, config.task, tokenizer, "train", 192)
  batches = train.train_batches(config, split)
  steps = [epoch * batches.steps_per_epoch + int(np.argwhere(batches.epoch_order(epoch)
                                                              == BAD_ROW)[0, 0]) + 1
           for epoch in range(2)]
  return folder, steps


def _regression_config(folder, **updates):
  """Checkpoints every 5 steps, evaluations every 6, the loss logged only at the end: as when
  divergence went unseen until a log step."""
  return tiny_config(**{"data.dataset": str(folder), "data.local_name": "",
                        "task.kind": "regression", "task.label_field": "score",
                        "task.label_names": (), "task.metrics": ("pearson",),
                        "eval.best_metric": "pearson", "eval.every_steps": 6,
                        "log.every_steps": 100, **updates})


def test_divergence_stops_at_its_step_and_keeps_the_finite_checkpoints(exploding_regression,
                                                                       tmp_path):
  folder, (first, _) = exploding_regression
  assert first == 10  # between checkpoints (5, 6) and log steps (24): the case that went wrong
  with pytest.raises(errors.RunError) as raised:
    train.train_and_evaluate(_regression_config(folder), tmp_path)
  assert str(raised.value).startswith(
      "training diverged at step 10: loss inf, gradient norm inf; nothing from that step on "
      "was saved (the last checkpoint (step 6) and the best (step 6) kept)")
  step, state = final_state(tmp_path)
  assert step == 6 and checkpoints.all_finite(state)
  assert _best(tmp_path, "pearson")[0] == 6
  assert not (tmp_path / "results.json").exists()


def test_skip_nonfinite_steps_skips_exactly_those_updates(exploding_regression, tmp_path):
  folder, bad_steps = exploding_regression
  summary = train.train_and_evaluate(
      _regression_config(folder, **{"train.skip_nonfinite_steps": True, "log.every_steps": 1}),
      tmp_path)
  assert summary["skipped_steps"] == bad_steps
  assert checkpoints.all_finite(final_state(tmp_path)[1])
  assert np.isfinite(summary["final"]["results"]["validation"]["pearson"])
  rows = train_rows(tmp_path)
  assert np.isfinite([r["loss"] for r in rows]).all()
  # A log step with only a skipped step since the last logged a loss of 0: no row instead.
  assert [r["step"] for r in rows] == [s for s in range(1, 25) if s not in bad_steps]


def test_skipped_updates_beyond_the_bound_stop_the_run():
  """77 of 80 updates skipped ended with exit 0: more than train.max_skipped_fraction of the
  run's steps skipped stops it, naming them, before anything of that step is saved."""
  import types
  config = tiny_config(**{"train.skip_nonfinite_steps": True, "train.max_skipped_fraction": 0.1})
  run = types.SimpleNamespace(config=config, total_steps=24,
                              dp=types.SimpleNamespace(get_metrics=lambda values: values),
                              ckpts=types.SimpleNamespace(latest_step=lambda: 5))

  def step(number, finite):
    return number, {"signals": np.zeros(2, np.int32), "finite": finite,
                    "loss_sum": np.float32(np.nan), "weight_sum": np.float32(16),
                    "grad_norm": np.float32(np.nan),
                    "learning_rate": np.float32(1e-3)}
  state = train.RunState()
  train.read_step_metrics(run, state, [step(3, False), step(4, True), step(7, False)])
  assert state.skipped_steps == [3, 7]  # 2 of 24: within 10%
  with pytest.raises(errors.RunError) as raised:
    train.read_step_metrics(run, state, [step(8, True), step(9, False), step(10, False)])
  assert str(raised.value) == (
      "training skipped the updates of 3 of its 24 steps (3, 7, 9), more than "
      "train.max_skipped_fraction=0.1 allows: their loss or gradient norm is not finite (step 9: "
      "loss nan, gradient norm nan); nothing from step 9 on was saved (the last checkpoint "
      "(step 5) and no best yet kept). Lower optimizer.learning_rate or check the data")


def test_an_evaluation_with_nan_outputs_stops_the_run(tmp_path):
  """Updates skipped but the applied ones broke the model: its NaN outputs scored an accuracy
  and a NaN loss, and were reported (exit 0) and kept as the best."""
  config = tiny_config(**{"optimizer.learning_rate": 1e6, "train.skip_nonfinite_steps": True,
                          "train.max_skipped_fraction": 1.0, "eval.every_steps": 6,
                          "log.every_steps": 6})
  with pytest.raises(errors.RunError) as raised:
    train.train_and_evaluate(config, tmp_path)
  assert str(raised.value) == (
      "evaluation of validation at step 6: the loss is nan and the model's outputs are NaN or "
      "infinite for 50 of 50 examples (the first: row 1); no checkpoint of that step was saved")
  assert not (tmp_path / "results.json").exists()
  ckpts = checkpoints.Checkpoints(tmp_path, keep=5, best_metric="accuracy", best_mode="max")
  assert (ckpts.latest_step(), ckpts.best_step()) == (5, None)  # no best of a NaN model
  ckpts.close()


def test_eval_and_predict_refuse_nan_outputs(reference_run, tmp_path):
  """A best checkpoint whose outputs overflow on some inputs scored them and wrote NaN
  probabilities; predict names the first such line."""
  reference_dir, config, _ = reference_run
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  ckpts = checkpoints.Checkpoints(workdir, keep=5, best_metric="accuracy", best_mode="max")
  step, (params, meta) = ckpts.best_step(), ckpts.restore_best(None)
  ckpts.close()
  tokenizer = tokenization.load_tokenizer(builder.build_model(config).tokenizer_dir)
  word = tokenizer.convert_tokens_to_ids("the")
  params["bert"]["embeddings"]["word_embeddings"]["embedding"][word] = 3e38  # finite, overflows
  shutil.rmtree(workdir / "best")
  ckpts = checkpoints.Checkpoints(workdir, keep=5, best_metric="accuracy", best_mode="max")
  ckpts.save_best(step, params, {k: v for k, v in meta.items() if k != "checksum"})
  ckpts.close()
  inputs = _write(tmp_path / "in.txt", "a fine film\nthe plot is thin\nfine\n")
  with pytest.raises(errors.RunError) as raised:
    inference.predict(config, workdir, inputs, tmp_path / "out.jsonl")
  assert str(raised.value) == (
      f"--input {inputs} line 2: the outputs of the best checkpoint (step {step}) are NaN or "
      "infinite (1 of 3); nothing was written")
  assert not (tmp_path / "out.jsonl").exists()
  with pytest.raises(errors.RunError, match=rf"^evaluation of validation by the best checkpoint "
                                           rf"\(step {step}\): .*NaN or infinite for \d+ of 50"):
    inference.evaluate(config, workdir)
  assert not list((workdir / "eval").glob("*_best.json"))


# ---- the data of a resumed run -----------------------------------------------------------------


def test_resuming_on_other_data_is_refused(reference_run, tmp_path, monkeypatch):
  reference_dir, config, _ = reference_run
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  source = pathlib.Path(os.environ["RESEARCH_DATA_DIR"]) / "sst2"
  same = tmp_path / "same" / "sst2"
  shutil.copytree(source, same)
  changed = tmp_path / "changed" / "sst2"
  shutil.copytree(source, changed)
  lines = (changed / "train.jsonl").read_text().splitlines(keepends=True)
  row = json.loads(lines[7])
  lines[7] = json.dumps(dict(row, label=1 - row["label"])) + "\n"  # one label flipped
  (changed / "train.jsonl").write_text("".join(lines))
  before = sorted(p.name for p in workdir.iterdir())
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(tmp_path / "changed"))
  with pytest.raises(errors.RunError) as raised:
    train.train_and_evaluate(config, workdir)
  assert "holds a run trained on other data" in str(raised.value)
  assert "train fingerprint:" in str(raised.value)
  # The same rows somewhere else are another source (RESEARCH_DATA_DIR changed): refused too.
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(tmp_path / "same"))
  with pytest.raises(errors.RunError, match=r"train file: .*/sst2/train.jsonl -> "):
    train.train_and_evaluate(config, workdir)
  assert sorted(p.name for p in workdir.iterdir()) == before


def test_an_explicit_dataset_folder_wins_over_research_data_dir(tmp_path):
  folder = tmp_path / "sst2_variant"
  shutil.copytree(pathlib.Path(os.environ["RESEARCH_DATA_DIR"]) / "sst2", folder)
  config = tiny_config(**{"data.dataset": str(folder)})
  assert config.data.local_name == "sst2"
  assert sources.locate(config.data) == sources.Source(str(folder), "data.dataset")
  assert sources.resolve_source(tiny_config().data).endswith("/sst2")  # the task's own


# ---- damaged checkpoints -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
  """A run that crashed while building batch 13: checkpoints at steps 10 and 12. Each test
  damages a copy of it."""
  require_data("sst2")  # module fixtures come before the autouse skip
  workdir = tmp_path_factory.mktemp("crashed")
  original = TrainBatches.batch

  def batch(self, step, *args):
    if step == 13:
      raise RuntimeError("crash")
    return original(self, step, *args)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(TrainBatches, "batch", batch)
    with pytest.raises(RuntimeError, match="crash"):
      train.train_and_evaluate(tiny_config(), workdir)
  ckpts = checkpoints.Checkpoints(workdir, keep=2, best_metric="accuracy", best_mode="max")
  steps = ckpts._latest.all_steps()
  ckpts.close()
  assert sorted(steps) == [10, 12]
  return workdir


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _damage(path: pathlib.Path, how: str):
  data = path.read_bytes()
  if how == "truncated":
    path.write_bytes(data[:len(data) // 2])
  elif how == "garbage":
    path.write_bytes(np.random.default_rng(0).bytes(len(data)))
  else:  # a few bytes overwritten in place: the file still reads
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(b ^ 0x55 for b in data[middle:middle + 64])
                     + data[middle + 64:])


def test_the_checksum_is_the_one_earlier_checkpoints_hold():
  """A checkpoint's checksum: the sha256 of each array's dtype, shape and bytes, sorted and
  hashed again. Now computed without copying the arrays; checkpoints written before still
  verify (a changed digest would set every one of them aside as damaged)."""
  import hashlib

  import ml_dtypes
  tree = {"transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,
          "scalar": np.float32(3.0), "bfloat16": np.ones((2, 2), ml_dtypes.bfloat16),
          "empty": np.zeros((0, 4), np.int32), "mask": np.array([True, False]),
          "step": np.asarray(7, np.int64)}
  arrays = map(np.ascontiguousarray, jax.tree.leaves(tree))
  before = sorted(hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()
                  for a in arrays)
  assert checkpoints.tree_checksum(tree) == hashlib.sha256("".join(before).encode()).hexdigest()


@pytest.mark.parametrize("how", ["truncated", "garbage", "overwritten"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(reference_run, crashed_run,
                                                                  tmp_path, caplog, how):
  reference_dir, _, _ = reference_run
  shutil.copytree(crashed_run, tmp_path, dirs_exist_ok=True)
  _damage(_largest_file(tmp_path / "checkpoints" / "12"), how)
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(tiny_config(), tmp_path)
  warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warnings) == 1 and "checkpoints/12 is damaged" in warnings[0]
  assert (tmp_path / "checkpoints_damaged" / "12").is_dir()
  _assert_same_run(tmp_path, reference_dir)


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(crashed_run, tmp_path):
  shutil.copytree(crashed_run, tmp_path, dirs_exist_ok=True)
  for step in (10, 12):
    _damage(_largest_file(tmp_path / "checkpoints" / str(step)), "garbage")
  result = _tiny_cli(tmp_path)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: no intact checkpoint in {tmp_path / 'checkpoints'} "
                         "(step 12: it cannot be read")
  assert "step 10:" in line
  assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("change", ["another encoder", "another width"])
def test_a_checkpoint_of_another_model_is_refused_and_kept(crashed_run, tmp_path, change):
  """The model.checkpoint folder of a stopped run changed (its model_type bert -> roberta, its
  hidden size): the run's intact checkpoints hold another model's tree. That is refused in one
  line naming a differing leaf, and nothing is moved (they were once set aside as damaged, and
  the next rerun started again from step 0)."""
  shutil.copytree(crashed_run, tmp_path, dirs_exist_ok=True)
  state = final_state(tmp_path)[1]
  if change == "another encoder":
    state["params"]["roberta"] = state["params"].pop("bert")
    expect = ("another structure: 23 leaves only in the model, e.g. params/roberta/embeddings/"
              "LayerNorm/bias; 23 only in the checkpoint, e.g. params/bert/embeddings/")
  else:
    state["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"] = np.zeros(
        (30522, 48), np.float32)
    expect = ("another shape: params/bert/embeddings/word_embeddings/embedding is (30522, 32) "
              "in the checkpoint, (30522, 48) in the model")
  ckpts = checkpoints.Checkpoints(tmp_path, keep=2, best_metric="accuracy", best_mode="max")
  try:
    with pytest.raises(checkpoints.CheckpointMismatch) as latest:
      ckpts.restore_state(state)
    with pytest.raises(checkpoints.CheckpointMismatch) as best:
      ckpts.restore_best(state["params"])
  finally:
    ckpts.close()
  assert str(latest.value).startswith(
      f"the checkpoint {tmp_path / 'checkpoints' / '12'} holds a tree of {expect}")
  assert str(best.value).startswith(f"the checkpoint {tmp_path / 'best' / '12'} holds a tree of")
  assert "Nothing was moved" in str(latest.value)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "12"]
  assert not (tmp_path / "checkpoints_damaged").exists()


def test_a_checkpoint_without_its_checksum_is_set_aside(crashed_run, tmp_path, caplog):
  """Every checkpoint this code writes holds a checksum: one whose meta lost it cannot be
  verified, and is damaged (it was once restored unverified)."""
  shutil.copytree(crashed_run, tmp_path, dirs_exist_ok=True)
  meta_file = tmp_path / "checkpoints" / "12" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["checksum"]
  meta_file.write_text(json.dumps(meta))
  ckpts = checkpoints.Checkpoints(tmp_path, keep=2, best_metric="accuracy", best_mode="max")
  try:
    with caplog.at_level("WARNING"):
      state, restored_meta = ckpts.restore_state(None)
  finally:
    ckpts.close()
  assert restored_meta["step"] == 10 and "checksum" in restored_meta
  assert any("checkpoints/12 is damaged: its meta holds no checksum" in r.getMessage()
             for r in caplog.records)
  assert (tmp_path / "checkpoints_damaged" / "12").is_dir()


def test_a_damaged_best_checkpoint_is_refused_by_predict_and_export(reference_run, tmp_path):
  reference_dir, config, _ = reference_run
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  best_step = _best(workdir)[0]
  _damage(_largest_file(workdir / "best" / str(best_step)), "overwritten")
  with pytest.raises(checkpoints.DamagedCheckpoint, match="do not match the checksum"):
    inference.export(config, workdir, tmp_path / "hf")
  assert not (tmp_path / "hf").exists()


# ---- the workdir -------------------------------------------------------------------------------


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  with writers.workdir_lock(tmp_path):
    result = _tiny_cli(tmp_path)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --workdir {tmp_path} is in use by another run (pid {os.getpid()} on "
      f"{os.uname().nodename}); wait for it to end or use another --workdir"]
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # the lock file went with its run


def test_a_failed_start_leaves_the_workdir_as_it_found_it(tmp_path):
  result = _tiny_cli(tmp_path / "new", "--config.data.dataset=/nonexistent/folder")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: data directory /nonexistent/folder does not exist")
  assert not (tmp_path / "new").exists()
  (tmp_path / "empty").mkdir()
  assert _tiny_cli(tmp_path / "empty", "--config.data.dataset=/nonexistent/folder").returncode
  assert not list((tmp_path / "empty").iterdir())


def test_sweep_points_stay_inside_the_sweep_folder(tmp_path):
  config_file = tmp_path / "escape.py"
  config_file.write_text(f'''
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from helpers import tiny_config

def get_config(arg=None):
  return tiny_config()

def get_hyper(hyper):
  return hyper.sweep("config.data.dataset", ["../../outside", "/etc"])
''')
  points = sweep.plan(str(config_file), tmp_path / "sweep")
  for point in points:
    folder = pathlib.Path(point["workdir"]).resolve()
    assert folder.parent == (tmp_path / "sweep").resolve()
  assert [p["name"] for p in points] == ["data.dataset=.._.._outside", "data.dataset=_etc"]


# ---- one line for every mistake ----------------------------------------------------------------


def _write(path: pathlib.Path, content: bytes | str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return path


def _malicious_checkpoint(folder: pathlib.Path) -> pathlib.Path:
  """A BERT config and a pytorch_model.bin whose pickle would run a command when loaded."""
  import pickle
  import transformers

  class Exploit:
    def __reduce__(self):
      return (os.system, (f"touch {folder / 'pwned'}",))

  transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
  (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit()))
  return folder


@pytest.mark.parametrize("case", [
    "syntax error", "no get_config", "field typo in a config file", "workdir is a file", "read-only workdir",
    "row without its text", "non-UTF-8 data", "empty training file", "malicious pickle",
    "non-UTF-8 predict input", "empty predict input", "damaged config.json, predict",
    "more devices than exist"])
def test_each_mistake_is_one_line_and_exit_2(reference_run, tmp_path, case):
  reference_dir, _, _ = reference_run
  workdir, args, expect = tmp_path / "w", [], None
  data = tmp_path / "data"
  good = '{"sentence": "good", "label": 1}\n'
  if case == "syntax error":
    config = _write(tmp_path / "c.py", "def get_config(:\n")
    args = ["--config", str(config), "--workdir", str(workdir)]
    expect = f"error: --config {config}:1: invalid syntax: def get_config(:"
  elif case == "no get_config":
    config = _write(tmp_path / "c.py", "X = 1\n")
    args = ["--config", str(config), "--workdir", str(workdir)]
    expect = (f"error: --config {config} defines no get_config() (a config file is a Python "
              "file with `def get_config(arg=None): ... return config`)")
  elif case == "field typo in a config file":
    config = _write(tmp_path / "c.py", "from configs import default\n\n\ndef get_config():\n"
                    "  c = default.get_config()\n  c.data.eval_split = ('test',)\n  return c\n")
    args = ["--config", str(config), "--workdir", str(workdir)]
    expect = (f'error: {config}:6: "eval_split" is not a config field (did you mean '
              f'"eval_splits"?): c.data.eval_split = (\'test\',)')
  elif case == "workdir is a file":
    workdir = _write(tmp_path / "w", "")
    expect = f"error: --workdir {workdir} is a file, not a directory"
  elif case == "read-only workdir":
    (tmp_path / "ro").mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(tmp_path / "ro")],
                             capture_output=True)
    if mounted.returncode:
      pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    workdir = tmp_path / "ro" / "w"
    expect = f"error: cannot write to --workdir {workdir}: Read-only file system"
  elif case == "row without its text":
    _write(data / "train.jsonl", good + '{"label": 0}\n')
    _write(data / "validation.jsonl", good)
    expect = f"error: {data} [train]: row 2: field 'sentence' is None, not a text"
  elif case == "non-UTF-8 data":
    _write(data / "train.jsonl", good.encode() + b'{"sentence": "caf\xe9", "label": 1}\n')
    _write(data / "validation.jsonl", good)
    expect = (f"error: {data / 'train.jsonl'}:2: bytes that are not UTF-8 (b'\\xe9\", '); "
              "save the file as UTF-8")
  elif case == "empty training file":
    _write(data / "train.jsonl", "")
    _write(data / "validation.jsonl", good)
    expect = f"error: {data / 'train.jsonl'} is empty"
  elif case == "malicious pickle":
    checkpoint = _malicious_checkpoint(tmp_path / "ckpt")
    args = ["--config", "tests/helpers.py", "--workdir", str(workdir),
            f"--config.model.checkpoint={checkpoint}"]
    expect = (f"error: {checkpoint / 'pytorch_model.bin'} is refused: it holds Python objects "
              "besides tensors, which could run code when loaded; only plain state dicts are "
              "read. Convert it to model.safetensors with a tool you trust")
  elif case in ("non-UTF-8 predict input", "empty predict input"):
    inputs = _write(tmp_path / ("in.txt" if case.startswith("non") else "in.jsonl"),
                    b"fine\ncaf\xe9\n" if case.startswith("non") else b"")
    workdir = reference_dir
    args = ["--config", "tests/helpers.py", "--workdir", str(workdir), "--mode=predict",
            f"--input={inputs}", f"--output={tmp_path / 'out.jsonl'}"]
    expect = (f"error: {inputs}:2: bytes that are not UTF-8 (b'\\xe9\\n'); save the file as UTF-8"
              if case.startswith("non") else f"error: {inputs} is empty")
  elif case == "damaged config.json, predict":
    workdir = tmp_path / "run"
    shutil.copytree(reference_dir, workdir)
    (workdir / "config.json").write_text('{"model": ')
    inputs = _write(tmp_path / "in.txt", "fine\n")
    args = ["--config", "tests/helpers.py", "--workdir", str(workdir), "--mode=predict",
            f"--input={inputs}", f"--output={tmp_path / 'out.jsonl'}"]
    expect = (f"error: {workdir / 'config.json'} is damaged: it is not JSON (Expecting value: "
              "line 1 column 11 (char 10)); restore it from a copy, or move it away")
  elif case == "more devices than exist":  # the tests' processes have 4 (conftest.py)
    args = ["--config", "tests/helpers.py", "--workdir", str(workdir),
            "--config.parallel.num_devices=8"]
    expect = ("error: config.parallel.num_devices=8 but only 4 local devices exist (on CPU, "
              "XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)")
  if data.exists():
    args = ["--config", "tests/helpers.py", "--workdir", str(workdir),
            f"--config.data.dataset={data}"]
  before = sorted(str(p) for p in workdir.rglob("*")) if workdir.is_dir() else None
  try:
    result = _cli(*(args or ["--config", "tests/helpers.py", "--workdir", str(workdir)]))
  finally:
    if case == "read-only workdir":
      subprocess.run(["umount", str(tmp_path / "ro")])
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == expect
  after = sorted(str(p) for p in workdir.rglob("*")) if workdir.is_dir() else None
  assert after == before  # nothing written, nothing lost
  assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "ckpt" / "pwned").exists()


def test_debug_shows_the_traceback(tmp_path):
  _write(tmp_path / "data" / "train.jsonl", "")
  result = _tiny_cli(tmp_path / "w", f"--config.data.dataset={tmp_path / 'data'}", "--debug")
  assert result.returncode != 0 and "Traceback" in result.stderr
  assert "is empty" in result.stderr
