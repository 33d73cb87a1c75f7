"""Relation classification: the official SemEval-2010 Task 8 score, entity markers, the three
representations and export to transformers (whether the embedded MiniLM learns SemEval is a
learning check: experiments/learning/run.py)."""

import json

import numpy as np
import pytest
import torch
import transformers

from conftest import require_data
from helpers import assert_rescored, load_encoded
from configs import semeval2010_task8
from research import config_lib, inference, metrics, named_tasks, train
from research.data import tokenization
from research.data.batches import make_batch
from research.errors import DataError
from research.models import hf_io
from research.tasks import relations

NAMES = named_tasks.SEMEVAL2010_RELATIONS


def _ids(labels):
  return np.asarray([NAMES.index(label) for label in labels])


@pytest.mark.parametrize("case, official, accuracy", [
    ("all_other", 0.00, None),
    ("direction_always_e1e2", 56.55, None),
    ("every_third_replaced", 65.62, 67.98),
])
def test_official_score_reproduces_the_scorer_on_its_cases(case, official, accuracy):
  """The values the official perl scorer gives for these prediction files (data README)."""
  folder = require_data("semeval2010_task8")
  rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
  predicted = dict(line.split("\t") for line in
                   (folder / "scorer_cases" / f"{case}.txt").read_text().splitlines())
  gold = _ids([row["label"] for row in rows])
  guess = _ids([predicted[str(row["id"])] for row in rows])
  scores = metrics.relation_scores(gold, guess, NAMES, "Other")
  assert round(100 * scores["official"]["f1-score"], 2) == official
  assert len(scores) == 10  # nine relations and the official mean; Other is not among them
  if accuracy is not None:
    assert round(100 * metrics.accuracy(gold, guess), 2) == accuracy


def test_a_wrong_direction_counts_against_precision_and_recall():
  names = ("R(e1,e2)", "R(e2,e1)", "Other")
  gold = np.asarray([0, 0, 1, 2])
  guess = np.asarray([0, 1, 1, 0])  # right, wrong direction, right, a false R
  r = metrics.relation_scores(gold, guess, names, "Other")["R"]
  assert (r["precision"], r["recall"], r["support"]) == (2 / 4, 2 / 3, 3)


def test_entity_tags_become_character_spans():
  text, spans = relations.strip_entity_tags("The <e1>child</e1> was put in the <e2>cradle</e2>.")
  assert text == "The child was put in the cradle."
  assert text[spans[0]:spans[1]] == "child" and text[spans[2]:spans[3]] == "cradle"
  _, spans = relations.strip_entity_tags("<e2>B</e2> then <e1>A</e1>")  # entity 2 may come first
  assert spans == (7, 8, 0, 1)
  for bad, says in [("no tags here", "no <e1> </e1> <e2> </e2> tag"),
                    ("<e1>a</e1> <e1>b</e1> <e2>c</e2>", "appears more than once"),
                    ("<e1>a <e2>b</e1> c</e2>", "overlap"),
                    ("</e1>a<e1> <e2>b</e2>", "empty or outside")]:
    with pytest.raises(ValueError, match=says):
      relations.strip_entity_tags(bad)


def _task(**updates):
  config = semeval2010_task8.get_config()
  config.task.update(updates)
  return config.task


@pytest.fixture(scope="module")
def tokenizer():
  tok = tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())
  tokenization.add_marker_tokens(tok, ("[E1]", "[/E1]", "[E2]", "[/E2]"))
  return tok


def _encode(tokenizer, rows, max_length=64, labelled=False, **task):
  import datasets
  return relations.encode_relations(datasets.Dataset.from_list(rows), tokenizer, _task(**task),
                                    max_length,
                                    "rows", labelled=labelled)


def _tokens(tokenizer, split, i):
  return tokenizer.convert_ids_to_tokens(split.input_ids[i, :split.lengths[i]].tolist())


def test_markers_are_single_tokens_around_the_entities(tokenizer):
  rows = [{"sentence": "A <e1>configuration</e1> of antenna <e2>elements</e2>."},
          {"sentence": "<e2>Trays</e2> held the <e1>pots</e1>"}]
  split = _encode(tokenizer, rows)
  assert _tokens(tokenizer, split, 0) == ["[CLS]", "a", "[E1]", "configuration", "[/E1]", "of",
                                          "antenna", "[E2]", "elements", "[/E2]", ".", "[SEP]"]
  np.testing.assert_array_equal(split.entity_spans[0], [3, 4, 8, 9])
  tokens = _tokens(tokenizer, split, 1)
  s1, e1, s2, e2 = split.entity_spans[1]
  assert tokens[s1 - 1:e1 + 1] == ["[E1]", "pots", "[/E1]"]
  assert tokens[s2 - 1:e2 + 1] == ["[E2]", "tray", "##s", "[/E2]"]
  # The same entities given as character spans, and without markers.
  text, spans = relations.strip_entity_tags(rows[0]["sentence"])
  by_fields = _encode(tokenizer, [dict(zip(("text", "s1", "e1", "s2", "e2"), (text,) + spans))],
                      text_fields=("text",), entity_spans=("s1", "e1", "s2", "e2"))
  np.testing.assert_array_equal(by_fields.input_ids[0], split.input_ids[0])
  np.testing.assert_array_equal(by_fields.entity_spans[0], split.entity_spans[0])
  bare = _encode(tokenizer, rows[:1], entity_markers=())
  assert _tokens(tokenizer, bare, 0) == ["[CLS]", "a", "configuration", "of", "antenna",
                                         "elements", ".", "[SEP]"]
  np.testing.assert_array_equal(bare.entity_spans[0], [2, 3, 5, 6])


def test_a_long_sentence_keeps_a_window_around_both_entities(tokenizer):
  words = [f"w{i}" for i in range(60)]
  words[30] = "<e1>alpha</e1>"
  words[38] = "<e2>beta</e2>"
  split = _encode(tokenizer, [{"sentence": " ".join(words)}], max_length=24)
  tokens = _tokens(tokenizer, split, 0)
  assert len(tokens) == 24 and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
  s1, e1, s2, e2 = split.entity_spans[0]
  assert tokens[s1 - 1:e1 + 1] == ["[E1]", "alpha", "[/E1]"]
  assert tokens[s2 - 1:e2 + 1] == ["[E2]", "beta", "[/E2]"]
  before, after = s1 - 2, 22 - (e2 + 1)  # context tokens kept on each side of the stretch
  assert abs(before - after) <= 1
  with pytest.raises(DataError, match="row 1: the entities and the text between them take"):
    _encode(tokenizer, [{"sentence": " ".join(words)}], max_length=12)


def test_rows_without_usable_entities_are_one_error_naming_the_row(tokenizer):
  rows = [{"sentence": "<e1>a</e1> <e2>b</e2>"}, {"sentence": "<e1>a</e1> and b"}]
  with pytest.raises(DataError, match=r"rows: row 2: no <e2> </e2> tag"):
    _encode(tokenizer, rows)
  with pytest.raises(DataError, match=r"row 1: entity spans \(0, 9, 2, 1\)"):
    _encode(tokenizer, [{"t": "abc", "a": 0, "b": 9, "c": 2, "d": 1}], text_fields=("t",),
            entity_spans=("a", "b", "c", "d"))


def test_new_marker_rows_start_at_the_mean_embedding():
  state = {"embeddings.word_embeddings.weight": np.arange(12, dtype=np.float32).reshape(4, 3)}
  init = {"bert": {"embeddings": {"word_embeddings": {"embedding": np.full((6, 3), 0.5)}}}}
  grown = hf_io.grow_vocabulary(state, init)["embeddings.word_embeddings.weight"]
  np.testing.assert_array_equal(grown[:4], state["embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(grown[4:], [[5.0, 6.0, 7.0]] * 2)  # mean (4.5, 5.5, 6.5) + 0.5


def test_config_mistakes_name_the_field():
  for field, value, says in [("representation", "pooled", "is not one of"),
                             ("entity_markers", ("[E1]", "[E1]", "[E2]", "[/E2]"), "distinct"),
                             ("entity_spans", ("a", "b"), "four fields"),
                             ("no_relation_label", "None", "not one of task.label_names")]:
    config = semeval2010_task8.get_config()
    config.task[field] = value
    with pytest.raises(config_lib.ConfigError, match=f"config.task.{field}: .*{says}"):
      config_lib.validate(config)


# ---- small model: export to transformers ------------------------------------------------


@pytest.fixture(scope="module")
def small_runs(small_checkpoint, tmp_path_factory):
  """representation -> (config, workdir) of a 4-step run of the small model, made on demand."""
  runs = {}

  def get(representation):
    if representation not in runs:
      workdir = tmp_path_factory.mktemp(representation)
      runs[representation] = _small_run(small_checkpoint, workdir, representation), workdir
    return runs[representation]
  return get


def _small_run(checkpoint, workdir, representation):
  require_data("semeval2010_task8")
  config = semeval2010_task8.get_config(f"representation={representation}")
  config.model.checkpoint = str(checkpoint)
  config.data.train_examples = 64
  config.data.eval_examples = 40
  config.data.eval_splits = ("test",)
  config.data.validation_from_train = 0.0
  config.data.length_buckets = (64,)
  config.data.max_length = 64
  config.eval.batch_size = 40
  config.train.batch_size = 16
  config.train.num_epochs = 1.0
  config.optimizer.learning_rate = 1e-3
  config.parallel.num_devices = 1
  train.train_and_evaluate(config, workdir)
  return config


@pytest.mark.parametrize("representation", ["cls", "entity_start", "entity_mean"])
def test_export_loads_in_transformers_with_the_same_logits(small_runs, tmp_path,
                                                           representation):
  config, workdir = small_runs(representation)
  out = inference.export(config, workdir, tmp_path / "export")
  setup, params, _ = inference.load_best(config, workdir)
  split = load_encoded(config.data, config.task, setup.tokenizer, "test", limit=40)
  batch = make_batch(split, np.arange(40), (64,))
  ours = np.asarray(setup.model.apply({"params": params}, batch["input_ids"],
                                      batch["attention_mask"], batch["token_type_ids"],
                                      batch["entity_spans"]))
  inputs = {k: torch.tensor(batch[k]).long()
            for k in ("input_ids", "attention_mask", "token_type_ids")}
  saved = json.loads((out / "config.json").read_text())
  assert saved["vocab_size"] == 30526 and saved["id2label"]["18"] == "Other"
  with torch.no_grad():
    if representation == "cls":
      model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
      theirs = model(**inputs).logits.numpy()
    else:
      assert saved["relation_head"]["representation"] == representation
      model = transformers.BertModel.from_pretrained(str(out), add_pooling_layer=False).eval()
      hidden = model(**inputs).last_hidden_state.numpy()
      spans = batch["entity_spans"]
      rows = np.arange(len(spans))[:, None]
      if representation == "entity_start":
        features = hidden[rows, spans[:, 0::2] - 1]  # the [E1] and [E2] markers
      else:
        features = np.stack([hidden[i, spans[i, k]:spans[i, k + 1]].mean(0)
                             for i in range(len(spans)) for k in (0, 2)])
      weights = hf_io.read_state_dict(out)
      theirs = (features.reshape(len(spans), -1) @ weights["classifier.weight"].T
                + weights["classifier.bias"])
  # measured 1.8e-7 max abs (entity_mean's logits, up to 0.5; cls's 2.2e-8) on 2-core EPYC; ~10x
  np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=0)
  # The saved tokenizer knows the markers: tokenising the marked text gives our ids.
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  text = "A [E1] configuration [/E1] of antenna [E2] elements [/E2]."
  rows = [{"sentence": "A <e1>configuration</e1> of antenna <e2>elements</e2>."}]
  ours_ids = _encode(setup.tokenizer, rows)
  assert tokenizer(text)["input_ids"] == ours_ids.input_ids[0, :ours_ids.lengths[0]].tolist()


def test_predict_writes_relations_with_probabilities(small_runs, tmp_path):
  config, workdir = small_runs("entity_start")
  assert assert_rescored(workdir, "test") == ["relation_f1", "accuracy"]
  source = tmp_path / "in.txt"
  source.write_text("The <e1>cat</e1> sat in the <e2>box</e2>.\n<e1>Smoke</e1> from a "
                    "<e2>fire</e2>\n")
  assert inference.predict(config, workdir, source, tmp_path / "out.jsonl") == 2
  lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [set(line) for line in lines] == [{"sentence", "label", "probabilities"}] * 2
  assert all(round(p, 6) == p for line in lines for p in line["probabilities"].values())
  # 19 probabilities, each rounded to 6 decimals: the sum moves by 9.5e-6 at most; measured 2e-6
  assert all(line["label"] in NAMES and abs(sum(line["probabilities"].values()) - 1) < 2e-5
             for line in lines)
