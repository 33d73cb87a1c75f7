"""Sweeps declared next to a config: run, interrupt, resume, aggregate."""

import json
import os
import statistics
import subprocess
import sys

import matplotlib.figure
import numpy as np
import pytest
from scipy import stats

from conftest import REPO, require_data
from research import hyper, report, sweep

TINY_SWEEP = f'''
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from helpers import tiny_config

def get_config(arg=None):
  return tiny_config(**{{"data.train_examples": 96, "data.eval_examples": 40,
                        "train.num_epochs": 1.0}})

def get_hyper(hyper):
  return hyper.product([hyper.sweep("config.optimizer.learning_rate", [1e-3, 1e-4]),
                        hyper.sweep("config.seed", [0, 1])])
'''


def test_hyper_combinators():
  points = hyper.product([hyper.sweep("config.a", [1, 2]), hyper.sweep("config.b", [3, 4])])
  assert points == [{"config.a": 1, "config.b": 3}, {"config.a": 1, "config.b": 4},
                    {"config.a": 2, "config.b": 3}, {"config.a": 2, "config.b": 4}]
  assert hyper.zipit([hyper.sweep("config.a", [1, 2]), hyper.sweep("config.b", [3, 4])]) == [
      {"config.a": 1, "config.b": 3}, {"config.a": 2, "config.b": 4}]
  assert len(hyper.chainit([points, hyper.fixed("config.a", 9)])) == 5
  with pytest.raises(ValueError):
    hyper.zipit([hyper.sweep("config.a", [1]), hyper.sweep("config.b", [3, 4])])


def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
  require_data("sst2")
  config_file = tmp_path / "tiny_sweep.py"
  config_file.write_text(TINY_SWEEP)
  workdir = tmp_path / "sweep"
  args = ["--config", str(config_file), "--workdir", str(workdir)]
  assert sweep.main(args + ["--dry-run"]) == 0
  commands = (workdir / "commands.txt").read_text().splitlines()
  assert len(commands) == 4 and "--config.optimizer.learning_rate=0.001" in commands[0]
  names = [p["name"] for p in json.loads((workdir / "sweep.json").read_text())["points"]]
  assert names[0] == "optimizer.learning_rate=0.001,seed=0"
  # Line 3 as task 3 of a SLURM array runs it (experiments/launch/sweep_array.sbatch), as a job
  # step: a stand-in srun runs its command here.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                'exec "$@"\n')
  (bin_dir / "srun").chmod(0o755)
  array_task = subprocess.run(["bash", "experiments/launch/sweep_array.sbatch", str(workdir)],
                              cwd=REPO, env=dict(os.environ, SLURM_ARRAY_TASK_ID="3",
                                                 PATH=f"{bin_dir}:{os.environ['PATH']}"),
                              capture_output=True, text=True, timeout=600)
  assert array_task.returncode == 0, array_task.stderr[-2000:]
  assert (workdir / names[2] / "results.json").exists()
  # Interrupted after one more point (a job's time limit), then completed by the same command.
  assert sweep.main(args + ["--max-points", "1"]) == 0
  done_first = {n: (workdir / n / "results.json").stat().st_mtime for n in names[:3:2]}
  assert not (workdir / names[1]).exists() and not (workdir / names[3]).exists()
  capsys.readouterr()
  assert sweep.main(args) == 0
  progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
  progress = [line.split(" in ")[0] for line in progress]  # the next may start before one ends
  for position, name in (("[1/2]", names[1]), ("[2/2]", names[3])):
    starts, ends = f"{position} starting {name}", f"{position} {name}: done"
    assert progress.index(starts) < progress.index(ends)
  assert len(progress) == 4
  for name in names[:3:2]:  # not run again
    assert (workdir / name / "results.json").stat().st_mtime == done_first[name]
  assert (workdir / names[0] / "main.log").read_text().count("done:") == 1
  assert all((workdir / n / "results.json").exists() for n in names)
  # The aggregate equals a hand computation from the runs' own results.
  rows = (workdir / "results.csv").read_text().splitlines()
  header = rows[0].split(",")
  for line in rows[1:]:
    setting = line.split('"')[1]
    values = dict(zip(header[1:], line.split('"')[2].split(",")[1:]))
    accuracies = [json.loads((workdir / f"{setting},seed={seed}" / "results.json").read_text())
                  ["final"]["results"]["validation"]["accuracy"] for seed in (0, 1)]
    mean, std = statistics.mean(accuracies), statistics.stdev(accuracies)
    assert float(values["accuracy_mean"]) == pytest.approx(mean, abs=1e-12)
    assert float(values["accuracy_std"]) == pytest.approx(std, abs=1e-12)
    half = stats.t.ppf(0.975, 1) * std / np.sqrt(2)
    assert float(values["accuracy_ci_low"]) == pytest.approx(mean - half, abs=1e-9)
    assert values["n"] == "2"
  assert (workdir / "metric_vs_optimizer_learning_rate.png").stat().st_size > 1000
  assert (workdir / "learning_curves.png").stat().st_size > 1000
  assert "★" in (workdir / "results.md").read_text()
  # Every setting against the best, seed by seed, over the same examples (research.compare):
  # the differences are those of the runs' own accuracies.
  accuracy = {name: json.loads((workdir / name / "results.json").read_text())
              ["final"]["results"]["validation"]["accuracy"] for name in names}
  settings = ["optimizer.learning_rate=0.001", "optimizer.learning_rate=0.0001"]
  best = max(settings, key=lambda s: accuracy[f"{s},seed=0"] + accuracy[f"{s},seed=1"])
  (other,) = set(settings) - {best}
  paired = [line.split(" | ") for line in (workdir / "results.md").read_text().splitlines()
            if line.startswith(f"| {other} | ") and " vs " in line]
  assert [row[1] for row in paired] == ["0 vs 0", "1 vs 1"]
  for seed, row in enumerate(paired):
    difference = accuracy[f"{other},seed={seed}"] - accuracy[f"{best},seed={seed}"]
    assert row[2] == f"{100 * difference:.2f}"
    low, high = (float(x) for x in row[3].strip("[]").split(", "))
    assert low <= float(row[2]) <= high


def test_report_statistics_by_hand(tmp_path, monkeypatch):
  """Synthetic runs: two settings, three seeds each."""
  values = {"lr=1": [0.5, 0.6, 0.7], "lr=2": [0.8, 0.8, 0.9]}
  points = []
  for setting, accs in values.items():
    for seed, acc in enumerate(accs):
      name = f"{setting},seed={seed}"
      points.append({"name": name, "overrides": {"config.lr": setting[-1],
                                                 "config.seed": seed}})
      run = tmp_path / name
      run.mkdir()
      (run / "config.json").write_text(json.dumps({
          "data": {"eval_splits": ["validation"]},
          "task": {"metrics": ["accuracy"]}, "eval": {"best_metric": "accuracy"}}))
      evaluated = {"validation": {"accuracy": acc}}
      if setting == "lr=2":  # the test split, evaluated by one setting's runs
        evaluated["test"] = {"accuracy": acc - 0.1}
      (run / "results.json").write_text(json.dumps({
          "final": {"results": evaluated},
          "best": {"step": 10 * (seed + 1), "value": acc + 0.01},
          "train": {"train_seconds": 60.0, "examples": 600},
          "params": {"trainable": 1000}}))
      (run / "metrics.jsonl").write_text(
          json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n"
          + json.dumps({"step": 2, "split": "validation", "accuracy": acc}) + "\n")
  (tmp_path / "sweep.json").write_text(json.dumps({"points": points}))
  rows, facts = report.aggregate(report._load_runs(tmp_path))
  by_setting = {r["setting"]: r for r in rows}
  a = by_setting["lr=1"]["accuracy"]
  assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(0.1)
  assert a["ci_high"] - a["mean"] == pytest.approx(4.302652729911275 * 0.1 / np.sqrt(3))
  assert facts["best"] == "lr=2"
  assert by_setting["lr=2"]["best_step"] == 20
  assert by_setting["lr=2"]["examples_per_s"] == 10.0
  seed_var = np.mean([np.var(v, ddof=1) for v in values.values()])
  assert facts["seed_std"] == pytest.approx(np.sqrt(seed_var))
  assert facts["setting_std"] == pytest.approx(np.std([0.6, 2.5 / 3], ddof=1))
  # ANOVA by hand: between-setting mean square over pooled within-setting mean square.
  grand = np.mean([v for vs in values.values() for v in vs])
  between = sum(3 * (np.mean(vs) - grand) ** 2 for vs in values.values()) / (2 - 1)
  assert facts["anova"]["F"] == pytest.approx(between / seed_var)
  assert (facts["anova"]["df_between"], facts["anova"]["df_within"]) == (1, 4)
  assert 0 < facts["anova"]["p"] < 1
  assert by_setting["lr=2"]["other_splits"]["test"]["accuracy"]["mean"] == pytest.approx(
      2.5 / 3 - 0.1)
  assert by_setting["lr=1"]["other_splits"]["test"]["accuracy"] is None
  figures = []
  savefig = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                      lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k)))
  report.write_report(tmp_path)
  table = [[cell.strip() for cell in line.split("|")]
           for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("|")]
  header, cells = table[0], {row[1]: row for row in table[2:]}
  assert cells["lr=2 ★"][header.index("test accuracy")] == "73.33 ± 5.77"
  assert cells["lr=1"][header.index("test accuracy")] == "—"
  assert "test_accuracy_mean" in (tmp_path / "results.csv").read_text().splitlines()[0]
  # Runs without per-example predictions: the report says why it has no paired tests.
  assert ("Paired tests against the best setting: not computed: "
          in (tmp_path / "results.md").read_text())
  # Each run logged one training point: the train-loss panel draws it (a line alone is empty).
  loss_panel = figures[-1].axes[0]
  assert [len(line.get_xdata()) for line in loss_panel.lines] == [1, 1]
  assert all(line.get_marker() not in (None, "None", "") for line in loss_panel.lines)

  # A folder of runs made by hand (no sweep.json): settings are the folder names without seed.
  (tmp_path / "sweep.json").unlink()
  rows, _ = report.aggregate(report._load_runs(tmp_path))
  assert {r["setting"]: r["n"] for r in rows} == {"lr=1": 3, "lr=2": 3}


def test_report_plots_a_chained_sweep(tmp_path):
  """Points of a chained sweep need not share keys (LoRA rank only where method=lora)."""
  points = [{"name": f"m={m},r={r},seed=0", "overrides": {"config.m": m, "config.lr": lr,
                                                    **({"config.rank": r} if r else {})}}
            for m, lr, r in (("full", 1, None), ("bitfit", 2, None), ("lora", 3, 4),
                             ("lora", 3, 16))]
  for i, point in enumerate(points):
    run = tmp_path / point["name"]
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "data": {"eval_splits": ["validation"]}, "task": {"metrics": ["accuracy"]},
        "eval": {"best_metric": "accuracy"}}))
    (run / "results.json").write_text(json.dumps({
        "final": {"results": {"validation": {"accuracy": 0.5 + i / 10}}}, "best": None,
        "train": {"train_seconds": 60.0, "examples": 600}, "params": {"trainable": 10}}))
  (tmp_path / "sweep.json").write_text(json.dumps({"points": points}))
  report.write_report(tmp_path)
  assert {p.name for p in tmp_path.glob("*.png")} == {
      "metric_vs_m.png", "metric_vs_lr.png", "metric_vs_rank.png", "learning_curves.png"}
