"""Hyper-parameter search (`research.tune`): spaces and samplers in-process, then a few tiny
studies end to end (pruning, failure, kill -9 and resume, two workers on SQLite, journal and a
real PostgreSQL server, the best trial rerun with new seeds)."""

import argparse
import csv
import json
import math
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from conftest import REPO, require_data
from helpers import tiny_config
from research import search_space, train, tune
from research.search_space import SpaceError

# A study's config: 8 steps, an evaluation (reported to the trial) every 4.
TINY_STUDY = f'''
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from helpers import tiny_config

def get_config(arg=None):
  return tiny_config(**{{"train.num_steps": 8, "eval.every_steps": 4, "checkpoint.every_steps": 4,
                        "log.every_steps": 4, "eval.best_metric": arg or "accuracy"}})

def get_space(space):
  return SPACE
'''


# Trials that differ in their seed only share one compiled train step (JAX's compilation cache).
SEEDS = ('{"config.seed": space.integer(0, 1000), '
         '"config.optimizer.learning_rate": space.fixed(1e-4)}')

LEARNING_RATE = '{"config.optimizer.learning_rate": space.log_uniform(1e-5, 1e-3)}'


def _study_config(tmp_path: pathlib.Path, space: str) -> pathlib.Path:
  """A config file of the tiny run with `get_space` returning `space` (Python source)."""
  path = tmp_path / "tiny_study.py"
  path.write_text(TINY_STUDY.replace("  return SPACE", f"  return {space}"))
  return path


def _load(folder: pathlib.Path, storage: str | None = None) -> optuna.Study:
  return optuna.load_study(study_name=folder.name,
                           storage=storage or f"sqlite:///{folder / 'study.db'}")


def _tune(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "research.tune", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


def _eval_values(workdir: pathlib.Path, metric: str) -> dict[int, float]:
  """The run's own evaluation files: {step: metric on validation}."""
  return {int(m.group(1)): json.loads(p.read_text())["metrics"][metric]
          for p in (workdir / "eval").iterdir()
          if (m := re.fullmatch(r"validation_step(\d+)\.json", p.name))}


# ---- spaces and samplers, in-process ---------------------------------------------------------


def test_space_declarations_refuse_what_cannot_be_searched():
  config = tiny_config()
  good = search_space.checked({
      "config.optimizer.learning_rate": search_space.log_uniform(1e-5, 1e-3),
      "config.train.batch_size": search_space.choice([16, 32]),
      "config.seed": search_space.fixed(3)}, config, "c.py")
  assert search_space.record(good) == {
      "optimizer.learning_rate": {"kind": "log_uniform", "low": 1e-5, "high": 1e-3},
      "train.batch_size": {"kind": "choice", "values": [16, 32]},
      "seed": {"kind": "fixed", "value": 3}}
  bad = [({"config.optimizer.learnin_rate": search_space.uniform(0.0, 1.0)},
          "config.optimizer.learnin_rate' does not fit the config"),
         ({"config.optimizer.learning_rate": search_space.uniform(1e-3, 1e-3)},
          "config.optimizer.learning_rate: empty range, low 0.001 >= high 0.001"),
         ({"config.optimizer.learning_rate": search_space.log_uniform(0.0, 1e-3)},
          "config.optimizer.learning_rate: a log scale needs low > 0, not 0.0"),
         ({"config.train.batch_size": search_space.choice([])},
          "config.train.batch_size: choice of no values"),
         ({"config.train.batch_size": search_space.uniform(8.0, 32.0)},
          "config.train.batch_size' does not fit the config"),
         # a uniform range samples floats, whatever its bounds: not for an integer field
         ({"config.train.batch_size": search_space.uniform(8, 32)},
          "config.train.batch_size' does not fit the config"),
         # equal values Optuna could not tell apart (it keeps a choice by list.index)
         ({"config.train.batch_size": search_space.choice([16, True, 1])},
          "config.train.batch_size: choice [16, True, 1] repeats a value (1 equals True)"),
         ({"config.optimizer.learning_rate": search_space.choice([1e-4, 3e-4, 0.0001])},
          "repeats a value (0.0001 equals 0.0001)"),
         ({"optimizer.learning_rate": search_space.uniform(0.0, 1.0)},
          "must start with 'config.'"),
         ({}, "must return a non-empty dict")]
  for declared, message in bad:
    with pytest.raises(SpaceError, match=None) as error:
      search_space.checked(declared, config, "c.py")
    assert message in str(error.value) and "\n" not in str(error.value)


def _proposals(sampler_name: str, space: dict, n: int, workers: int = 1) -> list[dict]:
  """`n` trials asked as the tuner asks them, each told a value, by `workers` tuners (each its
  own sampler, with the same --seed) taking turns on one study."""
  storage = optuna.storages.InMemoryStorage()
  studies = [optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
             for _ in range(workers)]
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    trial = tune.ask(studies[i % workers], sampler_name, space, seed=0)
    studies[i % workers].tell(trial, float(rng.random()))
    out.append(trial.params)
  return out


@pytest.mark.parametrize("sampler_name", ["quasi-random", "tpe"])
def test_samplers_propose_configs_within_the_declared_space(sampler_name):
  space = search_space.checked({
      "config.optimizer.learning_rate": search_space.log_uniform(1e-5, 1e-3),
      "config.optimizer.weight_decay": search_space.uniform(0.0, 0.1),
      "config.train.batch_size": search_space.choice([16, 32]),
      "config.train.grad_accum_steps": search_space.integer(1, 4)}, tiny_config(), "c.py")
  proposals = _proposals(sampler_name, space, 16)
  rates = np.array([p["optimizer.learning_rate"] for p in proposals])
  assert ((1e-5 <= rates) & (rates <= 1e-3)).all()
  assert all(0.0 <= p["optimizer.weight_decay"] <= 0.1 for p in proposals)
  assert {p["train.batch_size"] for p in proposals} == {16, 32}
  assert {p["train.grad_accum_steps"] for p in proposals} <= {1, 2, 3, 4}
  # Log-uniform: each decade holds about half of the rates (a uniform draw would put 90% of
  # them in the upper decade). Sobol points are balanced: 8 ± 1 (Optuna draws the first trial
  # at random); TPE's first 10 are random draws, then it follows the told values.
  low_decade = int((rates < 1e-4).sum())
  assert (7 <= low_decade <= 9) if sampler_name == "quasi-random" else (3 <= low_decade <= 13)
  for p in proposals:  # each proposal is a config the run accepts
    config = tiny_config()
    for name, value in p.items():
      search_space.set_field(config, name, value)
  # Two workers (or a rerun after a kill) with one --seed do not propose the same points.
  shared = _proposals(sampler_name, space, 6, workers=2)
  assert len({p["optimizer.learning_rate"] for p in shared}) == 6


@pytest.mark.parametrize("sampler_name", ["random", "gp", "cmaes"])
def test_the_other_samplers_propose_distinct_points_within_the_space(sampler_name):
  space = search_space.checked({
      "config.optimizer.learning_rate": search_space.log_uniform(1e-5, 1e-3),
      "config.optimizer.weight_decay": search_space.uniform(0.0, 0.1)}, tiny_config(), "c.py")
  proposals = _proposals(sampler_name, space, 8)
  assert all(1e-5 <= p["optimizer.learning_rate"] <= 1e-3 for p in proposals)
  assert all(0.0 <= p["optimizer.weight_decay"] <= 0.1 for p in proposals)
  assert len({p["optimizer.learning_rate"] for p in proposals}) == 8


def test_grid_sampler_visits_every_point_once_and_ranges_are_refused():
  space = search_space.checked({"config.train.batch_size": search_space.choice([16, 32]),
                                "config.seed": search_space.choice([0, 1, 2])},
                               tiny_config(), "c.py")
  assert tune.grid_size(space) == 6
  points = {tuple(p.values()) for p in _proposals("grid", space, 6)}
  assert points == {(b, s) for b in (16, 32) for s in (0, 1, 2)}
  ranged = search_space.checked({"config.seed": search_space.integer(0, 3)}, tiny_config(), "c")
  with pytest.raises(tune.TuneError, match="--sampler grid searches choices only; seed is int"):
    tune.make_sampler("grid", ranged, seed=0)
  with pytest.raises(tune.TuneError, match="--sampler 'tpe:n_startup_trial=3': "):
    tune.make_sampler("tpe:n_startup_trial=3", ranged, seed=0)
  assert tune.make_pruner("asha", 4, 8)._min_resource == 4  # steps: the evaluation interval
  assert (tune.failure_reason(-signal.SIGKILL, pathlib.Path("/nonexistent"))
          == "killed by SIGKILL (out of memory?)")



def test_a_failed_resumed_trials_reason_is_its_own_sessions(tmp_path):
  """A resumed trial appends to its tune.log: the error line of the session it resumed (a
  signal that stopped it) is not the reason the resumed one failed."""
  log = tmp_path / "tune.log"
  log.write_text("error: stopped by SIGTERM at step 4 of 8, with a checkpoint: rerun ...\n")
  start = log.stat().st_size
  with log.open("a") as file:
    file.write("Fatal Python error: Segmentation fault\n\n")
  assert (tune.failure_reason(1, log, start)
          == "exit status 1: Fatal Python error: Segmentation fault")
  assert tune.failure_reason(2, log, 0).startswith("stopped by SIGTERM at step 4")


def test_bad_commands_are_one_line_and_a_rerun_must_match_the_study(tmp_path, capsys):
  config = _study_config(tmp_path, LEARNING_RATE.replace("1e-5, 1e-3", "1e-3, 1e-5"))
  study = tmp_path / "study"
  assert tune.main(["--config", str(config), "--study", str(study), "--trials", "2"]) == 2
  assert capsys.readouterr().err == ("error: search space config.optimizer.learning_rate: empty "
                                     "range, low 0.001 >= high 1e-05\n")
  assert not study.exists()
  config = _study_config(tmp_path, LEARNING_RATE)
  assert tune.main(["--config", str(config), "--study", str(study), "--pruner",
                    "median:n_warmup=2"]) == 2
  assert capsys.readouterr().err == (
      "error: --pruner 'median:n_warmup=2': MedianPruner.__init__() got an unexpected keyword "
      "argument 'n_warmup'\n")
  assert not study.exists()  # a mistake in the command leaves no study behind
  assert tune.main(["--config", str(config), "--study", str(study), "--sampler", "tpe"]) == 0
  assert _load(study).user_attrs["sampler"] == "tpe"
  # A command that runs no trial (the report, --rerun-best) need not repeat the sampler.
  assert tune.main(["--config", str(config), "--study", str(study), "--sampler", "random"]) == 0
  assert tune.main(["--config", str(config), "--study", str(study), "--sampler", "random",
                    "--trials", "1"]) == 2
  assert capsys.readouterr().err == (
      f"error: study 'study' in sqlite:///{study / 'study.db'} was made with --sampler \"tpe\"; "
      "this command gives \"random\": rerun it as it was made, or use another --study / "
      "--study-name\n")
  # The config file edited after the study was made (its trials would not be comparable):
  # refused, naming what changed; the base value of a searched field does not count.
  source = config.read_text()
  config.write_text(source.replace('"log.every_steps": 4', '"log.every_steps": 2'))
  assert tune.main(["--config", str(config), "--study", str(study), "--sampler", "tpe"]) == 2
  assert capsys.readouterr().err == (
      f"error: study 'study' in sqlite:///{study / 'study.db'} was made from another {config}: "
      "log.every_steps 4 there, 2 now: put the file back as it was, or use another --study / "
      "--study-name\n")
  config.write_text(source.replace('"log.every_steps": 4,',
                                   '"log.every_steps": 4, "optimizer.learning_rate": 0.5,'))
  assert tune.main(["--config", str(config), "--study", str(study), "--sampler", "tpe"]) == 0
  config.write_text(source)
  assert tune.main(["--config", str(config), "--study", str(study), "--sampler", "grid",
                    "--trials", "3"]) == 2
  assert "grid searches choices only" in capsys.readouterr().err
  assert tune.main(["--config", str(config), "--study", str(study), "--sampler", "tpe:seed=5"]
                   ) == 2
  assert capsys.readouterr().err == "error: --sampler 'tpe:seed=5': the sampler's seed is --seed\n"
  assert tune.main(["--config", str(config), "--study", str(tmp_path / "other"), "--storage",
                    f"journal:{tmp_path / 'no_such_folder' / 'journal.log'}"]) == 2
  assert capsys.readouterr().err == (
      f"error: --storage journal:{tmp_path / 'no_such_folder' / 'journal.log'} does not open: "
      "No such file or directory\n")
  assert tune.main(["--config", str(config), "--study", str(study), "--storage",
                    f"postgresql+psycopg2://nobody@/x?host={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --storage postgresql+psycopg2://nobody@/x?host=") and \
      err.count("\n") == 1


def test_a_new_study_needs_a_folder_of_its_own(tmp_path, capsys):
  """A study in a file, in a run's workdir, or beside another study of the folder (another
  --storage or --study-name: both would train trial 0 in trials/0000) is refused, in one line,
  and nothing is written there."""
  config = str(_study_config(tmp_path, LEARNING_RATE))
  (tmp_path / "a_file").write_text("notes\n")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("{}\n")
  study = tmp_path / "study"
  assert tune.main(["--config", config, "--study", str(study)]) == 0
  cases = [
      (["--study", str(tmp_path / "a_file")],
       f"--study {tmp_path / 'a_file'}: cannot make the study folder: File exists"),
      (["--study", str(workdir)],
       f"--study {workdir} holds config.json but no study 'run' in sqlite:///"
       f"{workdir / 'study.db'}: a new study needs an empty or new folder"),
      (["--study", str(study), "--storage", "journal"],
       f"--study {study} holds study.db but no study 'study' in journal:{study / 'journal.log'}"),
      (["--study", str(study), "--study-name", "other"],
       f"--study {study}: sqlite:///{study / 'study.db'} holds the study 'study', not 'other': "
       "one study per folder")]
  for command, message in cases:
    assert tune.main(["--config", config, *command]) == 2, command
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
  assert sorted(p.name for p in workdir.iterdir()) == [".ask.lock", "config.json"]
  assert sorted(p.name for p in study.iterdir()) == [".ask.lock", "study.db"]
  assert optuna.study.get_all_study_names(f"sqlite:///{study / 'study.db'}") == ["study"]
  # A shared database (PostgreSQL; here an SQLite file outside the folders): the study of
  # another folder of the same name is refused, before it resumes that folder's trials here.
  shared = f"sqlite:///{tmp_path / 'shared.db'}"
  mine, theirs = tmp_path / "mine" / "study", tmp_path / "theirs" / "study"
  assert tune.main(["--config", config, "--study", str(mine), "--storage", shared]) == 0
  made = optuna.load_study(study_name="study", storage=shared)
  trial = made.ask({"optimizer.learning_rate": optuna.distributions.FloatDistribution(
      1e-5, 1e-3, log=True)})
  trial.set_user_attr("workdir", "trials/0000")
  made.tell(trial, 0.5)
  (mine / "trials" / "0000").mkdir(parents=True)
  assert tune.main(["--config", config, "--study", str(mine), "--storage", shared]) == 0
  assert tune.main(["--config", config, "--study", str(theirs), "--storage", shared]) == 2
  assert capsys.readouterr().err == (
      f"error: study 'study' in {shared} has 1 finished trial(s), none of them in {theirs} (the "
      "study of another folder of that name?): give another --study-name, or the folder the "
      "study trains in\n")


def test_a_searched_step_count_is_no_budget(tmp_path):
  """train.num_steps searched: no trial's budget is the base config's, which Hyperband would
  take for every trial's maximum (and the tables for the steps of every trial)."""
  config = _study_config(tmp_path, '{"config.train.num_steps": space.choice([8, 16])}')
  setup = tune.load_setup(str(config), tmp_path / "s")
  assert setup.budget is None and setup.eval_every == 4
  assert tune.make_pruner("hyperband", setup.eval_every, setup.budget)._max_resource == "auto"
  config = _study_config(tmp_path, '{"config.train.num_steps": space.fixed(12)}')
  assert tune.load_setup(str(config), tmp_path / "s").budget == 12


def test_a_pruner_that_cannot_prune_is_told(tmp_path, capsys):
  """A trial reports its evaluations only: one that evaluates at its end alone is never
  pruned, which the command says instead of pruning nothing silently."""
  config = _study_config(tmp_path, LEARNING_RATE)
  config.write_text(config.read_text().replace('"eval.every_steps": 4', '"eval.every_steps": 8'))
  assert tune.main(["--config", str(config), "--study", str(tmp_path / "s"), "--pruner",
                    "median"]) == 0
  assert capsys.readouterr().err == (
      "warning: --pruner median stops no trial: a trial evaluates at its last step only "
      "(eval.every_steps 8, train.num_steps 8)\n")
  assert tune.main(["--config", str(config), "--study", str(tmp_path / "s2")]) == 0
  assert capsys.readouterr().err == ""


def test_a_trial_that_ended_is_told_and_the_outputs_follow_at_once(tmp_path):
  """A trial whose run finished before its tuner was killed is told its results.json (its best
  evaluation's value), not trained again; trials.csv is rewritten as each trial ends, not only
  when the command ends."""
  config = _study_config(tmp_path, LEARNING_RATE)
  folder = tmp_path / "study"
  assert tune.main(["--config", str(config), "--study", str(folder), "--sampler", "random"]) == 0
  study = _load(folder)
  trial = study.ask({"optimizer.learning_rate": optuna.distributions.FloatDistribution(
      1e-5, 1e-3, log=True)})
  workdir = folder / "trials" / "0000"
  workdir.mkdir(parents=True)
  (workdir / "results.json").write_text(json.dumps({
      "train": {"steps": 8}, "pruned": None, "best": {"step": 4, "value": 0.75},
      "final": {"step": 8, "results": {"validation": {"accuracy": 0.5}}}}))
  args = argparse.Namespace(
      trials=1, sampler="random", pruner="none", seed=0, study_name=None, keep_checkpoints="all")
  setup = tune.load_setup(str(config), folder)
  tuner = tune.Tuner(setup, study, tune.storage_url(None, folder), args)
  assert tuner.search(1) == 0
  assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.75
  with (folder / "trials.csv").open() as file:
    assert [(r["number"], r["accuracy"], r["steps"]) for r in csv.DictReader(file)] == [
        ("0", "0.75", "8")]


# ---- studies end to end ----------------------------------------------------------------------


def test_study_prunes_records_failures_and_two_workers_split_it(tmp_path):
  """Four grid trials on SQLite by two workers: loss is the metric, a threshold prunes the
  trial whose learning rate blows the loss up, and grad_accum_steps 3 (not a divisor of the
  batch) fails two trials with the run's one-line error; the study goes on."""
  require_data("sst2")
  config = _study_config(tmp_path, '{"config.optimizer.learning_rate": space.choice([1e-4, 1.0]), '
                         '"config.train.grad_accum_steps": space.choice([1, 3])}')
  folder = tmp_path / "grid"
  process = _tune("--config", f"{config}:loss", "--study", str(folder), "--trials", "4",
                  "--sampler", "grid", "--pruner", "threshold:upper=1.0", "--workers", "2")
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err
  study = _load(folder)
  base = study.user_attrs["base"]  # the config's fields but the searched ones
  assert base["train.num_steps"] == 8 and base["eval.best_metric"] == "loss"
  assert "optimizer.learning_rate" not in base and "train.grad_accum_steps" not in base
  assert {k: v for k, v in study.user_attrs.items() if k != "base"} == {
      "config": f"{config}:loss", "config_path": str(config), "metric": "loss",
      "direction": "minimize", "sampler": "grid", "pruner": "threshold:upper=1.0", "seed": 0,
      "budget": 8, "space": {
          "optimizer.learning_rate": {"kind": "choice", "values": [1e-4, 1.0]},
          "train.grad_accum_steps": {"kind": "choice", "values": [1, 3]}}}
  trials = {(t.params["optimizer.learning_rate"], t.params["train.grad_accum_steps"]): t
            for t in study.trials}
  assert len(trials) == len(study.trials) == 4
  assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers took trials
  for t in study.trials:
    assert t.user_attrs["workdir"] == f"trials/{t.number:04d}"
    assert t.user_attrs["overrides"] == t.params
  completed, pruned = trials[1e-4, 1], trials[1.0, 1]
  completed_dir, pruned_dir = (folder / t.user_attrs["workdir"] for t in (completed, pruned))
  # The values Optuna holds are the runs' own evaluations.
  assert completed.state == TrialState.COMPLETE and completed.user_attrs["outcome"] == "completed"
  assert completed.intermediate_values == _eval_values(completed_dir, "loss")
  assert completed.value == min(_eval_values(completed_dir, "loss").values())
  results = json.loads((completed_dir / "results.json").read_text())
  assert completed.value == results["best"]["value"]
  assert completed.user_attrs["steps"] == 8
  assert any((completed_dir / "checkpoints").iterdir())  # kept by default
  assert pruned.state == TrialState.PRUNED and pruned.user_attrs["outcome"] == "pruned"
  assert pruned.intermediate_values == _eval_values(pruned_dir, "loss") and \
      list(pruned.intermediate_values) == [4] and pruned.intermediate_values[4] > 1.0
  assert pruned.user_attrs["steps"] == 4
  assert json.loads((pruned_dir / "results.json").read_text())["pruned"] == {"step": 4}
  assert json.loads((pruned_dir / "run.json").read_text())["outcome"] == "pruned at step 4"
  for key in ((1e-4, 3), (1.0, 3)):
    assert trials[key].state == TrialState.FAIL
    assert trials[key].user_attrs["outcome"] == (
        "failed: config.train.grad_accum_steps: 3 must be >= 1 and divide train.batch_size 16")
  lines = out.splitlines()
  assert f"[trial {pruned.number}] pruned at step 4 (loss {pruned.intermediate_values[4]:.4g})" \
      in "\n".join(lines)
  assert any(line.startswith(f"[trial {completed.number}, {completed.number + 1} of 4] "
                             f"learning_rate=0.0001 grad_accum_steps=1") for line in lines)
  assert lines[-1].startswith("4 trials: 1 completed, 1 pruned, 2 failed, 0 running or to "
                              f"resume; best trial {completed.number}: loss")


def test_kill_9_of_the_tuner_then_two_journal_workers_resume_without_duplicates(tmp_path):
  require_data("sst2")
  config = _study_config(tmp_path, SEEDS)
  folder, marker = tmp_path / "journal", tmp_path / "paused"
  command = ["--config", str(config), "--study", str(folder), "--trials", "2", "--sampler",
             "quasi-random", "--storage", "journal"]
  # The first trial is held after its step 8 (its step-4 checkpoint is complete by then: the
  # step-8 save waits for it); kill -9 lands there and takes the trial with it.
  process = _tune(*command, env={train.PAUSE_ENV: f"step:8:{marker}"})
  deadline = time.monotonic() + 300
  while not pathlib.Path(f"{marker}.0").exists():
    assert time.monotonic() < deadline and process.poll() is None
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL
  process.communicate()
  storage = tune.open_storage(f"journal:{folder / 'journal.log'}")
  assert [t.state for t in _load(folder, storage).trials] == [TrialState.RUNNING]
  first_params = _load(folder, storage).trials[0].params
  # Two tuners started on the same study: one resumes trial 0, the other runs trial 1.
  workers = [_tune(*command) for _ in range(2)]
  outputs = [w.communicate(timeout=600) for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs
  study = _load(folder, tune.open_storage(f"journal:{folder / 'journal.log'}"))
  assert [(t.number, t.state) for t in study.trials] == [(0, TrialState.COMPLETE),
                                                         (1, TrialState.COMPLETE)]
  assert study.trials[0].params == first_params
  assert sorted(p.name for p in (folder / "trials").iterdir()) == ["0000", "0001"]
  assert len({t.user_attrs["worker"].rsplit(":", 1)[0] for t in study.trials}) == 2
  sessions = json.loads((folder / "trials/0000/run.json").read_text())["sessions"]
  assert [s["outcome"] for s in sessions] == [None, "finished"]  # killed, then resumed
  assert sessions[1]["first_step"] in (4, 8)  # from its own checkpoint
  assert len(json.loads((folder / "trials/0001/run.json").read_text())["sessions"]) == 1
  assert "(resuming trials/0000)" in "".join(out for out, _ in outputs)
  for t in study.trials:
    assert t.value == json.loads((folder / f"trials/{t.number:04d}/results.json").read_text())[
        "best"]["value"]


@pytest.fixture
def postgres_url():
  """A private PostgreSQL cluster on a unix socket in a temporary folder, and a database in
  it; stopped and removed afterwards. As root, the server runs as the `postgres` user (it
  refuses root)."""
  initdb = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"))
  found = shutil.which("initdb")
  if not initdb and not found:
    pytest.fail("the PostgreSQL server is not installed (initdb not found in "
                "/usr/lib/postgresql/*/bin or on PATH): apt-get install postgresql (.ci/run does)")
  bin_dir = initdb[-1].parent if initdb else pathlib.Path(found).parent
  folder = pathlib.Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # a socket path is short
  as_owner = []
  if os.geteuid() == 0:
    shutil.chown(folder, "postgres")
    as_owner = ["runuser", "-u", "postgres", "--"]
  data = folder / "data"

  def run(*command):
    subprocess.run(as_owner + [str(bin_dir / command[0]), *command[1:]], check=True,
                   stdout=subprocess.DEVNULL, timeout=120)

  try:
    run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run("pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
        f"-c listen_addresses='' -k {folder} -c fsync=off", "start")
    try:
      run("createdb", "-h", str(folder), "-U", "postgres", "tune")
      yield f"postgresql+psycopg2://postgres@/tune?host={folder}"
    finally:
      run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_study_with_two_workers_then_the_best_rerun_with_new_seeds(tmp_path,
                                                                              postgres_url):
  require_data("sst2")
  config = _study_config(tmp_path, SEEDS)
  folder = tmp_path / "pg"
  process = _tune("--config", str(config), "--study", str(folder), "--trials", "2", "--sampler",
                  "random", "--storage", postgres_url, "--workers", "2", "--rerun-best", "2",
                  "--keep-checkpoints", "none")
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err
  study = _load(folder, postgres_url)
  assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
  # --keep-checkpoints none: every ended run keeps its records, not its weights.
  runs = [folder / t.user_attrs["workdir"] for t in study.trials] + sorted(
      (folder / "best").glob("seed=*"))
  assert len(runs) == 4
  for run in runs:
    assert (run / "results.json").is_file() and (run / "metrics.jsonl").is_file()
    assert not (run / "checkpoints").exists() and not (run / "best").exists(), run
  assert len({t.user_attrs["worker"] for t in study.trials}) == 2
  assert not (folder / "study.db").exists()
  # The best trial's config with the next two seeds, summarised as research.report does.
  best = study.best_trial
  assert best.user_attrs["overrides"] == {**best.params, "optimizer.learning_rate": 1e-4}
  finals = []
  for seed in (best.params["seed"] + 1, best.params["seed"] + 2):
    run = folder / "best" / f"seed={seed}"
    saved = json.loads((run / "config.json").read_text())
    assert saved["seed"] == seed and saved["optimizer"]["learning_rate"] == 1e-4
    finals.append(json.loads((run / "results.json").read_text())["final"]["results"][
        "validation"]["accuracy"])
  with (folder / "best" / "results.csv").open() as f:
    (row,) = csv.DictReader(f)
  mean, std, low, high = (float(row[f"accuracy_{k}"]) for k in ("mean", "std", "ci_low", "ci_high"))
  half = stats.t.ppf(0.975, 1) * statistics.stdev(finals) / math.sqrt(2)
  assert mean == pytest.approx(statistics.fmean(finals))
  assert std == pytest.approx(statistics.stdev(finals))
  assert (low, high) == (pytest.approx(mean - half), pytest.approx(mean + half))
  assert f"rerunning the best trial {best.number}" in out


def test_on_evaluation_prunes_the_run_and_a_resumed_pruned_run_trains_no_further(tmp_path):
  """train.py's hook alone: told each evaluation's selection metric, True stops the run after
  that step's checkpoint; resumed before its results.json was written, it stays pruned."""
  require_data("sst2")
  config = tiny_config(**{"train.num_steps": 12, "eval.every_steps": 4,
                          "checkpoint.every_steps": 4})
  told = []

  def prune_at_8(step, value):
    told.append((step, value))
    return step == 8

  summary = train.train_and_evaluate(config, tmp_path, on_evaluation=prune_at_8)
  assert told == sorted(_eval_values(tmp_path, "accuracy").items())
  assert [step for step, _ in told] == [4, 8]
  assert summary["pruned"] == {"step": 8} and summary["train"]["steps"] == 8
  assert json.loads((tmp_path / "run.json").read_text())["outcome"] == "pruned at step 8"
  (tmp_path / "results.json").unlink()  # as if killed just before it was written
  again = train.train_and_evaluate(config, tmp_path)
  assert again["pruned"] == {"step": 8} and again["train"]["steps"] == 8
  assert again["final"] == summary["final"]
  sessions = json.loads((tmp_path / "run.json").read_text())["sessions"]
  assert [(s["outcome"], s["first_step"], s["last_step"]) for s in sessions] == [
      ("pruned at step 8", 0, 8), ("pruned at step 8", 8, 8)]


def test_the_glue_configs_space_is_searchable(tmp_path):
  """The README's tuning command: configs/glue.py declares a space of real fields."""
  setup = tune.load_setup("configs/glue.py:rte", tmp_path)
  assert sorted(setup.space) == ["optimizer.learning_rate", "optimizer.warmup_ratio",
                                 "optimizer.weight_decay", "train.batch_size"]
  assert (setup.metric, setup.direction) == ("accuracy", "maximize")


@pytest.mark.parametrize("how", ["processes", "launcher"])
def test_a_trial_of_two_processes_is_given_one_config_and_pruned_at_one_step(tmp_path, how):
  """Each trial is one run of two processes (jax.distributed), started here (--processes 2) or
  by a launcher (--launcher: a stand-in for srun that starts two tasks with SLURM's
  variables). The worker asks Optuna once and gives both processes the trial's parameters
  (where each process asking would train another config: transformers #18609); process 0
  reports to the trial and the pruner's answer reaches both, so that both stop at one step."""
  require_data("sst2")
  config = _study_config(tmp_path, '{"config.optimizer.learning_rate": space.choice([1.0]), '
                         '"config.parallel.num_devices": space.fixed(0)}')
  folder = tmp_path / "two"
  launch = (["--processes", "2"] if how == "processes" else
            ["--launcher", f"{sys.executable} {REPO / 'tests' / 'stand_in_srun.py'} --ntasks=2"])
  process = _tune("--config", f"{config}:loss", "--study", str(folder), "--trials", "1",
                  "--sampler", "grid", "--pruner", "threshold:upper=1.0", *launch)
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err + out
  [trial] = _load(folder).trials
  workdir = folder / trial.user_attrs["workdir"]
  assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [4]
  assert json.loads((workdir / "results.json").read_text())["pruned"] == {"step": 4}
  assert json.loads((workdir / "results.json").read_text())["processes"] == 2
  told = '{"optimizer.learning_rate": 1.0, "parallel.num_devices": 0}'
  if how == "processes":  # a log per process
    logs = [(workdir / name).read_text() for name in ("tune.log", "tune.p1.log")]
    for log in logs:
      assert re.findall(r"trial \d+'s overrides: (.*)", log) == [told]
      assert "jax.distributed: process" in log and "pruned at step 4" in log
  else:  # the launcher's one output: both tasks', each started by SLURM's variables
    logs = [(workdir / "tune.log").read_text()]
    assert re.findall(r"trial \d+'s overrides: (.*)", logs[0]) == [told, told]
    assert sorted(re.findall(r"jax.distributed: process (\d) of 2 \((SLURM \(2 tasks\))",
                             logs[0])) == [("0", "SLURM (2 tasks)"), ("1", "SLURM (2 tasks)")]
    assert logs[0].count("pruned at step 4") == 2
    assert not (workdir / "tune.p1.log").exists()
  for log in logs:
    assert "error" not in log.lower()


def test_a_launcher_is_checked_before_the_study_starts(tmp_path, capsys):
  config = _study_config(tmp_path, LEARNING_RATE)
  for launcher, extra, message in (
      ("no-such-srun --ntasks=2", [], "--launcher 'no-such-srun --ntasks=2': no command "
       "'no-such-srun' here"),
      ("srun 'unclosed", [], "--launcher \"srun 'unclosed\": No closing quotation"),
      ("true", ["--processes", "2"], "--launcher and --processes: the launcher's own options "
       "say how many processes a trial has (srun --ntasks=N)")):
    assert tune.main(["--config", str(config), "--study", str(tmp_path / "s"), "--trials", "1",
                      "--launcher", launcher, *extra]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
  assert not (tmp_path / "s").exists()


def test_a_searched_evaluation_interval_gives_the_pruners_its_smallest_value(tmp_path):
  """ASHA's and Hyperband's minimum resource is the fewest steps between a trial's evaluations:
  with eval.every_steps searched, the least it takes (the base value would be too late for the
  trials that evaluate more often)."""
  for declared, expected in (('space.choice([2, 4])', 2), ('space.integer(3, 8)', 3),
                             ('space.fixed(6)', 6)):
    config = _study_config(tmp_path, '{"config.eval.every_steps": ' + declared + '}')
    setup = tune.load_setup(str(config), tmp_path / "study")
    assert setup.eval_every == expected
    assert tune.make_pruner("asha", setup.eval_every, setup.budget)._min_resource == expected
  assert tune.load_setup(str(_study_config(tmp_path, SEEDS)), tmp_path / "s").eval_every == 4
