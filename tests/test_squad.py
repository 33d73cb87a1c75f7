"""SQuAD post-processing and the official SQuAD metrics, on cases worked by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from research import squad


# ---- normalisation, exact match, F1 --------------------------------------------------------


def test_normalize_answer():
  # lower, drop '-' and '!' ("normanconquest"), "the" -> " ", collapse the blanks
  assert squad.normalize_answer("The  Norman-Conquest!") == "normanconquest"
  assert squad.normalize_answer("an apple") == "apple"
  assert squad.normalize_answer("A theater, the end.") == "theater end"  # inside a word: kept
  # punctuation goes before articles: "the-cat" -> "thecat", no longer an article
  assert squad.normalize_answer("the-cat") == "thecat"
  assert squad.answer_tokens("") == []
  assert squad.answer_tokens("The a an ...") == []
  assert squad.answer_tokens("Denver's  Broncos") == ["denvers", "broncos"]


def test_exact_and_f1():
  assert squad.exact_score("The Cat!", "cat") == 1.0
  assert squad.exact_score("cat sat", "cat") == 0.0
  # pred [cat, sat], gold [cat, sat, down]: 2 shared; p = 2/2, r = 2/3; 2pr/(p+r) = (4/3)/(5/3)
  assert squad.f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
  # repeated words count as often as both hold them: shared min(3, 1) = 1; p = 1/3, r = 1/2;
  # 2 * (1/6) / (5/6) = 0.4 (sets would give p = 1, r = 1/2, F1 = 2/3)
  assert squad.f1_score("cat cat cat", "cat dog") == pytest.approx(0.4)
  # shared min(3, 2) y = 2: p = 2/4, r = 2/3; 2 * (1/3) / (7/6) = 4/7 (counting the predicted
  # words found in the gold would give 3, and F1 6/7)
  assert squad.f1_score("x y y y", "y y z") == pytest.approx(4 / 7)
  assert squad.f1_score("dog", "cat") == 0.0
  assert squad.f1_score("", "") == 1.0
  assert squad.f1_score("the", "") == 1.0  # both normalise to no words
  assert squad.f1_score("", "x") == 0.0
  assert squad.f1_score("x", "") == 0.0


# ---- squad_scores ----------------------------------------------------------------------------

GOLD = {
    "q1": ["Denver Broncos", "the Broncos"],
    "q2": ["Saint Bernadette Soubirous", "Bernadette"],
    "q3": ["1970s", "the 1970s"],
    "q4": [],
    "q5": [],
}
PREDICTIONS = {
    "q1": "Broncos",  # exact with "the Broncos": 1, F1 1
    # exact 0; F1 vs gold 1: 2 shared, p = 2/2, r = 2/3 -> 0.8; vs gold 2: p = 1/2, r = 1 -> 2/3
    "q2": "Bernadette Soubirous",
    "q3": "",  # no answer to an answerable question: 0, 0
    "q4": "",  # right to abstain: 1, 1
    "q5": "Paris",  # an answer to an unanswerable question: 0, 0
    "other": "ignored",  # not a question of GOLD
}
# q1..q5 raw exact 1, 0, 0, 1, 0; raw F1 1, 0.8, 0, 1, 0


def test_squad_scores_raw():
  scores = squad.squad_scores(PREDICTIONS, GOLD)
  assert set(scores) == {"exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                         "NoAns_exact", "NoAns_f1", "NoAns_total"}
  assert scores["exact"] == pytest.approx(2 / 5)
  assert scores["f1"] == pytest.approx(2.8 / 5)  # 1 + 0.8 + 0 + 1 + 0
  assert scores["total"] == 5
  assert scores["HasAns_exact"] == pytest.approx(1 / 3)
  assert scores["HasAns_f1"] == pytest.approx(1.8 / 3)
  assert scores["HasAns_total"] == 3
  assert scores["NoAns_exact"] == pytest.approx(1 / 2)
  assert scores["NoAns_f1"] == pytest.approx(1 / 2)
  assert scores["NoAns_total"] == 2


def test_squad_scores_squad_v1_layout():
  gold = {"q1": GOLD["q1"], "q2": GOLD["q2"]}
  scores = squad.squad_scores(PREDICTIONS, gold)
  assert scores == pytest.approx({"exact": 1 / 2, "f1": 1.8 / 2, "total": 2,
                                  "HasAns_exact": 1 / 2, "HasAns_f1": 1.8 / 2,
                                  "HasAns_total": 2})


PROBS = {"q1": 0.1, "q2": 0.3, "q3": 0.7, "q4": 0.6, "q5": 0.9}


def test_squad_scores_no_answer_threshold():
  # > 0.5: q3, q4, q5 count as answered '' -> q3 0 (answerable), q4 1, q5 1 (unanswerable);
  # q1, q2 keep their raw scores. exact 1, 0, 0, 1, 1; F1 1, 0.8, 0, 1, 1
  scores = squad.squad_scores(PREDICTIONS, GOLD, PROBS, threshold=0.5)
  assert scores["exact"] == pytest.approx(3 / 5)
  assert scores["f1"] == pytest.approx(3.8 / 5)
  assert scores["HasAns_exact"] == pytest.approx(1 / 3)
  assert scores["HasAns_f1"] == pytest.approx(1.8 / 3)
  assert scores["NoAns_exact"] == scores["NoAns_f1"] == 1.0
  # strictly above: at 0.9 q5 (0.9) keeps its raw 0 -> the raw scores; at 0.89 it turns to 1
  assert squad.squad_scores(PREDICTIONS, GOLD, PROBS, threshold=0.9)["exact"] == (
      pytest.approx(2 / 5))
  assert squad.squad_scores(PREDICTIONS, GOLD, PROBS, threshold=0.89)["exact"] == (
      pytest.approx(3 / 5))
  # by default (threshold 1.0) no probability exceeds it: the raw scores
  assert squad.squad_scores(PREDICTIONS, GOLD, PROBS)["f1"] == pytest.approx(2.8 / 5)


def test_squad_scores_best_threshold():
  # find_best_thresh starts at 2 (both unanswerable right by abstaining), threshold 0.0, and
  # answers in order of probability q1 0.1, q2 0.3, q4 0.6, q3 0.7, q5 0.9:
  #   exact: +1 -> 3 (best, 0.1), +0 -> 3, q4 '' +0 -> 3, +0 -> 3, q5 'Paris' -1 -> 2
  #   F1:    +1 -> 3 (best, 0.1), +0.8 -> 3.8 (best, 0.3), +0, +0, -1 -> 2.8
  # A new best needs a strict gain: ">=" would move the exact threshold to 0.7.
  scores = squad.squad_scores(PREDICTIONS, GOLD, PROBS, threshold=0.5)
  assert scores["best_exact"] == pytest.approx(3 / 5)
  assert scores["best_exact_thresh"] == 0.1
  assert scores["best_f1"] == pytest.approx(3.8 / 5)
  assert scores["best_f1_thresh"] == 0.3
  assert "best_exact" not in squad.squad_scores(PREDICTIONS, GOLD)


def test_squad_scores_official_edge_rules():
  # q_a is unanswerable; "The" normalises to '', so its raw exact is 1, but find_best_thresh
  # looks at the prediction string itself: non-empty costs 1. Start 1 (one unanswerable),
  # q_a (0.2) -1 -> 0, q_b (0.4) +1 -> 1, never above 1: best 1/2 at threshold 0.0.
  gold = {"q_a": [], "q_b": ["x"]}
  predictions = {"q_a": "The", "q_b": "x"}
  scores = squad.squad_scores(predictions, gold, {"q_a": 0.2, "q_b": 0.4})
  assert scores["exact"] == 1.0
  assert scores["best_exact"] == pytest.approx(1 / 2)
  assert scores["best_exact_thresh"] == 0.0
  # a gold answer that normalises to '' leaves the gold '', but the question stays answerable
  # (the official script asks only whether the answer list is empty)
  scores = squad.squad_scores({"q": ""}, {"q": ["The"]})
  assert scores["exact"] == scores["HasAns_exact"] == 1.0
  assert scores["HasAns_total"] == 1 and "NoAns_total" not in scores


def test_squad_scores_missing_inputs_raise():
  with pytest.raises(ValueError, match=r"1 of 5 questions have no prediction.*'q3'"):
    squad.squad_scores({k: v for k, v in PREDICTIONS.items() if k != "q3"}, GOLD)
  with pytest.raises(ValueError, match=r"no-answer probability.*'q5'"):
    squad.squad_scores(PREDICTIONS, GOLD, {k: v for k, v in PROBS.items() if k != "q5"})
  with pytest.raises(ValueError, match="no questions"):
    squad.squad_scores(PREDICTIONS, {})


# ---- postprocess -----------------------------------------------------------------------------

N = (-1, -1)  # not a context token
# context A: the(0,3) cat(4,7) sat(8,11) on(12,14) the(15,18) mat(19,22)
# context B: no(0,2) idea(3,7)
EXAMPLES = [{"id": "A", "context": "the cat sat on the mat"}, {"id": "B", "context": "no idea"},
            {"id": "C", "context": "unused"}]
# Rows: A's first window, B's only window, A's second window (overlapping A's first on "on").
# Token positions: 0 [CLS], 1 question, 2 [SEP], then context, [SEP], padding.
FEATURE_EXAMPLE = np.array([0, 1, 0])
OFFSETS = np.array([
    [N, N, N, (0, 3), (4, 7), (8, 11), (12, 14), N],  # the cat sat on [SEP]
    [N, N, N, (0, 2), (3, 7), N, N, N],  # no idea [SEP] [PAD] [PAD]
    [N, N, N, (12, 14), (15, 18), (19, 22), N, N],  # on the mat [SEP] [PAD]
])
START = np.array([
    [1, 9, 0, 3, 0, 4, 0, 0],
    [6, 0, 0, 2, 1, 0, 0, 0],
    [0.5, 0, 0, 0, 4.25, 7, 0, 9],
], np.float32)
END = np.array([
    [1, 0, 0, 0, 5.5, 0, 6, 8],
    [5, 0, 0, 1, 3, 0, 0, 0],
    [0.5, -1, -1, -2, 1, 4, 3, -1],
], np.float32)
# With n_best = 3 and max_answer_length = 2:
# row 0: starts 1 (9), 5 (4), 3 (3); ends 7 (8), 6 (6), 4 (5.5)
#   start 1 is a question token (would score 17, 15, 14.5), end 7 is [SEP];
#   (5, 6) "sat on" 4 + 6 = 10; (5, 4) ends before it starts (would be 9.5);
#   (3, 6) is 4 tokens long (would be 9); (3, 4) "the cat" 3 + 5.5 = 8.5. Null 1 + 1 = 2.
# row 2: starts 7 (9), 5 (7), 4 (4.25); ends 5 (4), 6 (3), 4 (1)
#   start 7 is padding; end 6 is [SEP]; (5, 5) "mat" 7 + 4 = 11; (5, 4) ends before it starts;
#   (4, 5) "the mat" 4.25 + 4 = 8.25; (4, 4) "the" 4.25 + 1 = 5.25. Null 0.5 + 0.5 = 1.
# A: mat 11, sat on 10, the cat 8.5, the mat 8.25, the 5.25; null min(2, 1) = 1 (row 2).
# row 1 (B): starts 0 (6), 3 (2), 4 (1); ends 0 (5), 4 (3), 3 (1); [CLS] is no context token;
#   (3, 4) "no idea" 2 + 3 = 5, (3, 3) "no" 2 + 1 = 3, (4, 4) "idea" 1 + 3 = 4. Null 6 + 5 = 11.


def run(examples=EXAMPLES[:2], **kwargs):
  kwargs = {"n_best": 3, "max_answer_length": 2, **kwargs}
  return squad.postprocess(examples, FEATURE_EXAMPLE, OFFSETS, START, END, **kwargs)


def listed(entries):
  return [(e["text"], e["start_logit"], e["end_logit"], e["score"]) for e in entries]


def test_postprocess_version_2():
  predictions, nbest, null_odds = run()
  # A: the top 3 spans, then the null answer, below them, appended
  assert listed(nbest["A"]) == [("mat", 7, 4, 11), ("sat on", 4, 6, 10),
                                ("the cat", 3, 5.5, 8.5), ("", 0.5, 0.5, 1)]
  # B: the null answer ranks first, and is listed once
  assert listed(nbest["B"]) == [("", 6, 5, 11), ("no idea", 2, 3, 5), ("idea", 1, 3, 4)]
  # null odds: A 1 - 11 = -10 (the maximum null, 2, would give -9); B 11 - 5 = 6
  assert null_odds == {"A": -10.0, "B": 6.0}
  assert predictions == {"A": "mat", "B": ""}  # -10 <= 0 < 6


def test_postprocess_null_score_diff_threshold():
  # an answer only when the null odds are not above the threshold
  assert run(null_score_diff_threshold=6.0)[0] == {"A": "mat", "B": "no idea"}
  assert run(null_score_diff_threshold=-10.0)[0] == {"A": "mat", "B": ""}
  assert run(null_score_diff_threshold=-10.5)[0] == {"A": "", "B": ""}


def test_postprocess_version_1():
  predictions, nbest, null_odds = run(version_2=False)
  assert listed(nbest["A"]) == [("mat", 7, 4, 11), ("sat on", 4, 6, 10), ("the cat", 3, 5.5, 8.5)]
  assert listed(nbest["B"]) == [("no idea", 2, 3, 5), ("idea", 1, 3, 4), ("no", 2, 1, 3)]
  assert predictions == {"A": "mat", "B": "no idea"}
  assert null_odds == {}


def test_postprocess_max_answer_length():
  # row 0's (3, 6) "the cat sat on" (3 + 6 = 9) is 4 tokens: in at 4, out at 3
  assert [e["text"] for e in run(max_answer_length=4)[1]["A"]] == [
      "mat", "sat on", "the cat sat on", ""]
  assert [e["text"] for e in run(max_answer_length=3)[1]["A"]] == [
      "mat", "sat on", "the cat", ""]
  # one token at most: only "mat" (11) and "the" (5.25) are left of A's spans
  assert [e["text"] for e in run(max_answer_length=1)[1]["A"]] == ["mat", "the", ""]


def test_postprocess_probabilities():
  _, nbest, _ = run()
  probabilities = [e["probability"] for e in nbest["A"]]
  # softmax of scores 11, 10, 8.5, 1: exp(score - 11) / sum
  weights = [1, math.exp(-1), math.exp(-2.5), math.exp(-10)]
  assert probabilities == pytest.approx([w / sum(weights) for w in weights], rel=1e-12)
  for entries in nbest.values():
    assert sum(e["probability"] for e in entries) == pytest.approx(1.0, abs=1e-12)
    scores = [e["score"] for e in entries]
    assert scores == sorted(scores, reverse=True)
    assert all(type(e[key]) is float for e in entries
               for key in ("start_logit", "end_logit", "score", "probability"))
  json.dumps(nbest)  # plain Python values
  # the softmax is taken stably: scores 1000 higher (exp overflows) give the same values
  _, shifted, _ = squad.postprocess(EXAMPLES[:2], FEATURE_EXAMPLE, OFFSETS, START + 500,
                                    END + 500, n_best=3, max_answer_length=2)
  assert [e["probability"] for e in shifted["A"]] == pytest.approx(probabilities, rel=1e-12)


def test_postprocess_without_candidates():
  # n_best = 1: the top start is the question token (5), so no span is valid
  args = ([{"id": "X", "context": "x"}], np.array([0]), np.array([[N, N, N, (0, 1)]]),
          np.array([[0.25, 5, 0, 1]]), np.array([[0.5, 0, 0, 2]]))
  predictions, nbest, null_odds = squad.postprocess(*args, n_best=1, version_2=False)
  assert predictions == {"X": ""} and null_odds == {}
  assert nbest["X"] == [{"text": "", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0,
                         "probability": 1.0}]
  # with version 2 the null answer (0.25 + 0.5) is the list; no span: the odds are its score
  predictions, nbest, null_odds = squad.postprocess(*args, n_best=1, version_2=True)
  assert predictions == {"X": ""} and null_odds == {"X": 0.75}
  assert nbest["X"] == [{"text": "", "start_logit": 0.25, "end_logit": 0.5, "score": 0.75,
                         "probability": 1.0}]


def test_postprocess_errors():
  with pytest.raises(ValueError, match="'C' has no feature"):
    run(examples=EXAMPLES)
  with pytest.raises(ValueError, match="shapes"):
    squad.postprocess(EXAMPLES[:2], FEATURE_EXAMPLE, OFFSETS, START, END[:, :7])
