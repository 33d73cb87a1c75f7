"""Each task family learns from a slice of real data, well beyond its trivial baseline.

Sentence pairs (MRPC), regression (STS-B) and NER (CoNLL-2003) on the embedded MiniLM, a few
dozen to a few hundred steps each; plus the configs of every registered task.
"""

import numpy as np
import pytest

from conftest import require_data
from configs import chnsenticorp, conll2003, glue
from research import config_lib, tasks, train


def _slice(config, train_examples, epochs, eval_examples=0):
  config.data.train_examples = train_examples
  config.data.eval_examples = eval_examples
  config.train.num_epochs = float(epochs)
  config.parallel.num_devices = 1
  config.checkpoint.every_steps = 10_000
  return config


def test_sentence_pairs_learn_mrpc(tmp_path):
  require_data("mrpc")
  config = _slice(glue.get_config("mrpc"), 3200, 2)  # 200 steps of 32 pairs
  summary = train.train_and_evaluate(config, tmp_path)
  dev = summary["final"]["results"]["validation"]
  majority = 279 / 408  # "equivalent" everywhere
  assert dev["accuracy"] >= majority + 0.05, dev
  assert dev["f1"] > 0.8, dev


def test_regression_learns_stsb(tmp_path):
  require_data("stsb")
  config = _slice(glue.get_config("stsb"), 1600, 1, eval_examples=500)  # 50 steps
  summary = train.train_and_evaluate(config, tmp_path)
  dev = summary["final"]["results"]["validation"]
  # A constant prediction has no correlation; the embedded model was trained for similarity.
  assert dev["pearson"] > 0.6 and dev["spearman"] > 0.6, dev
  assert summary["final"]["results"]["validation"]["mse"] < 2.0


def test_ner_learns_conll2003(tmp_path):
  require_data("conll2003")
  config = _slice(conll2003.get_config(), 3200, 1, eval_examples=500)  # 100 steps
  config.data.eval_splits = ("validation",)
  summary = train.train_and_evaluate(config, tmp_path)
  dev = summary["final"]["results"]["validation"]
  assert dev["entity_f1"] > 0.5, dev  # predicting O everywhere scores 0
  report = __import__("json").loads(
      (tmp_path / "eval" / f"validation_step{summary['final']['step']}.json").read_text())
  assert {"PER", "LOC", "ORG", "MISC"} <= set(report["report"])


def test_every_registered_task_has_a_valid_config():
  for name in tasks.GLUE:
    config = glue.get_config(name)
    config_lib.validate(config)
    assert config.task.metrics == tasks.GLUE[name].metrics
  for config in (conll2003.get_config(), chnsenticorp.get_config()):
    config_lib.validate(config)
  assert glue.get_config("mnli").data.eval_splits == ("validation_matched",
                                                      "validation_mismatched")
  assert glue.get_config("stsb").task.kind == "regression"
  with pytest.raises(config_lib.ConfigError, match="needs a task"):
    glue.get_config("")


def test_chinese_text_is_tokenised_per_character():
  require_data("chnsenticorp")
  from research.data import input_pipeline as ip
  from research.models import hf_io
  config = chnsenticorp.get_config()
  tokenizer = ip.load_tokenizer(hf_io.embedded_checkpoint_dir())
  split = ip.load_encoded(config.data, config.task, tokenizer, "validation", limit=50)
  unknown = tokenizer.unk_token_id
  real = split.input_ids[split.input_ids > 0]
  assert np.mean(real == unknown) < 0.02  # the vocabulary covers the characters
  assert sorted(set(split.labels.tolist())) == [0, 1]
