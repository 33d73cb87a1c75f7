"""research.compare: its paired bootstrap and permutation test against scipy.stats on the raw
predictions, Holm by hand, Welch and ASO against scipy and deepsig called directly, the metrics
of a resample against research.metrics, and its command line on real and synthetic runs.

The runs' per-example files of each task kind are rescored in the tests that make those runs
(test_train, test_data_formats, test_relations, test_qa, test_reference_training:
`helpers.assert_rescored`), and the command is run on two real runs in test_train, beside the
run it reuses.
"""

import dataclasses
import json
import sys
import warnings

import numpy as np
import pytest
from scipy import stats

from research import compare, metrics, report, squad

LABELS = ("negative", "positive")


def _evaluation(gold, predicted, kind="classification", label_names=LABELS, **task):
  return compare.Evaluation(None, 0, 0, {"kind": kind, "label_names": list(label_names), **task},
                            {}, {"gold": np.asarray(gold).tolist(),
                                 "prediction": np.asarray(predicted).tolist()})


def _noisy(gold, right, rng):
  """A binary system whose prediction is the gold label with probability `right`."""
  return np.where(rng.random(len(gold)) < right, gold, 1 - gold)


def fake_run(workdir, gold, predicted, *, seed=0, split="validation", step=10,
             task_metrics=("accuracy",), overrides=None):
  """A finished classification run's files as research.compare reads them, its metrics
  computed by research.metrics."""
  (workdir / "eval").mkdir(parents=True)
  gold, predicted = np.asarray(gold), np.asarray(predicted)
  reported = {m: metrics.METRICS[m](gold, predicted) for m in task_metrics}
  config = {"seed": seed, "data": {"eval_splits": [split]},
            "task": {"kind": "classification", "label_names": list(LABELS),
                     "metrics": list(task_metrics)}}
  (workdir / "config.json").write_text(json.dumps(config))
  (workdir / "results.json").write_text(json.dumps(
      {"final": {"step": step, "results": {split: reported}}, "best": {"step": step}}))
  (workdir / "eval" / f"{split}_step{step}.json").write_text(
      json.dumps({"step": step, "metrics": reported}))
  (workdir / "eval" / f"{split}_step{step}_per_example.json").write_text(json.dumps(
      {"kind": "classification", "gold": gold.tolist(), "prediction": predicted.tolist()}))
  return workdir


def test_bootstrap_and_permutation_equal_scipy_on_the_raw_predictions():
  """Our bootstrap (scipy's, on example indices, resamples scored by bincount) and our
  vectorised permutation test against scipy.stats on the raw values: accuracy as the mean of
  per-example correctness (vectorised), F1 with the project's metric per resample
  (vectorized=False); other random streams, so equal within Monte-Carlo error: ~0.003 for
  these interval ends and p-values at 2000-4000 resamples."""
  rng = np.random.default_rng(1)
  n = 300
  gold = rng.integers(0, 2, n)
  a, b = _noisy(gold, 0.80, rng), _noisy(gold, 0.76, rng)
  scorers = compare.scorers(_evaluation(gold, a), _evaluation(gold, b))
  ours = compare.paired_tests(scorers["accuracy"], n, samples=4000, seed=0)
  right_a, right_b = (a == gold).astype(float), (b == gold).astype(float)

  def mean_difference(x, y, axis=-1):
    return x.mean(axis) - y.mean(axis)
  boot = stats.bootstrap((right_a, right_b), mean_difference, paired=True, method="percentile",
                         n_resamples=4000, rng=np.random.default_rng(7))
  perm = stats.permutation_test((right_a, right_b), mean_difference, permutation_type="samples",
                                n_resamples=4000, rng=np.random.default_rng(8))
  assert ours["difference"] == pytest.approx(right_a.mean() - right_b.mean(), abs=1e-12)
  np.testing.assert_allclose(ours["ci"], boot.confidence_interval, atol=0.01)
  assert 0.005 < ours["p"] < 0.2  # a p-value where Monte-Carlo error shows
  assert ours["p"] == pytest.approx(perm.pvalue, abs=0.012)

  ours = compare.paired_tests(scorers["f1"], n, samples=2000, seed=0)

  def f1_difference(g, x, y):
    return metrics.f1_binary(g, x) - metrics.f1_binary(g, y)
  boot = stats.bootstrap((gold, a, b), f1_difference, paired=True, vectorized=False,
                         method="percentile", n_resamples=2000, rng=np.random.default_rng(9))
  perm = stats.permutation_test((a, b), lambda x, y: f1_difference(gold, x, y),
                                permutation_type="samples", vectorized=False, n_resamples=2000,
                                rng=np.random.default_rng(10))
  assert ours["difference"] == pytest.approx(f1_difference(gold, a, b), abs=1e-12)
  np.testing.assert_allclose(ours["ci"], boot.confidence_interval, atol=0.012)
  assert ours["p"] == pytest.approx(perm.pvalue, abs=0.015)


def test_identical_systems_give_p_1_and_a_zero_interval_a_better_one_a_small_p():
  rng = np.random.default_rng(2)
  gold = rng.integers(0, 2, 400)
  a = _noisy(gold, 0.7, rng)
  same = compare.scorers(_evaluation(gold, a), _evaluation(gold, a))
  result = compare.paired_tests(same["accuracy"], 400, samples=1000, seed=0)
  assert result["p"] == 1.0 and result["ci"] == [0.0, 0.0] and result["difference"] == 0.0
  better = _noisy(gold, 0.9, rng)
  scorers = compare.scorers(_evaluation(gold, better), _evaluation(gold, a))
  result = compare.paired_tests(scorers["matthews_corr"], 400, samples=1000, seed=0)
  assert result["p"] < 0.002 and 0 < result["ci"][0] < result["difference"] < result["ci"][1]


def test_holm_by_hand():
  # Sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (monotone); 0.2 x 1.
  assert compare.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
  assert compare.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])
  assert compare.holm([0.02]) == [0.02]
  assert compare.holm([0.04, None, 0.01]) == pytest.approx([0.04, None, 0.02])  # m = 2


def test_seed_tests_are_welch_and_deepsig_aso(monkeypatch):
  from deepsig import aso
  system, baseline = [0.71, 0.74, 0.69, 0.75], [0.66, 0.70, 0.64]
  result = compare.seed_tests(system, baseline, seed=3, aso_iterations=100)
  welch = stats.ttest_ind(system, baseline, equal_var=False)
  assert (result["welch_t"], result["welch_p"]) == pytest.approx((welch.statistic, welch.pvalue))
  assert result["aso_epsilon_min"] == aso(system, baseline, seed=3, show_progress=False,
                                          num_bootstrap_iterations=100)
  assert result["aso_epsilon_min"] < 0.5
  # Seeds without spread on both sides: no t statistic (scipy would warn and give NaN).
  same = compare.seed_tests([0.5, 0.5], [0.5, 0.5], seed=3, aso_iterations=0)
  assert same["welch_p"] is None and "aso_epsilon_min" not in same
  # One side without spread: a valid test, which scipy warns about (and we do not).
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    one_side = compare.seed_tests([0.55, 0.55], [0.5, 0.6, 0.4], seed=3, aso_iterations=0)
  assert not caught
  with pytest.warns(RuntimeWarning, match="Precision loss"):
    reference = stats.ttest_ind([0.55, 0.55], [0.5, 0.6, 0.4], equal_var=False)
  assert one_side["welch_p"] == pytest.approx(reference.pvalue)
  # Without deepsig the comparison goes on and says why there is no ASO.
  monkeypatch.setitem(sys.modules, "deepsig", None)
  result = compare.seed_tests(system, baseline, seed=3)
  assert result["welch_p"] == pytest.approx(welch.pvalue)
  assert result["aso_error"].startswith("deepsig does not import (ModuleNotFoundError")


def test_resampled_metrics_equal_research_metrics():
  """Each scorer on index rows (repeats included, as in a bootstrap resample) equals the
  project's metric of those examples."""
  rng = np.random.default_rng(3)
  names = ("A(e1,e2)", "A(e2,e1)", "B(e1,e2)", "B(e2,e1)", "Other")
  gold, a, b = (rng.integers(0, 5, 120) for _ in range(3))
  relations = compare.scorers(_evaluation(gold, a, "relation_classification", names,
                                          no_relation_label="Other"),
                              _evaluation(gold, b, "relation_classification", names))
  classes = compare.scorers(_evaluation(gold, a, label_names=names),
                            _evaluation(gold, b, label_names=names))
  rows = rng.integers(0, 240, (3, 120))
  for row, value in zip(rows, relations["relation_f1"](rows)):
    g, p = np.tile(gold, 2)[row], np.concatenate([a, b])[row]
    assert value == pytest.approx(metrics.relation_scores(g, p, names)["official"]["f1-score"])
    assert relations["macro_f1"](row) == pytest.approx(
        metrics.classification_report(g, p, names)["macro avg"]["f1-score"])
    assert classes["matthews_corr"](row) == pytest.approx(metrics.matthews_corrcoef(g, p))
    assert classes["accuracy"](row) == pytest.approx(metrics.accuracy(g, p))
  tags = ("O", "B-PER", "I-PER", "B-LOC")
  sentences = [rng.integers(0, 4, rng.integers(1, 9)) for _ in range(30)]
  guesses = [[np.where(rng.random(len(s)) < 0.7, s, rng.integers(0, 4, len(s))) for s in sentences]
             for _ in range(2)]
  token = compare.Evaluation(None, 0, 0, {"kind": "token_classification", "label_names": tags},
                             {}, {"gold": [s.tolist() for s in sentences],
                                  "prediction": [g.tolist() for g in guesses[0]]})
  other = dataclasses.replace(token, examples={**token.examples,
                                               "prediction": [g.tolist() for g in guesses[1]]})
  scorers = compare.scorers(token, other)
  row = rng.integers(0, 60, 30)
  both = guesses[0] + guesses[1]
  report = metrics.entity_scores([[tags[t] for t in (sentences * 2)[i]] for i in row],
                                 [[tags[t] for t in both[i]] for i in row])
  assert scorers["entity_f1"](row) == pytest.approx(report["overall"]["f1-score"])
  assert scorers["entity_recall"](row) == pytest.approx(report["overall"]["recall"])
  words = np.concatenate([(sentences * 2)[i] == both[i] for i in row])
  assert scorers["accuracy"](row) == pytest.approx(words.mean())


def test_sweep_seeds_are_one_system_compared_seed_by_seed(tmp_path, capsys):
  """A sweep folder of two settings x 3 seeds: two systems; per-example tests per seed pair,
  Welch over the seeds; written to --output."""
  rng = np.random.default_rng(4)
  gold = rng.integers(0, 2, 200)
  points = []
  for lr, right in ((1, 0.7), (2, 0.8)):
    for seed in range(3):
      name = f"lr={lr},seed={seed}"
      points.append({"name": name, "overrides": {"config.lr": lr, "config.seed": seed}})
      fake_run(tmp_path / "sweep" / name, gold, _noisy(gold, right, rng), seed=seed)
  (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"points": points}))
  assert compare.main([str(tmp_path / "sweep"), "--samples", "500", "--aso-iterations", "50",
                       "--output", str(tmp_path / "out")]) == 0
  record = json.loads((tmp_path / "out" / "compare.json").read_text())
  assert [s["name"] for s in record["systems"]] == [f"{tmp_path / 'sweep'}:lr=1",
                                                    f"{tmp_path / 'sweep'}:lr=2"]
  (comparison,) = record["comparisons"]
  assert [(p["system_seed"], p["baseline_seed"]) for p in comparison["pairs"]] == [
      (0, 0), (1, 1), (2, 2)]
  scores = {lr: [json.loads((tmp_path / "sweep" / f"lr={lr},seed={s}" / "results.json")
                            .read_text())["final"]["results"]["validation"]["accuracy"]
                 for s in range(3)] for lr in (1, 2)}
  welch = stats.ttest_ind(scores[2], scores[1], equal_var=False)
  assert comparison["seeds"]["welch_p"] == pytest.approx(welch.pvalue)
  assert "| accuracy | 2 vs 2 |" in capsys.readouterr().out
  assert (tmp_path / "out" / "compare.md").read_text().startswith("# Comparison on validation")


def test_holm_corrects_the_comparisons_with_the_baseline(tmp_path):
  rng = np.random.default_rng(5)
  gold = rng.integers(0, 2, 150)
  runs = [fake_run(tmp_path / f"r{i}", gold, _noisy(gold, right, rng))
          for i, right in enumerate((0.7, 0.75, 0.8, 0.72))]
  record = compare.compare(runs, samples=300, progress=lambda line: None)
  rows = [c["pairs"][0] for c in record["comparisons"]]
  assert len(rows) == 3
  assert [r["p_holm"] for r in rows] == pytest.approx(compare.holm([r["p"] for r in rows]))


@pytest.mark.parametrize("case, message", [
    ("not_a_run", "is neither a run's workdir (no config.json) nor a sweep folder"),
    ("split", "did not evaluate the split 'test' (it evaluated: validation)"),
    ("metric", "did not report f1 on validation (it reports: accuracy)"),
    ("examples", "evaluated different examples of validation: 100 vs 99 examples"),
    ("gold", "evaluated different examples of validation: example 1's gold is"),
    ("older_run", "rerun `python -m research.main --config <its config> --workdir"),
    ("one_system", "1 system given: a comparison needs at least two"),
    ("no_final", "b/results.json is not a finished run's (no final results)"),
    ("short_predictions", "_per_example.json is damaged: 100 gold labels, 99 predictions"),
    ("no_gold", "_per_example.json is damaged: no list of gold and of predicted labels"),
    ("sweep_json", "sweep.json is damaged: not a list of points, each with its name and"),
    ("few_samples", "--samples 39: at least 100 (a 95% interval's 2.5% tails need 40"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, message):
  gold = np.arange(100) % 2
  a = fake_run(tmp_path / "a", gold, gold)
  b = fake_run(tmp_path / "b", gold, 1 - gold)
  args = [str(a), str(b)]
  if case == "not_a_run":
    (tmp_path / "empty").mkdir()
    args = [str(a), str(tmp_path / "empty")]
  elif case == "split":
    args += ["--split", "test"]
  elif case == "metric":
    args += ["--metric", "f1"]
  elif case == "examples":
    args = [str(a), str(fake_run(tmp_path / "c", gold[:99], gold[:99]))]
  elif case == "gold":
    args = [str(a), str(fake_run(tmp_path / "c", 1 - gold, gold))]
  elif case == "older_run":
    (b / "eval" / "validation_step10_per_example.json").unlink()
  elif case == "one_system":
    args = [str(a)]
  elif case == "no_final":
    (b / "results.json").write_text(json.dumps({"best": None}))
  elif case == "sweep_json":
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"points": [{"nam": "x"}]}))
    args = [str(a), str(tmp_path / "sweep")]
  elif case in ("short_predictions", "no_gold"):
    per_example = b / "eval" / "validation_step10_per_example.json"
    record = json.loads(per_example.read_text())
    record["prediction"].pop()
    per_example.write_text(json.dumps(record if case == "short_predictions" else {}))
  samples = "39" if case == "few_samples" else "100"
  assert compare.main(args + ["--samples", samples, "--output", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not (tmp_path / "compare.json").exists()


def test_resampled_correlations_equal_research_metrics_and_scipy():
  """Pearson and Spearman of each resample (ties included) as research.metrics and
  scipy.stats compute them one at a time."""
  rng = np.random.default_rng(6)
  gold = rng.integers(0, 6, 80) / 5  # STS-B-like scores, many ties
  a, b = gold + rng.normal(0, 0.5, 80), np.round(gold + rng.normal(0, 0.5, 80), 1)
  scorers = compare.scorers(_evaluation(gold, a, "regression", ()),
                            _evaluation(gold, b, "regression", ()))
  rows = rng.integers(0, 160, (4, 80))
  both = np.concatenate([a, b])
  for row, pearson, spearman in zip(rows, scorers["pearson"](rows), scorers["spearman"](rows)):
    g, p = np.tile(gold, 2)[row], both[row]
    assert pearson == pytest.approx(metrics.pearson(g, p), abs=1e-12)
    assert spearman == pytest.approx(metrics.spearman(g, p), abs=1e-12)
    assert spearman == pytest.approx(stats.spearmanr(g, p).statistic, abs=1e-12)
  np.testing.assert_array_equal(metrics.average_ranks(np.array([[3, 1, 3, 2], [0, 0, 0, 0]])),
                                [[3.5, 1, 3.5, 2], [2.5, 2.5, 2.5, 2.5]])


@pytest.mark.parametrize("system_seeds, baseline_seeds, pairs", [
    ((1, 2), (0, 1, 2), [(1, 1), (2, 2)]),  # a setting that lost a seed: not 1 vs 0, 2 vs 1
    ((0, 1), (2, 3), [(0, 2), (1, 3)]),     # no seed in common: in seed order
    ((3, 0, 5), (6, 5, 3), [(0, 6), (3, 3), (5, 5)]),
])
def test_seeds_are_paired_by_value(tmp_path, system_seeds, baseline_seeds, pairs):
  rng = np.random.default_rng(7)
  gold = rng.integers(0, 2, 60)

  def system(name, seeds):
    return compare.System(name, [fake_run(tmp_path / f"{name}{s}", gold, _noisy(gold, 0.8, rng),
                                          seed=s) for s in sorted(seeds)])
  record = compare.compare_systems([system("b", baseline_seeds), system("s", system_seeds)],
                                   samples=100, aso_iterations=0, progress=lambda line: None)
  (comparison,) = record["comparisons"]
  assert [(p["system_seed"], p["baseline_seed"]) for p in comparison["pairs"]] == pairs
  for p in comparison["pairs"]:  # each row's scores are those of the runs it names
    for side, name in (("system", "s"), ("baseline", "b")):
      reported = json.loads((tmp_path / f"{name}{p[side + '_seed']}" / "results.json").read_text())
      assert p[side] == reported["final"]["results"]["validation"]["accuracy"]
  # research.report's section says which seeds were paired, as compare.md does.
  note = [n for n in record["notes"] if "pair(s) compared example by example" in n]
  assert len(note) == (len(set(system_seeds) ^ set(baseline_seeds)) > 0)
  assert all(f"Note: {n}." in report.paired_text(record, "accuracy") for n in note)


def test_best_reevaluation_of_an_older_best_checkpoint_is_not_compared(tmp_path):
  """eval/<split>_best*.json written by --mode=eval before training went on and saved a later
  best checkpoint: --checkpoint best compares the training's evaluation of the best step."""
  rng = np.random.default_rng(8)
  gold = rng.integers(0, 2, 80)
  runs = [fake_run(tmp_path / name, gold, _noisy(gold, 0.8, rng)) for name in ("a", "b")]
  stale = _noisy(gold, 0.5, rng)
  (runs[1] / "eval" / "validation_best.json").write_text(json.dumps(
      {"step": 4, "metrics": {"accuracy": metrics.accuracy(gold, stale)}}))
  (runs[1] / "eval" / "validation_best_per_example.json").write_text(json.dumps(
      {"kind": "classification", "gold": gold.tolist(), "prediction": stale.tolist()}))
  record = compare.compare(runs, checkpoint="best", samples=100, progress=lambda line: None)
  assert [r["step"] for r in record["systems"][1]["runs"]] == [10]
  (pair,) = record["comparisons"][0]["pairs"]
  reported = json.loads((runs[1] / "results.json").read_text())["final"]["results"]
  assert pair["system"] == reported["validation"]["accuracy"]


def test_question_answering_systems_each_scored_at_their_own_null_threshold():
  """Two SQuAD 2.0 systems evaluated at different null_score_diff_threshold (a tuned setting):
  each scored as research.squad scores it at its own threshold, all questions and the
  (un)answerable ones."""
  rng = np.random.default_rng(9)
  ids = [f"q{i}" for i in range(40)]
  gold = [["the cat", "a cat"] if i % 3 else [] for i in range(40)]
  choices = ["the cat", "cat", "a dog", ""]
  predictions = [[choices[j] for j in rng.integers(0, 4, 40)] for _ in range(2)]
  odds = [rng.normal(0, 2, 40).tolist() for _ in range(2)]
  evaluations = [compare.Evaluation(None, 0, 0, {"kind": "question_answering", "label_names": [],
                                                 "null_score_diff_threshold": threshold}, {},
                                    {"id": ids, "gold": gold, "prediction": p, "null_odds": o})
                 for threshold, p, o in ((0.0, predictions[0], odds[0]),
                                         (1.5, predictions[1], odds[1]))]
  scorers = compare.scorers(*evaluations)
  for side, (p, o, threshold) in enumerate(zip(predictions, odds, (0.0, 1.5))):
    expected = squad.squad_scores(dict(zip(ids, p)), dict(zip(ids, gold)), dict(zip(ids, o)),
                                  threshold=threshold)
    for name in ("exact", "f1", "HasAns_f1", "NoAns_exact"):
      assert scorers[name](np.arange(40) + 40 * side) == pytest.approx(expected[name]), name


def test_a_pruned_trial_is_compared_with_a_note(tmp_path):
  """A research.tune trial its pruner stopped (results.json: pruned) is compared at the step
  it reached, and the comparison says that its training did not finish."""
  rng = np.random.default_rng(10)
  gold = rng.integers(0, 2, 50)
  runs = [fake_run(tmp_path / name, gold, _noisy(gold, 0.8, rng)) for name in ("a", "b")]
  results = json.loads((runs[1] / "results.json").read_text())
  (runs[1] / "results.json").write_text(json.dumps({**results, "pruned": {"step": 10}}))
  record = compare.compare(runs, samples=100, aso_iterations=0, progress=lambda line: None)
  assert record["notes"] == [f"{runs[1]} was pruned by its tuner at step 10: its training did "
                             "not finish"]
  assert f"Note: {record['notes'][0]}." in compare.render(record)


def test_runs_that_read_the_split_from_different_files_are_compared_with_a_note(tmp_path):
  """Same gold labels, other texts (a contrast set beside the original test set) cannot be
  told from the per-example files: the runs' data.json names the files, and the comparison
  says they differ."""
  rng = np.random.default_rng(11)
  gold = rng.integers(0, 2, 50)
  runs = [fake_run(tmp_path / name, gold, _noisy(gold, 0.8, rng)) for name in ("a", "b", "c")]
  for run, file in zip(runs, ("/data/sst2/validation.tsv", "/data/sst2/validation.tsv",
                              "/data/sst2_contrast/validation.tsv")):
    (run / "data.json").write_text(json.dumps({"validation": {"file": file, "examples": 50}}))
  note = (f"the runs read validation from different files ({runs[0]}: /data/sst2/validation.tsv"
          f"; {runs[2]}: /data/sst2_contrast/validation.tsv): compared as the same examples, "
          "since their gold labels agree")
  assert compare.compare(runs, samples=100, progress=lambda line: None)["notes"] == [note]
  assert compare.compare(runs[:2], samples=100, progress=lambda line: None)["notes"] == []
