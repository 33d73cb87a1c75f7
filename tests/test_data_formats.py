"""Reading what users give: prediction inputs, CoNLL files, and row numbers in data errors."""

import json
import re

import ml_collections
import pytest

from helpers import assert_rescored, load_encoded, tiny_config
from research import inference, tasks, train
from research.data import sources, splits, tokenization
from research.errors import DataError
from research.tasks import tokens


def test_a_txt_input_is_one_example_per_newline(tmp_path):
  # str.splitlines would also cut at U+2028 and U+0085: six examples for four lines.
  path = tmp_path / "in.txt"
  path.write_bytes("a good film\na line\u2028with LS\nthird\x85with NEL\r\nlast\n".encode())
  rows = inference.read_inputs(path, ("sentence",), token_task=False)
  assert rows["sentence"] == ["a good film", "a line\u2028with LS", "third\x85with NEL", "last"]


# ---- row numbers of a split held out of train --------------------------------------------------

_GOOD = {"relation_classification": ('{"sentence": "a <e1>b</e1> c <e2>d</e2>", "label": "r"}',
                                     '{"sentence": "a <e1>b</e1> c d", "label": "r"}',
                                     "no <e2> </e2> tag"),  # (a good row, a bad row, the error)
         "classification": ('{"sentence": "a b", "label": "r"}',
                            '{"sentence": null, "label": "r"}', "is None, not a text"),
         "token_classification": ('{"sentence": ["a", "b"], "label": ["r", "r"]}',
                                  '{"sentence": ["a", "b"], "label": ["r"]}',
                                  "not one tag per word"),
         "question_answering": ('{"question": "a?", "context": "b c", "label": '
                                '{"text": ["c"], "answer_start": [2]}}',
                                '{"question": "a?", "context": "b c", "label": '
                                '{"text": ["c"], "answer_start": [0]}}', "is not at character")}


@pytest.mark.parametrize("kind", sorted(_GOOD))
def test_row_errors_name_the_row_of_the_file_with_validation_from_train(tmp_path, kind):
  """Row 5 of train.jsonl was once 'row 2' of the held-out split (or of the rows left)."""
  from research.models import hf_io
  tokenizer = tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())
  good, bad, says = _GOOD[kind]
  rows = 10
  held = splits.holdout_indices(["r"] * rows, 3, stratify=False)
  task = ml_collections.ConfigDict(dict(
      kind=kind, label_field="label", label_names=("q0", "r"), entity_spans=(),
      entity_markers=(), doc_stride=8, metrics=("accuracy",),
      text_fields=("question", "context") if kind == "question_answering" else ("sentence",)))
  data = ml_collections.ConfigDict(dict(
      dataset=str(tmp_path), subset="", local_name="", max_length=64, train_split="train",
      eval_splits=("validation",), validation_from_train=3))
  for split, row in (("validation", held[1]), ("train", sorted(set(range(rows)) - set(held))[2])):
    lines = [bad if i == row else good for i in range(rows)]
    (tmp_path / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError, match=f": row {row + 1}(,|:).*{says}"):
      load_encoded(data, task, tokenizer, split)


# ---- CoNLL files ---------------------------------------------------------------------------

CONLL = ("-DOCSTART- -X- -X- O\n"
         "\n"
         "EU\tNNP\tB-NP\tB-ORG\n"
         "rejects VBZ B-VP O\n"
         "German  JJ B-NP\tB-MISC\n"  # spaces and a tab
         " \t \n"                     # a whitespace-only line ends the sentence
         "Peter\tNNP\tB-NP\tB-PER\r\n"
         "Blackburn NNP I-NP I-PER\r\n"
         "\r\n"
         "-DOCSTART-\tO\n"
         "\u3000 \n"                 # any whitespace
         "BRUSSELS NNP B-NP B-LOC")  # the last sentence: no newline after it


@pytest.mark.parametrize("suffix", [".conll", ".txt", ".tsv"])
def test_conll_files_read_a_sentence_per_row_with_the_last_column_as_tag(tmp_path, suffix):
  (tmp_path / f"train{suffix}").write_text(CONLL)
  rows = sources.load_split(str(tmp_path), "", "train", ("words", "tags")).to_list()
  assert rows == [{"words": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
                  {"words": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
                  {"words": ["BRUSSELS"], "tags": ["B-LOC"]}]


@pytest.mark.parametrize("text, says", [
    ("EU B-ORG\nrejects\n", ":2: 'rejects' has one column"),
    ("EU NNP B-ORG\n\nrejects O\n", ":3: 2 columns ('rejects O'), line 1 has 3"),
    ("-DOCSTART- O\n\n \n", "has no sentences"),
])
def test_a_bad_conll_line_is_one_error_naming_file_and_line(tmp_path, text, says):
  (tmp_path / "train.conll").write_text(text)
  with pytest.raises(DataError, match=re.escape(says)):
    sources.load_split(str(tmp_path), "", "train")


# ---- a token task's tags read from its training split ----------------------------------------

_PEOPLE, _PLACES, _WORDS = ("Peter Blackburn", "Anna Smith"), ("Paris", "Bonn"), ("saw", "left")


def _conll_folder(folder, eval_tag="B-LOC"):
  """train.conll and validation.conll of 32 and 8 sentences: a person, a verb, a place."""
  folder.mkdir()
  for name, count, place_tag in (("train", 32, "B-LOC"), ("validation", 8, eval_tag)):
    lines = ["-DOCSTART- O", ""]
    for i in range(count):
      first, last = _PEOPLE[i % 2].split()
      lines += [f"{first} B-PER", f"{last} I-PER", f"{_WORDS[i % 2]} O",
                f"{_PLACES[i // 2 % 2]} {place_tag}", ""]
    (folder / f"{name}.conll").write_text("\n".join(lines))
  return folder


def _token_config(folder):
  return tiny_config(**{"task.kind": "token_classification", "task.text_fields": ("tokens",),
                        "task.label_field": "ner_tags", "task.label_names": (),
                        "task.metrics": ("entity_f1",), "eval.best_metric": "entity_f1",
                        "data.dataset": str(folder), "data.local_name": "",
                        "data.train_examples": 0, "data.length_buckets": (16,),
                        "data.max_length": 16, "train.num_epochs": 1.0})


def test_a_validation_tag_missing_from_training_is_one_error_naming_it(tmp_path):
  config = _token_config(_conll_folder(tmp_path / "data", eval_tag="B-CITY"))
  with pytest.raises(DataError, match=r"validation\]: row 1: tag 'B-CITY' is not "
                     r"a tag of the training split \['O', 'B-LOC', 'B-PER', 'I-PER'\]"):
    tokens.training_tags(config.data, config.task, tasks.kind_of(config.task))


def test_a_token_task_without_label_names_trains_on_the_training_tags_and_predicts_them(tmp_path):
  """The tags land in config.json, which eval, predict and export read; a prediction gives
  each word's tag and that tag's probability."""
  workdir = tmp_path / "run"
  folder = _conll_folder(tmp_path / "data")
  train.train_and_evaluate(_token_config(folder), workdir)
  names = ["O", "B-LOC", "B-PER", "I-PER"]
  assert assert_rescored(workdir) == ["entity_f1"]  # its per-sentence predictions
  assert json.loads((workdir / "config.json").read_text())["task"]["label_names"] == names
  again = train.train_and_evaluate(_token_config(folder), workdir)  # the rerun is no conflict
  assert again["final"]["step"] == 2
  (tmp_path / "in.txt").write_text("Anna Smith left Bonn\n" + " ".join(["Paris"] * 20) + "\n")
  assert inference.predict(_token_config(folder), workdir, tmp_path / "in.txt",
                           tmp_path / "out.jsonl") == 2
  short, long = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert set(short["tags"]) <= set(names) and len(short["tags"]) == 4
  # The predicted tag is the most likely: at least 1 / (number of tags).
  assert all(1 / len(names) <= p <= 1 for p in short["probabilities"])
  cut = long["probabilities"].index(None)  # words beyond max_length have no prediction
  assert cut == 14 and long["probabilities"][cut:] == [None] * 6
