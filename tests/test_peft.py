"""PEFT through the param tree: what trains, what stays bit-identical, LoRA's algebra; and
layer-wise learning-rate decay and early stopping."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from conftest import require_data
from helpers import tiny_config
from research import evaluation, inference, optim, peft, tasks, train
from research.models import builder, hf_io


def _peft(**kw):
  values = dict(method="full", freeze_bottom_layers=0, lora_rank=4, lora_alpha=8.0,
                lora_targets=r".*/attention/self/(query|value)/kernel")
  values.update(kw)
  return ml_collections.ConfigDict(values)


@pytest.fixture(scope="module")
def minilm():
  source = hf_io.embedded_checkpoint_dir()
  config, raw = hf_io.load_config(source)
  model = tasks.get("classification").build_model(config, 2, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  ids = jnp.ones((1, 4), jnp.int32)
  params = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), ids, ids)["params"])
  params = hf_io.params_from_state_dict(hf_io.read_state_dict(source), params)
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 5000, (3, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  return model, params, raw, source, (ids, mask, np.zeros_like(ids))


def _paths(tree):
  return set(traverse_util.flatten_dict(tree))


def test_trainable_sets_of_each_method(minilm):
  _, params, _, _, _ = minilm
  everything = _paths(params)
  head = {p for p in everything if p[0] == "classifier"}
  trainable, frozen = peft.split(_peft(method="frozen_encoder"), params, jax.random.key(0))
  assert _paths(trainable) == head and _paths(frozen) == everything - head
  assert peft.count(trainable) == 384 * 2 + 2
  trainable, _ = peft.split(_peft(method="bitfit"), params, jax.random.key(0))
  assert _paths(trainable) == head | {p for p in everything if p[-1] == "bias"}
  trainable, frozen = peft.split(_peft(method="full", freeze_bottom_layers=2), params,
                                 jax.random.key(0))
  assert {p[:4] for p in _paths(frozen) if p[1] == "encoder"} == {
      ("bert", "encoder", "layer", "0"), ("bert", "encoder", "layer", "1")}
  assert all(p[1] in ("embeddings", "encoder") for p in _paths(frozen))
  trainable, frozen = peft.split(_peft(method="lora"), params, jax.random.key(0))
  lora = traverse_util.flatten_dict(trainable[peft.LORA])
  assert len(lora) == 6 * 2 * 2  # 6 layers x (query, value) x (a, b)
  assert peft.count(trainable) == 6 * 2 * (384 * 4 + 4 * 384) + 384 * 2 + 2
  assert _paths(frozen) == everything - head


def test_lora_at_initialisation_is_exactly_the_base_model(minilm):
  model, params, _, _, batch = minilm
  trainable, frozen = peft.split(_peft(method="lora"), params, jax.random.key(1))
  merged = peft.materialize(trainable, frozen, 2.0)
  jax.tree.map(np.testing.assert_array_equal, merged, params)
  np.testing.assert_array_equal(model.apply({"params": merged}, *batch),
                                model.apply({"params": params}, *batch))


def test_merged_lora_export_equals_the_unmerged_model(minilm, tmp_path):
  """Unmerged: each adapted Dense adds scale * (x A) B beside its frozen kernel (intercepted
  at call time). Merged: W + scale * A B, exported, loaded by transformers."""
  model, params, raw, source, batch = minilm
  cfg = _peft(method="lora")
  trainable, frozen = peft.split(cfg, params, jax.random.key(2))
  rng = np.random.default_rng(3)
  trainable[peft.LORA] = jax.tree.map(lambda x: rng.normal(0, 0.05, x.shape).astype(x.dtype),
                                      trainable[peft.LORA])
  scale = peft.lora_scale(cfg)
  factors = traverse_util.flatten_dict(trainable[peft.LORA])
  plain = peft.materialize({k: v for k, v in trainable.items() if k != peft.LORA}, frozen, 0.0)

  def add_lora(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = tuple(context.module.path)  # e.g. bert/encoder/layer/0/attention/self/query
    if isinstance(context.module, nn.Dense) and path + ("a",) in factors:
      x = args[0]
      out = out + scale * (x @ factors[path + ("a",)]) @ factors[path + ("b",)]
    return out

  with nn.intercept_methods(add_lora):
    unmerged = np.asarray(model.apply({"params": plain}, *batch))
  merged = peft.materialize(trainable, frozen, scale)
  ours = np.asarray(model.apply({"params": merged}, *batch))
  # measured 3.5e-8 max abs (logits up to 0.03) on 2-core EPYC (AVX2); 1e-6, our floor for logits
  np.testing.assert_allclose(ours, unmerged, atol=1e-6)
  assert np.abs(unmerged - np.asarray(model.apply({"params": plain}, *batch))).max() > 1e-3
  hf_io.export(merged, tmp_path, base_config=raw, architecture="BertForSequenceClassification",
               label_names=("negative", "positive"), num_labels=2, tokenizer_dir=source)
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(tmp_path)).eval()
  with torch.no_grad():
    exported = reference(*[torch.tensor(x).long() for x in batch]).logits.numpy()
  np.testing.assert_allclose(exported, unmerged, atol=1e-6)  # measured 2.8e-8, as above


@pytest.mark.parametrize("method,kw", [("frozen_encoder", {}), ("bitfit", {}), ("lora", {}),
                                       ("full", {"freeze_bottom_layers": 1})])
def test_frozen_parameters_are_bit_identical_after_training(tmp_path, method, kw):
  require_data("sst2")
  config = tiny_config(**{"peft.method": method, "train.num_epochs": 1.0,
                          "optimizer.learning_rate": 1e-3,
                          **{f"peft.{k}": v for k, v in kw.items()}})
  train.train_and_evaluate(config, tmp_path)
  setup = builder.build_model(config)
  initial = builder.init_params(setup, train.seed_keys(config.seed)[0])
  trained, _ = inference.load_best(config, tmp_path)[1:]
  before, after = traverse_util.flatten_dict(initial), traverse_util.flatten_dict(trained)
  cfg = config.peft
  changed = {p for p in before if not np.array_equal(before[p], after[p])}
  frozen = {p for p in before if not peft.is_trainable(cfg, p)}
  if method == "lora":  # the adapted kernels change through their factors, nothing else
    adapted = {p for p in before if p[-2] in ("query", "value") and p[-1] == "kernel"}
    assert changed - {p for p in before if p[0] == "classifier"} == adapted
  else:
    assert not changed & frozen, sorted(changed & frozen)[:3]
    assert changed == set(before) - frozen  # and everything trainable moved
  if method == "bitfit":
    assert all(p[-1] == "bias" or p[0] == "classifier" for p in changed)


def test_layer_decay_multipliers():
  params = {"bert": {"embeddings": {"w": 0}, "encoder": {"layer": {str(i): {"w": 0}
                                                                  for i in range(3)}},
                     "pooler": {"w": 0}},
            "classifier": {"w": 0}, "lora": {"bert": {"encoder": {"layer": {"1": {"a": 0}}}}}}
  m = traverse_util.flatten_dict(optim.layer_decay_multipliers(params, 0.5, 3), sep="/")
  assert m["classifier/w"] == m["bert/pooler/w"] == 1.0
  assert m["bert/encoder/layer/2/w"] == 0.5 and m["bert/encoder/layer/0/w"] == 0.125
  assert m["bert/embeddings/w"] == 0.0625 and m["lora/bert/encoder/layer/1/a"] == 0.25


def test_layer_decay_scales_the_updates():
  from configs import default
  params = {"bert": {"encoder": {"layer": {"0": {"kernel": jnp.ones(3)}}}},
            "classifier": {"kernel": jnp.ones(3)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  updates = {}
  for decay in (1.0, 0.8):
    cfg = default.get_config().optimizer
    cfg.update(layer_decay=decay, schedule="constant", warmup_ratio=0.0)
    tx, _ = optim.make_optimizer(cfg, params, 10, num_layers=1)
    updates[decay], _ = tx.update(grads, tx.init(params), params)
  layer = lambda u: u["bert"]["encoder"]["layer"]["0"]["kernel"]  # noqa: E731
  # measured bit-equal: elementwise float32, no sums; 1e-6 allows a product taken in another order
  np.testing.assert_allclose(layer(updates[0.8]), 0.8 * layer(updates[1.0]), rtol=1e-6)
  np.testing.assert_allclose(updates[0.8]["classifier"]["kernel"],
                             updates[1.0]["classifier"]["kernel"], rtol=1e-6)


def test_early_stopping_stops_at_the_expected_epoch(tmp_path, monkeypatch):
  """Scripted dev accuracy per epoch: the best is epoch 2, patience 2 stops after epoch 4."""
  require_data("sst2")
  script = iter([0.50, 0.60, 0.55, 0.58, 0.90, 0.95])
  original = evaluation.score

  def scripted(task_cfg, split, outputs, loss):
    scalars, report = original(task_cfg, split, outputs, loss)
    scalars["accuracy"] = next(script)
    return scalars, report
  monkeypatch.setattr(evaluation, "score", scripted)
  config = tiny_config(**{"train.num_epochs": 6.0, "eval.early_stopping_patience": 2})
  summary = train.train_and_evaluate(config, tmp_path)
  per_epoch = 12
  assert summary["early_stopping"] == {"stopped_at": 4 * per_epoch, "restored": 2 * per_epoch}
  assert summary["best"]["step"] == 2 * per_epoch and summary["best"]["value"] == 0.60
  assert summary["train"]["steps"] == 4 * per_epoch
  _, _, meta = inference.load_best(config, tmp_path)
  assert meta["step"] == 2 * per_epoch
  # Rerunning the finished workdir does not train on.
  again = train.train_and_evaluate(config, tmp_path)
  assert again["early_stopping"] == summary["early_stopping"]
