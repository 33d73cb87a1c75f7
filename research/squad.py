"""Extractive question answering: from window logits to answers, and the official SQuAD scores.

`postprocess` turns the start/end logits of each window (feature) into one answer per question,
with the n-best lists and, for SQuAD 2.0, the null odds, following Hugging Face's
`postprocess_qa_predictions` (run_qa's utils_qa.py), so that our numbers compare with theirs.
`squad_scores` is the official SQuAD 2.0 evaluation (evaluate-v2.0.py; SQuAD 1.1 is its
all-answerable case), with scores as fractions in [0, 1] rather than percentages. Both work on
host numpy arrays and plain Python values.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Mapping, Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


# ---- the official metrics ----------------------------------------------------------------


def normalize_answer(text: str) -> str:
  """The official normalisation, in its order: lower case, drop punctuation, articles to
  spaces, collapse whitespace. Punctuation goes first, so 'the-cat' becomes 'thecat'."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
  """The words the F1 score counts: those of the normalised text."""
  return normalize_answer(text).split()


def exact_score(prediction: str, gold: str) -> float:
  """1.0 when prediction and gold agree after normalisation, else 0.0."""
  return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
  """Word-overlap F1 (repeated words count as often as both sides hold them); where either side
  is empty (no answer), 1.0 if both are, else 0.0."""
  pred, ref = answer_tokens(prediction), answer_tokens(gold)
  if not pred or not ref:
    return float(pred == ref)
  same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(ref)
  return 2 * precision * recall / (precision + recall)


def _best_threshold(predictions: Mapping[str, str], raw: Mapping[str, float],
                    no_answer_probs: Mapping[str, float],
                    has_answer: Mapping[str, bool]) -> tuple[float, float]:
  """evaluate-v2.0.py's `find_best_thresh`: the best score over thresholds on the no-answer
  probability, and that threshold. Starting from abstaining on every question, questions in
  order of rising probability are answered one by one; an unanswerable question costs 1 when
  its prediction is a non-empty string, even one that normalises to ''."""
  qids = list(raw)
  current = best = float(sum(not has_answer[q] for q in qids))
  best_threshold = 0.0
  for qid in sorted(qids, key=lambda q: no_answer_probs[q]):
    if has_answer[qid]:
      current += raw[qid]
    elif predictions[qid]:
      current -= 1
    if current > best:
      best, best_threshold = current, float(no_answer_probs[qid])
  return best / len(qids), best_threshold


def raw_scores(predictions: Mapping[str, str], gold_answers: Mapping[str, list[str]]
               ) -> tuple[dict[str, bool], dict[str, float], dict[str, float]]:
  """Per question of `gold_answers`: (answerable, exact match, F1) of its prediction, each its
  best over the gold answers that do not normalise to '' (none left: the gold is '')."""
  has_answer, exact, f1 = {}, {}, {}
  for qid, answers in gold_answers.items():
    has_answer[qid] = bool(answers)
    golds = [a for a in answers if normalize_answer(a)] or [""]
    exact[qid] = max(exact_score(predictions[qid], g) for g in golds)
    f1[qid] = max(f1_score(predictions[qid], g) for g in golds)
  return has_answer, exact, f1


def thresholded(raw: Mapping[str, float], has_answer: Mapping[str, bool],
                no_answer_probs: Mapping[str, float] | None, threshold: float
                ) -> dict[str, float]:
  """Per-question scores with a question whose no-answer probability exceeds `threshold`
  counted as answered '' (the official script's `apply_no_ans_threshold`)."""
  if no_answer_probs is None:
    return dict(raw)
  return {qid: float(not has_answer[qid]) if no_answer_probs[qid] > threshold else score
          for qid, score in raw.items()}


def squad_scores(predictions: dict[str, str], gold_answers: dict[str, list[str]],
                 no_answer_probs: dict[str, float] | None = None,
                 threshold: float = 1.0) -> dict[str, float]:
  """The official SQuAD 2.0 scores of `predictions` (question id -> answer, '' for no answer)
  against `gold_answers` (question id -> its gold answers, [] when unanswerable).

  Each question scores its best exact match / F1 over its gold answers that do not normalise
  to '' (none left: the gold is ''). A question is answerable when its gold list is not
  empty, as in the official script. With `no_answer_probs` (e.g. `postprocess`'s null odds),
  a question whose value exceeds `threshold` counts as answered ''; `best_exact` / `best_f1`
  and their thresholds then give the best such threshold, found on the raw scores. Returns
  `exact`, `f1`, `total`, and the same with a `HasAns_` / `NoAns_` prefix for each kind of
  question present. Predictions for questions not in `gold_answers` are ignored; a missing
  one is an error.
  """
  if not gold_answers:
    raise ValueError("there are no questions to score")
  missing = [qid for qid in gold_answers if qid not in predictions]
  if missing:
    raise ValueError(f"{len(missing)} of {len(gold_answers)} questions have no prediction, "
                     f"e.g. {missing[0]!r}")
  if no_answer_probs is not None:
    missing = [qid for qid in gold_answers if qid not in no_answer_probs]
    if missing:
      raise ValueError(f"{len(missing)} of {len(gold_answers)} questions have no no-answer "
                       f"probability, e.g. {missing[0]!r}")
  has_answer, raw_exact, raw_f1 = raw_scores(predictions, gold_answers)
  exact, f1 = (thresholded(raw, has_answer, no_answer_probs, threshold)
               for raw in (raw_exact, raw_f1))

  def summary(qids: list[str], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}exact": sum(exact[q] for q in qids) / len(qids),
            f"{prefix}f1": sum(f1[q] for q in qids) / len(qids), f"{prefix}total": len(qids)}

  scores = summary(list(gold_answers))
  answerable = [qid for qid in gold_answers if has_answer[qid]]
  unanswerable = [qid for qid in gold_answers if not has_answer[qid]]
  if answerable:
    scores.update(summary(answerable, "HasAns_"))
  if unanswerable:
    scores.update(summary(unanswerable, "NoAns_"))
  if no_answer_probs is not None:
    scores["best_exact"], scores["best_exact_thresh"] = _best_threshold(
        predictions, raw_exact, no_answer_probs, has_answer)
    scores["best_f1"], scores["best_f1_thresh"] = _best_threshold(
        predictions, raw_f1, no_answer_probs, has_answer)
  return scores


# ---- from window logits to answers -------------------------------------------------------


def _top(values: np.ndarray, n: int) -> np.ndarray:
  """Positions of the n largest values, largest first; ties keep the lower position first."""
  return np.argsort(-values, kind="stable")[:n]


def _entry(text: str, start_logit: float, end_logit: float, score: float) -> dict[str, Any]:
  return {"text": text, "start_logit": float(start_logit), "end_logit": float(end_logit),
          "score": float(score)}


def postprocess(examples: Sequence[Mapping[str, Any]], feature_example: np.ndarray,
                offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray, *,
                n_best: int = 20, max_answer_length: int = 30, version_2: bool = True,
                null_score_diff_threshold: float = 0.0,
                ) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
  """One answer per question from its windows' logits: (predictions, n-best lists, null odds),
  each keyed by example id, as Hugging Face's `postprocess_qa_predictions` computes them.

  `examples` hold `id` and `context`; `feature_example` [F] is the example of each window;
  `offsets` [F, S, 2] the characters of each context token, (-1, -1) on every other token;
  the logits are [F, S]. A span runs from one of a window's `n_best` highest start positions
  to one of its `n_best` highest end positions, both on context tokens, at most
  `max_answer_length` tokens long; its score is start plus end logit. The n-best list keeps
  the `n_best` best spans over all windows, with probabilities from a softmax over the list.

  With `version_2`, the null answer ('') scores the [CLS] logits (position 0) of the window
  where they are lowest, and it joins the n-best list (appended if it ranks below the top
  `n_best`). A question's null odds are the null score minus the best span's score (the null
  score itself when there is no span); above `null_score_diff_threshold`, the answer is ''.
  Without `version_2` the answer is the best span ('' when none) and the null odds are empty.
  """
  if n_best < 1 or max_answer_length < 1:
    raise ValueError(f"n_best={n_best} and max_answer_length={max_answer_length} must be >= 1")
  feature_example = np.asarray(feature_example)
  offsets = np.asarray(offsets)
  start_logits = np.asarray(start_logits, np.float64)
  end_logits = np.asarray(end_logits, np.float64)
  n_features = len(feature_example)
  if (feature_example.shape != (n_features,) or start_logits.ndim != 2
      or len(start_logits) != n_features or end_logits.shape != start_logits.shape
      or offsets.shape != start_logits.shape + (2,)):
    raise ValueError(f"shapes do not match: feature_example {feature_example.shape}, offsets "
                     f"{offsets.shape}, start_logits {start_logits.shape}, end_logits "
                     f"{end_logits.shape} (want [F], [F, S, 2], [F, S], [F, S])")
  ids = [str(e["id"]) for e in examples]
  if len(set(ids)) != len(ids):
    raise ValueError("example ids are not unique")
  if n_features and not (0 <= feature_example.min() and feature_example.max() < len(ids)):
    raise ValueError(f"feature_example holds indices outside 0..{len(ids) - 1}")
  in_context = ~np.all(offsets == -1, axis=-1)  # [F, S]
  features_of = collections.defaultdict(list)
  for f, e in enumerate(feature_example.tolist()):
    features_of[e].append(f)

  predictions, nbest, null_odds = {}, {}, {}
  for index, (qid, example) in enumerate(zip(ids, examples)):
    features = features_of.get(index)
    if not features:
      raise ValueError(f"example {qid!r} has no feature (window)")
    context = example["context"]
    spans, null = [], None
    for f in features:
      start, end = start_logits[f], end_logits[f]
      if null is None or start[0] + end[0] < null["score"]:
        null = _entry("", start[0], end[0], start[0] + end[0])
      starts, ends = _top(start, n_best), _top(end, n_best)
      valid = (in_context[f, starts][:, None] & in_context[f, ends][None, :]
               & (ends[None, :] >= starts[:, None])
               & (ends[None, :] - starts[:, None] + 1 <= max_answer_length))
      for i, j in zip(*np.nonzero(valid)):  # start-major, as in Hugging Face's loops
        s, t = starts[i], ends[j]
        spans.append(_entry(context[offsets[f, s, 0]:offsets[f, t, 1]], start[s], end[t],
                            start[s] + end[t]))
    candidates = spans + ([null] if version_2 else [])
    ranked = sorted(candidates, key=lambda c: c["score"], reverse=True)  # stable
    top = ranked[:n_best]
    if version_2 and not any(c is null for c in top):
      top.append(null)
    if not top:
      top = [_entry("", 0.0, 0.0, 0.0)]
    scores = np.asarray([c["score"] for c in top])
    weights = np.exp(scores - scores.max())
    for c, p in zip(top, weights / weights.sum()):
      c["probability"] = float(p)
    nbest[qid] = top
    best_span = next((c for c in top if c is not null), None)
    if not version_2:
      predictions[qid] = top[0]["text"]
    else:
      null_odds[qid] = null["score"] - (best_span["score"] if best_span else 0.0)
      answer = best_span["text"] if best_span else ""
      predictions[qid] = "" if null_odds[qid] > null_score_diff_threshold else answer
  return predictions, nbest, null_odds
