"""research.tune_report on Optuna studies built in memory: the trials table against the trials,
the expected best of n trials against brute force and Monte Carlo, the edge warnings, the plots,
and best_config.py loaded as research.main loads a config."""

import csv
import datetime
import itertools
import pathlib
import warnings

import matplotlib.figure
import matplotlib.image
import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from configs import default, glue
from research import tune_report

REPO = pathlib.Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPACE = {"optimizer.learning_rate": {"kind": "log_uniform", "low": 1e-5, "high": 1e-3},
         "train.batch_size": {"kind": "choice", "values": [16, 32, 64]},
         "model.hidden_dropout_prob": {"kind": "uniform", "low": 0.0, "high": 0.3},
         "data.max_length": {"kind": "fixed", "value": 64}}
DISTRIBUTIONS = {"optimizer.learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
                 "train.batch_size": CategoricalDistribution([16, 32, 64]),
                 "model.hidden_dropout_prob": FloatDistribution(0.0, 0.3)}
START = datetime.datetime(2026, 1, 1, 12, 0, 0)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def new_study(direction="maximize", config="configs/glue.py:rte",
              config_path=REPO / "configs/glue.py", storage=None, name="rte_tpe"):
  study = optuna.create_study(direction=direction, storage=storage, study_name=name)
  for key, value in {"config": config, "config_path": str(config_path), "metric": "accuracy",
                     "direction": direction, "space": SPACE, "sampler": "tpe",
                     "pruner": "asha", "budget": 20}.items():
    study.set_user_attr(key, value)
  return study


def add_trial(study, state, lr, batch_size, dropout, value=None, intermediate=None,
              seconds=None, outcome=None):
  """A trial as the tuner records it: its overrides (the fixed field too), outcome, steps."""
  params = {"optimizer.learning_rate": lr, "train.batch_size": batch_size,
            "model.hidden_dropout_prob": dropout}
  number = len(study.trials)
  trial = create_trial(
      state=state, value=value, params=params, distributions=DISTRIBUTIONS,
      intermediate_values=intermediate or {},
      user_attrs={"workdir": f"trials/{number:04d}", "overrides": {**params, "data.max_length": 64},
                  "outcome": outcome or {TrialState.COMPLETE: "completed",
                                         TrialState.PRUNED: "pruned"}.get(state, "running"),
                  "steps": max(intermediate or {0: 0})})
  trial.datetime_start = START
  trial.datetime_complete = None if seconds is None else START + datetime.timedelta(
      seconds=seconds)
  study.add_trial(trial)


def mixed_study(**kwargs):
  """Completed, pruned, failed and running trials; the best (trial 2) in the middle of every
  range."""
  study = new_study(**kwargs)
  add_trial(study, TrialState.COMPLETE, 1e-4, 32, 0.1, 0.70, {10: 0.6, 20: 0.70}, 61.5)
  add_trial(study, TrialState.PRUNED, 3e-5, 16, 0.2, None, {10: 0.55}, 30.0)
  add_trial(study, TrialState.COMPLETE, 3e-4, 32, 0.15, 0.80, {10: 0.7, 20: 0.80}, 59.0)
  add_trial(study, TrialState.FAIL, 1e-3, 64, 0.3, None, {10: 0.5}, 12.0,
            outcome="failed: the loss diverged at step 12 | lr too high")
  add_trial(study, TrialState.COMPLETE, 2e-5, 16, 0.05, 0.75, {10: 0.7, 20: 0.75}, 70.25)
  add_trial(study, TrialState.COMPLETE, 5e-4, 64, 0.25, 0.65, {10: 0.6, 20: 0.65}, 66.0)
  add_trial(study, TrialState.RUNNING, 6e-5, 32, 0.12, None, {10: 0.62})
  return study


# ---- expected best of n trials ----------------------------------------------------------------


@pytest.mark.parametrize("direction,best", [("maximize", max), ("minimize", min)])
def test_expected_best_equals_the_enumeration_of_every_draw(direction, best):
  values = [0.3, 0.5, 0.5, 0.9, 0.1]  # a tie too
  for n in range(1, 5):
    bests = [best(draw) for draw in itertools.product(values, repeat=n)]  # equally likely
    mean, std = tune_report.expected_best(values, n, direction)
    assert mean == pytest.approx(np.mean(bests), abs=1e-12)
    assert std == pytest.approx(np.std(bests), abs=1e-12)
  assert tune_report.expected_max(values, 1) == pytest.approx((np.mean(values), np.std(values)))


def test_expected_max_agrees_with_monte_carlo():
  rng = np.random.default_rng(0)
  values = rng.normal(0.7, 0.05, size=40)
  n, draws = 15, 200_000
  maxima = rng.choice(values, size=(draws, n)).max(axis=1)
  mean, std = tune_report.expected_max(values, n)
  # Within 5 standard errors of the simulation's mean and variance.
  assert abs(mean - maxima.mean()) < 5 * maxima.std() / np.sqrt(draws)
  squares = (maxima - maxima.mean()) ** 2
  assert abs(std ** 2 - squares.mean()) < 5 * squares.std() / np.sqrt(draws)


# ---- edge warnings ----------------------------------------------------------------------------


def test_edge_warning_fires_in_the_outer_tenth_of_the_range_in_log_space():
  lr = SPACE["optimizer.learning_rate"]
  assert tune_report.edge_warning("optimizer.learning_rate", lr, 9.1e-4) == (
      "optimizer.learning_rate: the best trial's 9.1e-04 is at the upper edge of "
      "[1e-05, 1e-03]: widen the range")
  assert "lower edge" in tune_report.edge_warning("optimizer.learning_rate", lr, 1.2e-5)
  # 2e-5 is 1% of the way in linear space but 15% in log space: not at the edge.
  assert tune_report.edge_warning("optimizer.learning_rate", lr, 2e-5) is None
  assert tune_report.edge_warning("optimizer.learning_rate", lr, 1e-4) is None
  dropout = SPACE["model.hidden_dropout_prob"]
  assert "upper edge of [0, 0.3]" in tune_report.edge_warning("dropout", dropout, 0.29)
  assert "lower edge" in tune_report.edge_warning("dropout", dropout, 0.02)
  # 0.04 is 13% of the way in linear space; it would be at the edge in log space.
  assert tune_report.edge_warning("dropout", {"kind": "uniform", "low": 0.01, "high": 0.24},
                                  0.04) is None
  steps = {"kind": "int", "low": 100, "high": 1000}
  assert "upper edge" in tune_report.edge_warning("train.warmup_steps", steps, 950)
  assert tune_report.edge_warning("train.warmup_steps", steps, 500) is None
  batch = SPACE["train.batch_size"]
  assert tune_report.edge_warning("train.batch_size", batch, 64) == (
      "train.batch_size: the best trial's 64 is at the upper edge of the choices "
      "{16, 32, 64}: add choices beyond it")
  assert "lower edge" in tune_report.edge_warning("train.batch_size", batch, 16)
  assert tune_report.edge_warning("train.batch_size", batch, 32) is None
  two = {"kind": "choice", "values": [16, 32]}  # the best of two is always at an edge
  assert tune_report.edge_warning("train.batch_size", two, 32) is None
  names = {"kind": "choice", "values": ["adamw", "sgd", "lion"]}  # not ordered
  assert tune_report.edge_warning("optimizer.name", names, "lion") is None


def test_write_warns_about_the_best_trials_edge_values_only(tmp_path):
  study = mixed_study()
  warnings = tune_report.warnings_of(study, study.best_trial)
  assert [w for w in warnings if "edge" in w] == []  # trial 2: in the middle of each range
  assert warnings == ["1 of 7 trials failed (the first: trial 3 in trials/0003, failed: the loss "
                      "diverged at step 12 | lr too high): see trials.md"]
  add_trial(study, TrialState.COMPLETE, 9.5e-4, 64, 0.15, 0.9, {20: 0.9}, 60.0)
  warnings = tune_report.write(study, tmp_path)
  assert [w for w in warnings if "edge" in w] == [
      "optimizer.learning_rate: the best trial's 9.5e-04 is at the upper edge of "
      "[1e-05, 1e-03]: widen the range",
      "train.batch_size: the best trial's 64 is at the upper edge of the choices {16, 32, 64}: "
      "add choices beyond it"]
  text = (tmp_path / "trials.md").read_text()
  assert all(f"**Warning:** {w}." in text for w in warnings)
  # One completed trial: the best is only where it was drawn, no edge warning.
  lone = new_study(name="lone")
  add_trial(lone, TrialState.COMPLETE, 9.5e-4, 64, 0.15, 0.9, {20: 0.9}, 60.0)
  assert tune_report.warnings_of(lone, lone.best_trial) == []


# ---- tables and plots -------------------------------------------------------------------------


def test_tables_hold_every_trial_and_mark_the_best(tmp_path):
  study = mixed_study()
  tune_report.write(study, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temporary file left
      "best_config.py", "plots", "trials.csv", "trials.md"]
  trials = study.trials
  fields = ["optimizer.learning_rate", "train.batch_size", "model.hidden_dropout_prob"]
  with (tmp_path / "trials.csv").open() as file:
    rows = list(csv.DictReader(file))
  assert [int(r["number"]) for r in rows] == [t.number for t in trials]
  for row, trial in zip(rows, trials):
    assert row["state"] == {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned",
                            TrialState.FAIL: "failed", TrialState.RUNNING: "running"}[trial.state]
    assert row["outcome"] == trial.user_attrs["outcome"]
    expected = (trial.value if trial.state == TrialState.COMPLETE else
                trial.intermediate_values[10] if trial.state == TrialState.PRUNED else None)
    assert (float(row["accuracy"]) if row["accuracy"] else None) == expected
    assert int(row["steps"]) == trial.user_attrs["steps"]
    for field in fields:
      assert float(row[field]) == trial.user_attrs["overrides"][field]
    assert row["workdir"] == trial.user_attrs["workdir"]
    expected_seconds = (None if trial.datetime_complete is None else
                        (trial.datetime_complete - trial.datetime_start).total_seconds())
    assert (float(row["seconds"]) if row["seconds"] else None) == expected_seconds
    assert row["best"] == str(int(trial.number == study.best_trial.number))
  assert "data.max_length" not in rows[0]  # fixed: in the space line, not a column
  table = [[cell.strip() for cell in line.strip("|").split(" | ")]
           for line in (tmp_path / "trials.md").read_text().splitlines()
           if line.startswith("| ")]
  header, cells = table[0], table[1:]
  assert header == ["trial", "outcome", "accuracy", "steps", *fields, "seconds", "workdir"]
  assert [row[0] for row in cells] == ["0", "1", "2 ★", "3", "4", "5", "6"]
  assert cells[2][2:7] == ["0.8000", "20", "3e-04", "32", "0.15"]
  assert cells[4][4] == "2e-05" and cells[4][7] == "70"  # e-notation; seconds
  assert cells[1][2] == "0.5500"  # pruned: its last evaluation
  assert cells[3][1] == r"failed: the loss diverged at step 12 \| lr too high"
  assert cells[6][2] == "—" and cells[6][7] == "—"  # running
  text = (tmp_path / "trials.md").read_text()
  assert "`optimizer.learning_rate` log-uniform [1e-05, 1e-03]" in text
  assert "`data.max_length` = 64" in text
  assert "Trials: 4 completed, 1 pruned, 1 failed, 1 running." in text
  values = [0.70, 0.80, 0.75, 0.65]
  mean, std = tune_report.expected_max(values, 2)
  assert f"2: {mean:.4f} ± {std:.4f}" in text


def test_plots_one_per_hyperparameter_history_and_expected_best(tmp_path, monkeypatch):
  expected = {"history.png", "expected_best.png", "isolation_optimizer_learning_rate.png",
              "isolation_train_batch_size.png", "isolation_model_hidden_dropout_prob.png"}
  figures = {}  # by the name of the file each is saved to (through a temporary name)
  savefig = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, *a, **k: (
      figures.__setitem__(next(n for n in expected if n in pathlib.Path(path).name), fig),
      savefig(fig, path, *a, **k)))
  study = mixed_study()
  tune_report.write(study, tmp_path)
  assert {p.name for p in (tmp_path / "plots").iterdir()} == expected == set(figures)
  for name in expected:
    path = tmp_path / "plots" / name
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(path).shape[2] == 4  # decodes as an RGBA image
    assert len(figures[name].axes) == 1
    assert f"![{name}](plots/{name})" in (tmp_path / "trials.md").read_text()
  lines = lambda name: {line.get_label(): line for line in figures[name].axes[0].lines}  # noqa
  completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
  history = lines("history.png")
  assert list(history["completed"].get_xdata()) == [0, 2, 4, 5]
  assert list(history["best so far (maximize)"].get_ydata()) == [0.70, 0.80, 0.80, 0.80]
  assert list(history["pruned (last evaluation)"].get_ydata()) == [0.55]
  assert list(history["failed"].get_xdata()) == [3]
  # The best of each batch size: 16 -> trial 4, 32 -> trial 2, 64 -> trial 5.
  batch = lines("isolation_train_batch_size.png")
  assert list(batch["best per value"].get_ydata()) == [0.75, 0.80, 0.65]
  assert list(batch["best per value"].get_xdata()) == [0, 1, 2]  # places of 16, 32, 64
  assert figures["isolation_optimizer_learning_rate.png"].axes[0].get_xscale() == "log"
  low, high = figures["isolation_optimizer_learning_rate.png"].axes[0].get_xlim()
  assert low <= 1e-5 and high >= 1e-3  # the whole search range is shown
  assert figures["isolation_model_hidden_dropout_prob.png"].axes[0].get_xscale() == "linear"
  # Four completed trials: two bins of the log range [1e-5, 1e-3], split at 1e-4.
  lr = lines("isolation_optimizer_learning_rate.png")
  assert list(lr["best per bin"].get_xdata()) == [2e-5, 3e-4]
  values = [t.value for t in completed]
  expected_best = lines("expected_best.png")["expected best"]
  assert list(expected_best.get_xdata()) == [1, 2, 3, 4]
  assert np.allclose(expected_best.get_ydata(),
                     [tune_report.expected_max(values, n)[0] for n in range(1, 5)])


def test_a_minimizing_study_marks_the_lowest(tmp_path):
  study = new_study(direction="minimize")
  for lr, value in ((1e-4, 0.5), (3e-4, 0.3), (5e-5, 0.4)):
    add_trial(study, TrialState.COMPLETE, lr, 32, 0.1, value, {20: value}, 10.0)
  # A trial without one of the fields (as a conditional field would be): a blank cell.
  study.add_trial(create_trial(value=0.45, params={"optimizer.learning_rate": 2e-4},
                               distributions={"optimizer.learning_rate":
                                              DISTRIBUTIONS["optimizer.learning_rate"]},
                               user_attrs={"overrides": {"optimizer.learning_rate": 2e-4}}))
  tune_report.write(study, tmp_path)
  with (tmp_path / "trials.csv").open() as file:
    rows = list(csv.DictReader(file))
  assert [r["best"] for r in rows] == ["0", "1", "0", "0"]
  assert rows[3]["model.hidden_dropout_prob"] == "" and rows[3]["optimizer.learning_rate"] == (
      "0.0002")
  assert ("| 3 | completed | 0.4500 | — | 2e-04 | — | — |"
          in (tmp_path / "trials.md").read_text())
  mean, std = tune_report.expected_best([0.5, 0.3, 0.4, 0.45], 2, "minimize")
  assert mean < np.mean([0.5, 0.3, 0.4, 0.45])
  assert f"2: {mean:.4f} ± {std:.4f}" in (tmp_path / "trials.md").read_text()


def test_a_study_without_a_completed_trial_writes_its_tables(tmp_path):
  study = new_study()
  add_trial(study, TrialState.PRUNED, 3e-5, 16, 0.2, None, {10: 0.55}, 30.0)
  add_trial(study, TrialState.FAIL, 1e-3, 64, 0.3, None, {}, 12.0, outcome="failed: OOM")
  add_trial(study, TrialState.RUNNING, 6e-5, 32, 0.12, None, {})
  warnings = tune_report.write(study, tmp_path)
  assert [w for w in warnings if "completed" in w] == [
      "no completed trial yet (3 trial(s) in all): no best_config.py, no expected-best plot"]
  assert not (tmp_path / "best_config.py").exists()
  assert len((tmp_path / "trials.csv").read_text().splitlines()) == 1 + 3
  assert "no completed trial yet" in (tmp_path / "trials.md").read_text()
  assert not (tmp_path / "plots" / "expected_best.png").exists()
  assert (tmp_path / "plots" / "history.png").exists()


def test_plots_of_a_study_with_no_score_yet_warn_nothing(tmp_path):
  """The tuner rewrites the plots as each trial ends: a first trial that failed leaves no point
  on an isolation plot, whose range is then the search range alone (no matplotlib warning of
  an empty axis in the tuner's output)."""
  study = new_study()
  add_trial(study, TrialState.FAIL, 1e-3, 64, 0.3, None, {}, 12.0, outcome="failed: OOM")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tune_report.write_plots(study, tmp_path, None)
  assert (tmp_path / "plots" / "isolation_optimizer_learning_rate.png").exists()


# ---- best_config.py ---------------------------------------------------------------------------


def load_like_main(config_file: pathlib.Path, workdir: pathlib.Path):
  """The config research.main would train with: its flags parsed by its own parser."""
  from absl import flags
  from ml_collections import config_flags
  from research import main
  argv = ["main", "--config", str(config_file), "--workdir", str(workdir)]
  flag_values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv,
                                           lock_config=True)
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  main.parse_flags(argv, flag_values)
  return config.value


def test_best_config_is_the_base_config_with_the_best_overrides(tmp_path):
  study = mixed_study()
  best = {"optimizer.learning_rate": 3.3333333333333335e-4, "train.batch_size": 64,
          "model.hidden_dropout_prob": 0.15, "data.length_buckets": [32, 64],
          "data.max_length": 64}
  study.add_trial(create_trial(value=0.95, user_attrs={"overrides": best,
                                                       "workdir": "trials/0007"}))
  folder = tmp_path / "else where" / "study"  # outside the repository; a path with a space
  tune_report.write(study, folder)
  loaded = load_like_main(folder / "best_config.py", tmp_path / "run")
  expected = glue.get_config("rte")
  expected.optimizer.learning_rate = 3.3333333333333335e-4
  expected.train.batch_size = 64
  expected.model.hidden_dropout_prob = 0.15
  expected.data.length_buckets = (32, 64)
  expected.data.max_length = 64
  assert loaded.to_dict() == expected.to_dict()
  assert loaded.data.length_buckets == (32, 64)
  text = (folder / "best_config.py").read_text()
  assert "study rte_tpe (`--config configs/glue.py:rte`" in text
  assert "trial 7, accuracy 0.9500 (maximize)" in text
  # the command in its docstring runs as pasted into a shell
  assert f"python -m research.main --config '{folder.resolve()}/best_config.py' " in text


def test_best_config_refuses_in_one_line_when_its_base_is_gone(tmp_path, capsys):
  base = tmp_path / "my_task.py"  # a config file of no argument, outside the repository
  base.write_text("from configs import default\n\n\ndef get_config():\n"
                  "  return default.get_config()\n")
  study = new_study(config=str(base), config_path=base)
  add_trial(study, TrialState.COMPLETE, 2e-4, 16, 0.1, 0.7, {20: 0.7}, 10.0)
  add_trial(study, TrialState.COMPLETE, 3e-4, 32, 0.2, 0.6, {20: 0.6}, 10.0)
  tune_report.write(study, tmp_path / "study")
  expected = default.get_config()
  expected.optimizer.learning_rate = 2e-4
  expected.train.batch_size = 16
  expected.model.hidden_dropout_prob = 0.1
  expected.data.max_length = 64
  assert load_like_main(tmp_path / "study/best_config.py", tmp_path / "run").to_dict() == (
      expected.to_dict())
  base.unlink()
  with pytest.raises(SystemExit) as exit_info:
    load_like_main(tmp_path / "study/best_config.py", tmp_path / "run")
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip()
  assert len(error.splitlines()) == 1 and error.startswith("error: ")
  assert f"its base config {base} is gone" in error


# ---- the command ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["study.db", "journal.log"])
def test_cli_rewrites_the_outputs_of_a_study_folder(tmp_path, capsys, kind):
  from optuna.storages import journal
  path = tmp_path / kind
  storage = (f"sqlite:///{path}" if kind == "study.db" else
             journal.JournalStorage(journal.JournalFileBackend(str(path))))
  study = new_study(storage=storage)
  add_trial(study, TrialState.COMPLETE, 1e-4, 32, 0.1, 0.70, {20: 0.70}, 61.5)
  add_trial(study, TrialState.COMPLETE, 2e-4, 16, 0.1, 0.75, {20: 0.75}, 61.5)
  assert tune_report.main([str(tmp_path)]) == 0
  with (tmp_path / "trials.csv").open() as file:
    assert [r["best"] for r in csv.DictReader(file)] == ["0", "1"]
  assert (tmp_path / "best_config.py").exists()


def test_cli_refuses_a_folder_without_a_study_in_one_line(tmp_path, capsys):
  assert tune_report.main([str(tmp_path)]) == 2
  error = capsys.readouterr().err.strip()
  assert error == (f"error: {tmp_path} holds no study.db or journal.log (not a study folder of "
                   "research.tune?); give --storage URL for a study elsewhere")
  assert list(tmp_path.iterdir()) == []
  # Two studies in one folder (made before research.tune refused a second): neither is picked.
  (tmp_path / "study.db").touch()
  (tmp_path / "journal.log").touch()
  assert tune_report.main([str(tmp_path)]) == 2
  assert capsys.readouterr().err.startswith(
      f"error: {tmp_path} holds both study.db and journal.log: two studies of one folder")
  for name in ("study.db", "journal.log"):
    (tmp_path / name).unlink()
  # A storage that does not answer: one line, without the URL's password.
  assert tune_report.main([str(tmp_path), "--storage",
                           "postgresql://tuner:secret@127.0.0.1:1/studies"]) == 2
  error = capsys.readouterr().err.strip()
  assert len(error.splitlines()) == 1
  assert error.startswith("error: cannot read the study storage "
                          "postgresql://tuner:***@127.0.0.1:1/studies: ")


def test_cli_picks_the_folders_study_from_a_storage_that_holds_several(tmp_path, capsys):
  """A shared database (PostgreSQL, here one SQLite file) holds the studies of many folders:
  the tuner names each after its folder, and so does the report (or --study-name)."""
  storage = f"sqlite:///{tmp_path / 'shared.db'}"
  for name, value in (("rte_tpe", 0.70), ("rte_random", 0.60)):
    add_trial(new_study(storage=storage, name=name), TrialState.COMPLETE, 1e-4, 32, 0.1, value,
              {20: value}, 61.5)
  for folder, name, value in ((tmp_path / "rte_random", None, 0.6),
                              (tmp_path / "other", "rte_tpe", 0.7)):
    assert tune_report.open_study(folder, storage, name).best_value == value
  assert tune_report.main([str(tmp_path / "rte"), "--storage", storage]) == 2
  assert capsys.readouterr().err == (
      f"error: the storage {storage} holds no study 'rte' (it holds 'rte_tpe', 'rte_random'): "
      "give --study-name\n")


def test_the_header_says_when_the_steps_per_trial_are_searched(tmp_path):
  study = new_study()
  study.set_user_attr("budget", None)
  study.set_user_attr("space", {**SPACE, "train.num_steps": {"kind": "choice",
                                                              "values": [100, 200]}})
  tune_report.write_tables(study, tmp_path, None, [])
  assert ", steps per trial searched.  " in (tmp_path / "trials.md").read_text()
  study.set_user_attr("space", SPACE)
  tune_report.write_tables(study, tmp_path, None, [])
  assert ", each trial as long as its config's epochs.  " in (tmp_path / "trials.md").read_text()
