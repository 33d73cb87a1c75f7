"""Reading what users give: prediction inputs, CoNLL files, and row numbers in data errors."""

import pathlib

import pytest

from research import inference
from research.data import input_pipeline


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
  import ml_collections
  from research.models import hf_io
  tokenizer = input_pipeline.load_tokenizer(hf_io.embedded_checkpoint_dir())
  good, bad, says = _GOOD[kind]
  rows = 10
  held = input_pipeline.holdout_indices(["r"] * rows, 3, stratify=False)
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
    with pytest.raises(input_pipeline.DataError, match=f": row {row + 1}(,|:).*{says}"):
      input_pipeline.load_encoded(data, task, tokenizer, split)
