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
