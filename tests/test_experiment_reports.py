"""The experiments' reports (`run.py --report`) show the library's statistics over seeds: a
compared row's 95% interval is research.report.summarize's and its p is Welch's t-test as
scipy computes it, on the same per-seed values. Each report is built in process from results
files written here (no training); ASO is left out (deepsig's import alone takes seconds; its
wrapper, research.compare.seed_tests, is checked against deepsig in tests/test_compare.py).
"""

import json
import statistics

import pytest
import scipy.stats

from helpers import experiment_script
from research import report


@pytest.fixture(autouse=True)
def no_aso(monkeypatch):
  seed_stats = experiment_script("experiments/glue_minilm/run.py").seed_stats
  monkeypatch.setattr(seed_stats, "ASO_ITERATIONS", 0)


def _row(table: str, start: str) -> list[str]:
  """The cells of the table row that starts with `start`, and its header's."""
  lines = table.splitlines()
  index = next(i for i, line in enumerate(lines) if line.startswith(start))
  header = next(lines[i] for i in range(index - 1, -1, -1) if lines[i + 1].startswith("|---"))
  cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
  return cells(header), cells(lines[index])


def _interval(values):
  summary = report.summarize(values)
  return f"[{summary['ci_low']:.2f}, {summary['ci_high']:.2f}]"


def _welch_p(system, baseline):
  return f"{scipy.stats.ttest_ind(system, baseline, equal_var=False).pvalue:.2f}"


def _write(folder, name, record):
  folder.mkdir(exist_ok=True)
  (folder / name).write_text(json.dumps(record))


def test_mean_std_is_statistics_mean_and_sample_std():
  """seed_stats.mean_std, the 'mean ± std' cell of every report: statistics' mean and sample
  std, scaled and rounded as asked; a single seed shows its value alone."""
  from experiments import seed_stats
  values = [0.553, 0.561, 0.549]
  mean, std = statistics.mean(values), statistics.stdev(values)
  assert seed_stats.mean_std(values) == f"{mean:.2f} ± {std:.2f}"
  assert seed_stats.mean_std(values, decimals=4) == f"{mean:.4f} ± {std:.4f}" == "0.5543 ± 0.0061"
  assert (seed_stats.mean_std(values, scale=100, count=True)
          == f"{100 * mean:.2f} ± {100 * std:.2f} (3)" == "55.43 ± 0.61 (3)")
  assert seed_stats.mean_std([0.553], scale=100, count=True) == "55.30 (1)"
  assert seed_stats.mean_std([0.553], scale=100, one_seed=" (1 seed)") == "55.30 (1 seed)"
  assert seed_stats.mean_std([]) == "—"


def test_glue_minilm_rows_show_interval_and_welch_of_the_library(tmp_path, monkeypatch):
  glue = experiment_script("experiments/glue_minilm/run.py")
  monkeypatch.setattr(glue, "RESULTS", tmp_path)
  monkeypatch.setattr(glue, "SMOKE_EXAMPLES", 64)  # the table only, no results.md written
  accuracy = {"ours": [0.553, 0.561, 0.549], "reference_our_order": [0.571, 0.532, 0.556],
              "reference": [0.574]}
  for system, values in accuracy.items():
    for seed, value in enumerate(values):
      _write(tmp_path, f"rte__{system}__seed{seed}.json",
             {"task": "rte", "system": system, "seed": seed, "train_seconds": 60.0,
              "metrics": {"validation": {"accuracy": value}}, "train_loss": {"200": 0.6}})
  header, row = _row(glue.report(), "| rte (validation) | accuracy |")
  ours, like, own = ([100 * v for v in accuracy[s]] for s in accuracy)
  assert header[3:10] == ["ours 95% CI", "Trainer, our batches", "95% CI", "gap", "p", "ASO ε",
                          "**within target**"]
  assert row[3] == _interval(ours) and row[5] == _interval(like)
  assert row[7] == _welch_p(ours, like)
  assert row[11:15] == ["1 seed: no interval", f"{statistics.mean(ours) - own[0]:+.2f}", "—",
                        "—"]
  _, loss_row = _row(glue.report(), "| rte (validation) | reference |")
  assert loss_row[3] == "1 seed: no interval"


def test_tapt_rows_test_the_adapted_arm_against_the_direct_one(tmp_path, monkeypatch):
  tapt = experiment_script("experiments/tapt/run.py")
  monkeypatch.setattr(tapt, "RESULTS", tmp_path)
  accuracy = {"direct": [0.8234, 0.8119, 0.8177], "adapted": [0.8165, 0.8314, 0.8257]}
  for arm, values in accuracy.items():
    for seed, value in enumerate(values):
      _write(tmp_path, f"sst2_2k__{arm}__seed{seed}.json",
             {"metrics": {"validation": {"accuracy": value}}})
  header, row = _row(tapt.report(), "| sst2_2k | accuracy |")
  direct, adapted = ([100 * v for v in accuracy[arm]] for arm in ("direct", "adapted"))
  assert header[2:9] == ["direct fine-tuning", "95% CI", "after continued MLM", "95% CI", "gap",
                         "p", "ASO ε"]
  assert row[3] == _interval(direct) and row[5] == _interval(adapted)
  assert row[7] == _welch_p(adapted, direct)


def test_relation_extraction_settings_against_the_baseline(tmp_path, monkeypatch):
  relations = experiment_script("experiments/relation_extraction/run.py")
  monkeypatch.setattr(relations, "RESULTS", tmp_path)
  f1 = {"cls_no_markers": [0.6641, 0.6550, 0.6387], "entity_start": [0.8434, 0.8415, 0.8422]}
  for setting, values in f1.items():
    for seed, value in enumerate(values):
      scores = {"relation_f1": value, "accuracy": value}
      _write(tmp_path, f"{setting}__seed{seed}.json",
             {"setting": setting, "seed": seed, "test": scores, "final_test": scores,
              "validation": scores, "validation_curve": [], "train_seconds": 1.0})
  _write(tmp_path, "reference_entity_start__seed0.json",
         {"setting": "reference_entity_start", "seed": 0, "train_seconds": 1.0,
          "final_test": {"relation_f1": 0.8438, "accuracy": 0.806}})
  table = relations.report()
  baseline, system = ([100 * v for v in values] for values in f1.values())
  _, row = _row(table, "| entity start, with markers |")
  assert row[6] == _interval(system)
  assert row[8] == f"{scipy.stats.ttest_ind(system, baseline, equal_var=False).pvalue:.0e}"
  _, row = _row(table, "| [CLS], no markers |")
  assert row[6:8] == [_interval(baseline), "(baseline)"]
  assert "the Trainer 1 seed: no interval; Welch p —" in table


def test_question_answering_over_two_seeds(tmp_path, monkeypatch):
  qa = experiment_script("experiments/question_answering/run.py")
  monkeypatch.setattr(qa, "RESULTS", tmp_path)
  f1 = {"ours": [0.3576, 0.3241], "reference_our_order": [0.3560, 0.3417]}
  for system, values in f1.items():
    for seed, value in enumerate(values):
      _write(tmp_path, f"{system}__answerable__seed{seed}.json",
             {"system": system, "setting": "answerable", "seed": seed, "steps": 170,
              "scores": {"exact": value - 0.1, "f1": value, "total": 232, "HasAns_total": 232},
              "train_loss": {}, "eval_loss": 2.9, "train_seconds": 1.0})
  header, row = _row(qa.report(), "| f1 |")
  ours, reference = ([100 * v for v in values] for values in f1.values())
  assert header[4:8] == ["Welch p", "ours 95% CI", "reference_our_order 95% CI", "ASO ε"]
  assert row[4:7] == [_welch_p(ours, reference), _interval(ours), _interval(reference)]


def test_result_files_carry_the_code_and_reports_name_its_commit(tmp_path, monkeypatch):
  """A result file written by experiments/scaffold.py carries its run's code block: run.json's
  (commit, dirty, versions) for a run of ours, run_record's for this process (the Trainer's);
  the report names each commit with its runs, and says when a file has none."""
  from experiments import scaffold
  from research import run_record
  relations = experiment_script("experiments/relation_extraction/run.py")
  results, workdir = tmp_path / "results", tmp_path / "run"
  monkeypatch.setattr(relations, "RESULTS", results)
  workdir.mkdir()
  code = {"commit": "a1b2c3d" + "0" * 33, "dirty": True, "diff_sha256": "ff00"}
  resumed = {"commit": "e4f5a6b" + "0" * 33, "dirty": False}
  versions = {"python": "3.x", "jax": "0.x"}
  (workdir / "run.json").write_text(json.dumps(
      {"code": code, "packages": versions,
       "sessions": [{"code": code}, {"code": resumed}]}))
  scores = {"relation_f1": 0.84, "accuracy": 0.8}
  for seed in (0, 1):
    written = scaffold.write_result(
        results / f"entity_start__seed{seed}.json",
        {"setting": "entity_start", "seed": seed, "test": scores, "final_test": scores,
         "validation": scores, "validation_curve": [], "train_seconds": 1.0}, workdir)
  assert json.loads((results / "entity_start__seed1.json").read_text()) == written
  assert written["code"] == {**code, "versions": versions, "source": "run.json",
                             "session_commits": [code["commit"], resumed["commit"]]}
  trainer = scaffold.write_result(results / "reference_entity_start__seed0.json",
                                  {"setting": "reference_entity_start", "seed": 0,
                                   "train_seconds": 1.0, "final_test": scores})["code"]
  here = run_record.code_version()
  assert trainer == {"commit": here["commit"], "dirty": here["dirty"],
                     "diff_sha256": here["diff_sha256"],
                     "versions": run_record.package_versions(), "source": "this process"}
  _write(results, "cls_no_markers__seed0.json",  # a file from before the code block
         {"setting": "cls_no_markers", "seed": 0, "test": scores, "final_test": scores,
          "validation": scores, "validation_curve": [], "train_seconds": 1.0})
  trainer_commit = here["commit"][:7] + ("+dirty" if here["dirty"] else "")
  assert ("\nCode: runs at a1b2c3d+dirty (entity_start__seed0-1); "
          f"{trainer_commit} (reference_entity_start__seed0). Commit not recorded".lower()
          in relations.report().lower())
  assert "not yet committed: cls_no_markers__seed0." in relations.report()
