"""Our metrics against scikit-learn, scipy and seqeval, and CoNLL entity rules by hand."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from research import metrics


@pytest.fixture(params=[0, 1, 2])
def classes(request):
  rng = np.random.default_rng(request.param)
  k = 2 + request.param
  labels = rng.integers(0, k, 500)
  predictions = np.where(rng.random(500) < 0.6, labels, rng.integers(0, k, 500))
  return k, labels, predictions


def test_classification_metrics_match_sklearn(classes):
  k, labels, predictions = classes
  assert metrics.accuracy(labels, predictions) == pytest.approx(
      sklearn.metrics.accuracy_score(labels, predictions), abs=1e-12)
  assert metrics.matthews_corrcoef(labels, predictions) == pytest.approx(
      sklearn.metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
  binary_l, binary_p = labels % 2, predictions % 2
  assert metrics.f1_binary(binary_l, binary_p) == pytest.approx(
      sklearn.metrics.f1_score(binary_l, binary_p), abs=1e-12)


def test_classification_report_matches_sklearn(classes):
  k, labels, predictions = classes
  names = [f"class_{i}" for i in range(k)]
  ours = metrics.classification_report(labels, predictions, names)
  theirs = sklearn.metrics.classification_report(labels, predictions, target_names=names,
                                                 output_dict=True, zero_division=0)
  for row in names + ["macro avg", "weighted avg"]:
    for column in ("precision", "recall", "f1-score", "support"):
      assert ours[row][column] == pytest.approx(theirs[row][column], abs=1e-12), (row, column)
  for column in ("precision", "recall", "f1-score"):
    assert ours["micro avg"][column] == pytest.approx(theirs["accuracy"], abs=1e-12)
  text = metrics.format_report(ours)
  assert "weighted avg" in text and names[-1] in text


def test_report_with_a_class_never_predicted_or_present():
  labels = np.array([0, 0, 1, 1])
  predictions = np.array([0, 0, 0, 0])
  names = ["a", "b", "c"]
  ours = metrics.classification_report(labels, predictions, names)
  theirs = sklearn.metrics.classification_report(labels, predictions, labels=[0, 1, 2],
                                                 target_names=names, output_dict=True,
                                                 zero_division=0)
  for row in names + ["macro avg", "weighted avg"]:
    for column in ("precision", "recall", "f1-score"):
      assert ours[row][column] == pytest.approx(theirs[row][column], abs=1e-12), (row, column)
  assert ours["micro avg"]["f1-score"] == pytest.approx(theirs["accuracy"], abs=1e-12)


def test_correlations_match_scipy():
  rng = np.random.default_rng(0)
  labels = np.round(rng.random(300) * 5, 1)  # many ties, as in STS-B
  predictions = labels + rng.normal(0, 1, 300)
  predictions[:20] = np.round(predictions[:20])
  assert metrics.pearson(labels, predictions) == pytest.approx(
      scipy.stats.pearsonr(labels, predictions)[0], abs=1e-12)
  assert metrics.spearman(labels, predictions) == pytest.approx(
      scipy.stats.spearmanr(labels, predictions)[0], abs=1e-12)


def test_undefined_correlations_are_errors_and_sklearn_conventions_stay():
  constant = np.zeros(10)
  with pytest.raises(metrics.MetricError, match="all predictions are equal"):
    metrics.pearson(np.arange(10), constant)
  with pytest.raises(metrics.MetricError, match="all labels are equal"):
    metrics.spearman(constant, np.arange(10))
  with pytest.raises(metrics.MetricError, match="NaN"):
    metrics.pearson(np.array([1.0, np.nan, 3.0]), np.arange(3))
  # MCC and F1 have sklearn's (and GLUE's) value where undefined: 0.
  assert metrics.matthews_corrcoef(np.zeros(10, int), np.zeros(10, int)) == 0.0
  assert metrics.f1_binary(np.zeros(4, int), np.zeros(4, int)) == 0.0


def test_entities_follow_conll_rules():
  tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "B-MISC", "I-MISC"]
  assert metrics.entities(tags) == {
      ("PER", 0, 1),
      ("LOC", 3, 4),    # I- after O starts an entity
      ("LOC", 5, 5),    # B- after I- of the same type starts a new one
      ("ORG", 6, 6),    # a type change starts a new one
      ("MISC", 7, 8),   # an entity at sentence end is closed
  }
  assert metrics.entities(["O", "O"]) == set()
  assert metrics.entities(["I-PER"]) == {("PER", 0, 0)}


def test_entity_scores_on_a_hand_checked_example():
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
  predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
  scores = metrics.entity_scores(gold, predicted)
  # Gold: PER(0-1), LOC(3), ORG(0), MISC(2-3); predicted: PER(0-1), ORG(3), ORG(0), MISC(2).
  # Correct: PER and the second sentence's ORG -> precision 2/4, recall 2/4.
  assert scores["overall"] == pytest.approx(
      {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 4})
  assert scores["PER"]["f1-score"] == 1.0
  assert scores["ORG"]["precision"] == 0.5 and scores["ORG"]["recall"] == 1.0
  assert scores["LOC"]["recall"] == 0.0 and scores["MISC"]["f1-score"] == 0.0


def test_entity_scores_match_seqeval_on_random_tags():
  seqeval_metrics = pytest.importorskip("seqeval.metrics")
  rng = np.random.default_rng(0)
  tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
  gold = [[tags[i] for i in rng.integers(0, 7, rng.integers(1, 15))] for _ in range(200)]
  predicted = [[t if rng.random() < 0.7 else tags[rng.integers(0, 7)] for t in sentence]
               for sentence in gold]
  ours = metrics.entity_scores(gold, predicted)
  assert ours["overall"]["f1-score"] == pytest.approx(
      seqeval_metrics.f1_score(gold, predicted), abs=1e-12)
  assert ours["overall"]["precision"] == pytest.approx(
      seqeval_metrics.precision_score(gold, predicted), abs=1e-12)
  report = seqeval_metrics.classification_report(gold, predicted, output_dict=True)
  for kind in ("PER", "LOC", "ORG"):
    assert ours[kind]["f1-score"] == pytest.approx(report[kind]["f1-score"], abs=1e-12)
    assert ours[kind]["support"] == report[kind]["support"]
