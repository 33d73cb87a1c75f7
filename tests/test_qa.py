"""Extractive question answering: SQuAD's layouts, windows over long contexts, the loss, the
export to transformers, and the embedded MiniLM on real SQuAD 2.0 questions."""

import json
import shutil

import datasets
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from conftest import require_data
from helpers import assert_rescored, load_encoded, tiny_checkpoint
from configs import squad as squad_config
from research import config_lib, inference, tasks, train
from research.data import sources, tokenization
from research.data.batches import make_batch
from research.errors import DataError
from research.models import hf_io

DEV5 = "squad_v2_dev5"


@pytest.fixture(scope="module")
def tokenizer():
  return tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())


def _task(**updates):
  config = squad_config.get_config("v2")
  config.task.update(updates)
  return config.task


def test_squad_json_reads_as_the_flat_layout(tmp_path):
  folder = require_data(DEV5)
  shutil.copyfile(folder / "squad_v2_dev_first5_articles.json", tmp_path / "validation.json")
  nested = sources.load_split(str(tmp_path), "", "validation")
  flat = sources.load_split(str(folder), "", "validation")
  assert len(nested) == len(flat) == 1407
  for a, b in zip(nested, flat):
    assert (a["id"], a["question"], a["context"], a["title"]) == (
        b["id"], b["question"], b["context"], b["title"])
    assert a["answers"] == b["answers"]
  assert sum(not row["answers"]["text"] for row in nested) == 702  # unanswerable


def _windows(tokenizer, rows, max_length, stride, labelled=True):
  task = _task(doc_stride=stride)
  return tasks.kind_of(task).encode(datasets.Dataset.from_list(rows), tokenizer, task,
                                    max_length, "rows", labelled=labelled)


def test_long_contexts_become_overlapping_windows_with_the_answer_where_it_is(tokenizer):
  context = " ".join(f"word{i}" for i in range(120)) + " the answer is Paris indeed."
  start = context.index("Paris")
  rows = [{"id": "q1", "question": "Where?", "context": context,
           "answers": {"text": ["Paris"], "answer_start": [start]}},
          {"id": "q2", "question": "Nothing?", "context": "short text here",
           "answers": {"text": [], "answer_start": []}}]
  split = _windows(tokenizer, rows, max_length=64, stride=16)
  windows = np.flatnonzero(split.feature_example == 0)
  assert len(windows) > 2 and list(split.feature_example[-1:]) == [1]
  for f in windows:
    tokens = split.input_ids[f, :split.lengths[f]]
    assert tokens[0] == tokenizer.cls_token_id and split.lengths[f] <= 64
  # Consecutive windows share doc_stride context tokens.
  first, second = (split.offsets[f][split.offsets[f, :, 0] >= 0] for f in windows[:2])
  assert (first[-16:] == second[:16]).all()
  # The answer's window labels its tokens; the others (and the unanswerable question) [CLS].
  labelled = [f for f in windows if split.labels[f, 0] > 0]
  assert labelled == [windows[-1]]
  f = labelled[0]
  s, e = split.labels[f]
  assert context[split.offsets[f, s, 0]:split.offsets[f, e, 1]] == "Paris"
  assert (split.labels[windows[:-1]] == 0).all() and (split.labels[-1] == 0).all()
  assert split.examples[1] == {"id": "q2", "context": "short text here", "answers": []}


def test_an_answer_not_at_its_offset_is_one_error_naming_the_row(tokenizer):
  rows = [{"question": "q", "context": "abc def", "answers": {"text": ["def"],
                                                              "answer_start": [3]}}]
  with pytest.raises(DataError, match="rows: row 1: the answer 'def' is not at character 3"):
    _windows(tokenizer, rows, 64, 16)


def test_the_loss_ignores_padding():
  """The softmax over start/end positions covers a window's real tokens only."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 6, 2)), jnp.float32)
  labels = jnp.asarray([[1, 2], [0, 0]])
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
  loss, weight = tasks.get("question_answering").loss_sum(logits, labels, jnp.ones(2), mask)
  padded = jnp.where(mask[..., None] > 0, logits, 100.0)  # garbage where the padding is
  again, _ = tasks.get("question_answering").loss_sum(padded, labels, jnp.ones(2), mask)
  # measured bit-equal: the padding is masked out; approx's 1e-6 allows another order of the sums
  assert float(loss) == pytest.approx(float(again)) and float(weight) == 2
  # By hand, row 0: (-log softmax(l[:4, 0])[1] - log softmax(l[:4, 1])[2]) / 2.
  row = np.asarray(logits[0, :4])
  by_hand = -(row[1, 0] - np.log(np.exp(row[:, 0]).sum())
              + row[2, 1] - np.log(np.exp(row[:, 1]).sum())) / 2
  row = np.asarray(logits[1, :5])
  by_hand += -(row[0, 0] - np.log(np.exp(row[:, 0]).sum())
               + row[0, 1] - np.log(np.exp(row[:, 1]).sum())) / 2
  assert float(loss) == pytest.approx(by_hand, rel=1e-6)  # measured 1.1e-7 (float32 both); 9x
  # An eval batch's padding row (example_mask 0, one real token) whose label points past it.
  loss_with_padding_row, weight = tasks.get("question_answering").loss_sum(
      jnp.concatenate([logits, logits[:1]]),
      jnp.concatenate([labels, jnp.asarray([[3, 4]])]), jnp.asarray([1.0, 1.0, 0.0]),
      jnp.concatenate([mask, jnp.asarray([[1, 0, 0, 0, 0, 0]])]))
  # measured bit-equal, as above
  assert float(loss_with_padding_row) == pytest.approx(float(loss)) and float(weight) == 2


def test_config_mistakes_name_the_field():
  config = squad_config.get_config()
  config.task.doc_stride = 256
  with pytest.raises(config_lib.ConfigError, match="config.task.doc_stride: 256 must be"):
    config_lib.validate(config)
  config = squad_config.get_config()
  config.task.text_fields = ("question",)
  with pytest.raises(config_lib.ConfigError, match="config.task.text_fields: needs the question"):
    config_lib.validate(config)


# ---- small model: export and predict ------------------------------------------------------


def _dev5_split(tmp_path, train_titles):
  """$tmp/dev5 with train.jsonl (the questions of `train_titles`) and validation.jsonl (the
  rest): training on some articles, evaluating on the others."""
  folder = require_data(DEV5)
  rows = [json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines()]
  out = tmp_path / "dev5"
  out.mkdir()
  for name, keep in (("train", True), ("validation", False)):
    (out / f"{name}.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in rows if (r["title"] in train_titles) == keep))
  return out


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  """A random 2-layer BERT (transformers' init, the embedded tokenizer) trained for a few steps
  on SQuAD 2.0 questions."""
  root = tmp_path_factory.mktemp("qa")
  checkpoint = tiny_checkpoint(root / "small-bert")
  config = squad_config.get_config("v2")
  config.model.checkpoint = str(checkpoint)
  config.data.dataset = str(_dev5_split(root, {"Normans"}))
  config.data.local_name = ""
  config.data.train_examples = 64
  config.data.eval_examples = 48
  config.data.max_length = 128
  config.data.length_buckets = (128,)
  config.task.doc_stride = 32
  config.train.batch_size = 16
  config.train.num_epochs = 1.0
  config.eval.batch_size = 32
  config.parallel.num_devices = 1
  summary = train.train_and_evaluate(config, root / "run")
  return config, root / "run", summary


def test_eval_writes_the_official_files_and_scores(small_run):
  config, workdir, summary = small_run
  step = summary["final"]["step"]
  scores = summary["final"]["results"]["validation"]
  assert set(config.task.metrics) <= set(scores)
  predictions = json.loads((workdir / "eval" / f"validation_step{step}_predictions.json")
                           .read_text())
  null_odds = json.loads((workdir / "eval" / f"validation_step{step}_null_odds.json")
                         .read_text())
  nbest = json.loads((workdir / "eval" / f"validation_step{step}_nbest.json").read_text())
  assert len(predictions) == len(null_odds) == len(nbest) == 48  # every question once
  assert all(isinstance(v, str) for v in predictions.values())
  record = json.loads((workdir / "eval" / f"validation_step{step}.json").read_text())
  assert record["report"]["scores"]["total"] == 48
  assert assert_rescored(workdir) == ["f1", "exact", "HasAns_f1", "NoAns_f1"]


def test_export_loads_in_transformers_with_the_same_start_and_end_logits(small_run, tmp_path):
  config, workdir, _ = small_run
  out = inference.export(config, workdir, tmp_path / "export")
  setup, params, _ = inference.load_best(config, workdir)
  split = load_encoded(config.data, config.task, setup.tokenizer, "validation", limit=8)
  batch = make_batch(split, np.arange(len(split)), (128,))
  ours = np.asarray(setup.model.apply({"params": params}, batch["input_ids"],
                                      batch["attention_mask"], batch["token_type_ids"]))
  model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out)).eval()
  with torch.no_grad():
    theirs = model(**{k: torch.tensor(batch[k]).long()
                      for k in ("input_ids", "attention_mask", "token_type_ids")})
  # measured 8.9e-8 max abs (logits up to 0.37) on 2-core EPYC (AVX2); 1e-6, our floor for logits
  np.testing.assert_allclose(ours[..., 0], theirs.start_logits.numpy(), atol=1e-6, rtol=0)
  np.testing.assert_allclose(ours[..., 1], theirs.end_logits.numpy(), atol=1e-6, rtol=0)
  assert json.loads((out / "config.json").read_text())["architectures"] == [
      "BertForQuestionAnswering"]


def test_predict_answers_question_context_pairs(small_run, tmp_path):
  config, workdir, _ = small_run
  source = tmp_path / "in.jsonl"
  source.write_text(json.dumps({"question": "Who ruled?", "context": "The Normans ruled."})
                    + "\n" + json.dumps({"question": "Where?", "context": "In Normandy."})
                    + "\n")
  assert inference.predict(config, workdir, source, tmp_path / "out.jsonl") == 2
  lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  threshold = config.task.null_score_diff_threshold
  for line, row in zip(lines, ({"context": "The Normans ruled."}, {"context": "In Normandy."})):
    assert set(line) == {"question", "context", "answer", "score", "probability", "null_odds"}
    if line["answer"]:  # the best span of the context, its null odds under the threshold
      assert line["answer"] in row["context"] and line["null_odds"] <= threshold
      assert 0 < line["probability"] <= 1 and isinstance(line["score"], float)
    else:  # SQuAD 2.0's no answer: the null odds above the threshold, or no span at all
      assert line["null_odds"] > threshold or line["score"] is None, line


def test_a_squad_v1_eval_split_with_unanswerable_questions_is_one_error(tmp_path, tokenizer):
  """They were scored 0 against no answer (F1 0.056 reported, 0.075 on the answerable)."""
  answered = {"text": ["def"], "answer_start": [4]}
  none = {"text": [], "answer_start": []}
  (tmp_path / "validation.jsonl").write_text("".join(
      json.dumps({"id": f"q{i}", "question": "q?", "context": "abc def", "answers": a}) + "\n"
      for i, a in enumerate([answered, none, answered, none])))
  data = ml_collections.ConfigDict(dict(dataset=str(tmp_path), subset="", local_name="",
                                        max_length=64, train_split="train"))
  with pytest.raises(DataError, match=r"\[validation\]: 2 of the 4 questions have no answer "
                     r"\(ids 'q1', 'q3'\).*task.version_2_with_negative=True"):
    load_encoded(data, _task(version_2_with_negative=False, doc_stride=16), tokenizer,
                 "validation")
  split = load_encoded(data, _task(doc_stride=16), tokenizer, "validation")
  assert [e["answers"] for e in split.examples] == [["def"], [], ["def"], []]
