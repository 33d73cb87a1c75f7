"""`model.num_layers_kept`: a checkpoint's first N encoder layers as a shallower model of the
same family, loaded from the deep one's weights and exported as an N-layer model that
transformers reads."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from helpers import family_checkpoint, tiny_checkpoint, tiny_config, torch_state
from research import config_lib, inference, train
from research.config_base import ConfigError
from research.models import builder, modernbert

pytestmark = pytest.mark.usefixtures("quiet_transformers")


def test_a_bert_student_from_the_first_layer_trains_and_exports(tmp_path):
  """One layer of a 2-layer BERT: its parameters are the checkpoint's layer 0 (and embeddings,
  pooler), the run's config.json shows one layer, and the export is a 1-layer
  BertForSequenceClassification whose logits equal ours."""
  checkpoint = tiny_checkpoint(tmp_path / "bert")
  config = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                          "model.num_layers_kept": 1, "train.num_epochs": 1.0,
                          "data.train_examples": 64})
  setup = builder.build_model(config)
  assert setup.bert_config.num_hidden_layers == 1
  params = builder.init_params(setup, jax.random.key(0))
  state = torch_state(transformers.BertModel.from_pretrained(str(checkpoint)))
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  assert not any("/layer/1/" in k for k in flat)
  np.testing.assert_array_equal(
      flat["bert/encoder/layer/0/attention/self/query/kernel"],
      state["encoder.layer.0.attention.self.query.weight"].T)
  np.testing.assert_array_equal(flat["bert/pooler/dense/bias"], state["pooler.dense.bias"])

  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["architecture"]["num_hidden_layers"] == 1
  out = inference.export(config, workdir, tmp_path / "export")
  assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
  exported, info = transformers.BertForSequenceClassification.from_pretrained(
      str(out), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  setup, params, _ = inference.load_best(config, workdir)
  ids = np.array([[101, 2023, 3185, 2003, 2307, 102, 0, 0]])
  mask = (ids > 0).astype(np.int64)
  ours = np.asarray(setup.model.apply({"params": params}, ids, mask, np.zeros_like(ids)))
  with torch.no_grad():
    theirs = exported.eval()(input_ids=torch.tensor(ids),
                             attention_mask=torch.tensor(mask)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_modernbert_keeps_each_layers_kind(tmp_path):
  """ModernBERT's first two layers of three keep their kinds (global, local): the depth sets
  its layer pattern too (`with_layers`)."""
  checkpoint = family_checkpoint(tmp_path / "mb", "modernbert")
  config = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                          "model.num_layers_kept": 2})
  setup = builder.build_model(config)
  assert setup.bert_config.layer_types == (modernbert.GLOBAL, modernbert.LOCAL)
  assert setup.hf_config["num_hidden_layers"] == 2
  assert setup.hf_config["layer_types"] == [modernbert.GLOBAL, modernbert.LOCAL]
  params = builder.init_params(setup, jax.random.key(0))
  assert set(params[modernbert.PREFIX]["layers"]) == {"0", "1"}


def test_bad_depths_are_refused_in_one_line(tmp_path):
  checkpoint = tiny_checkpoint(tmp_path / "bert")
  config = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                          "model.num_layers_kept": 3})
  with pytest.raises(ConfigError, match="num_layers_kept: 3 exceeds the checkpoint's 2 layers"):
    builder.build_model(config)
  config.model.num_layers_kept = -1
  with pytest.raises(ConfigError, match="model.num_layers_kept.*must be >= 0"):
    config_lib.validate(config)
  config = tiny_config(**{"model.num_layers_kept": 1})  # random init
  with pytest.raises(ConfigError, match="takes its depth from model.architecture"):
    config_lib.validate(config)
