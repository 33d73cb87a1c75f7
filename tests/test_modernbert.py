"""ModernBERT (research/models/modernbert.py) against transformers' PyTorch `modernbert` models:
the encoder and every head's logits on left- and right-padded rows of mixed lengths, through
local (sliding-window) and global layers, and the parameter tree against the state dict.

No ModernBERT checkpoint is on the machine: each model is a random-init transformers model of
tiny shapes (4 layers of 32, a window of 4 tokens so that rows of 12 see it bite).
"""

import dataclasses
import json

import datasets
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from configs import default, semeval2010_task8
from helpers import (FAMILY_TEXT, assert_same_training, family_checkpoint, kind_config,
                     loaded_params, our_train_steps, record_diff, step_optimizer, tiny_config,
                     torch_state, torch_train_steps)
from research import inference, optim, peft, steps, tasks, train
from research.data import tokenization
from research.data.batches import batch_width, make_batch
from research.config_base import ConfigError
from research.models import builder, families, hf_io, modernbert

# Max abs differences in float32, measured on a 2-core AMD EPYC (AVX2) (test_numerics_table
# prints them): the encoder's outputs 9.5e-7 (1.4e-6 at ModernBERT-base's shapes), the heads'
# logits 4.8e-7 to 1.3e-6 (the masked LMs'), with weights drawn at 10x transformers' init scale.
TOLERANCE = 3e-6
HEAD_TOLERANCE = 3e-6
# Four AdamW steps against transformers + torch.optim.AdamW: the losses, relative (measured
# 5.8e-7 to 9.7e-7 over runs: torch's threads sum in varying order), and each tensor's update
# as a fraction of its largest element (measured 1.2e-4).
RELATIVE_TOLERANCE = 5e-6
UPDATE_TOLERANCE = 5e-4
MAX_DIFFS: dict[tuple[str, str], float] = {}


def _hf_config(variant: str) -> transformers.ModernBertConfig:
  """`plain`: ModernBERT-base's switches (no biases, [CLS] pooling); `biased`: every bias on,
  mean pooling, GELU-tanh, other rotary bases."""
  kw = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=64, local_attention=4,
            global_attn_every_n_layers=3, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            cls_token_id=1, sep_token_id=2, attn_implementation="eager",
            initializer_range=0.2)  # 10x the default: attention that is far from uniform
  if variant == "biased":
    kw.update(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True,
              classifier_pooling="mean", hidden_activation="gelu_pytorch_tanh",
              global_rope_theta=5000.0, local_rope_theta=300.0)
  return transformers.ModernBertConfig(**kw)


def _batch(config: modernbert.ModernBertConfig, left: bool, seed: int = 0):
  """Rows of 9, 5, 12 and 2 real tokens ([CLS] first) padded to 12 on the right or left."""
  rng = np.random.default_rng(seed)
  lengths, width = (9, 5, 12, 2), 12
  ids = np.zeros((len(lengths), width), np.int64)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    real = slice(width - n, width) if left else slice(0, n)
    ids[row, real] = rng.integers(3, config.vocab_size, n)
    ids[row, real.start] = 1
    mask[row, real] = 1
  return ids, mask


def _params(model, state_dict, *inputs):
  bare = isinstance(model, modernbert.ModernBertModel)
  return loaded_params(model, state_dict, inputs, modernbert.PREFIX if bare else None)


def _record(variant, output, ours, theirs, limit):
  record_diff(MAX_DIFFS, variant, output, ours, theirs, limit)


pytestmark = pytest.mark.usefixtures("quiet_transformers")


@pytest.mark.parametrize("variant", ["plain", "biased"])
def test_config_from_transformers(variant):
  """The layer pattern, rotary bases and switches read from a transformers 5 config.json, and
  from the older fields hub checkpoints carry (`global_attn_every_n_layers`, `*_rope_theta`)."""
  hf = _hf_config(variant)
  ours = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  assert ours.layer_types == (modernbert.GLOBAL, modernbert.LOCAL, modernbert.LOCAL,
                              modernbert.GLOBAL)
  assert ours.global_rope_theta == hf.rope_parameters["full_attention"]["rope_theta"]
  assert ours.local_rope_theta == hf.rope_parameters["sliding_attention"]["rope_theta"]
  assert ours.sliding_window == hf.sliding_window == 2
  assert (ours.norm_bias, ours.classifier_pooling) == (hf.norm_bias, hf.classifier_pooling)
  old = {k: v for k, v in hf.to_dict().items() if k not in ("layer_types", "rope_parameters")}
  old.update(global_attn_every_n_layers=3, global_rope_theta=ours.global_rope_theta,
             local_rope_theta=ours.local_rope_theta)
  assert modernbert.ModernBertConfig.from_dict(old) == ours
  again = transformers.ModernBertConfig(**ours.to_dict())
  assert list(again.layer_types) == list(hf.layer_types)
  assert again.rope_parameters == hf.rope_parameters


def test_config_refuses_what_it_cannot_run():
  values = _hf_config("plain").to_dict()
  scaled = dict(values, rope_parameters={"full_attention": {"rope_type": "linear",
                                                            "rope_theta": 1.0, "factor": 2.0}})
  with pytest.raises(ValueError, match="rope_type 'linear'"):
    modernbert.ModernBertConfig.from_dict(scaled)
  with pytest.raises(ValueError, match="layer_types names 3 layers"):
    modernbert.ModernBertConfig.from_dict(dict(values, layer_types=["full_attention"] * 3))
  with pytest.raises(ValueError, match="classifier_pooling 'max'"):
    modernbert.ModernBertConfig.from_dict(dict(values, classifier_pooling="max"))
  with pytest.raises(ValueError, match="untied"):
    modernbert.ModernBertConfig.from_dict(dict(values, tie_word_embeddings=False))


@pytest.mark.parametrize("variant", ["plain", "biased"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_encoder_matches_transformers(variant, left):
  """The sequence output on real tokens. Left padding shifts the positions of real tokens, as
  in transformers; rotary attention and the window see only relative positions, so a wrong
  mask or a wrong rotation fails one of the two batches."""
  torch.manual_seed(0)
  hf = _hf_config(variant)
  reference = transformers.ModernBertModel(hf).eval()
  config = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  ids, mask = _batch(config, left)
  model = modernbert.ModernBertModel(config)
  params = _params(model, torch_state(reference), ids, mask)
  ours = model.apply({"params": params}, ids, mask)
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids),
                       attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  real = mask.astype(bool)
  _record(variant, "encoder", np.asarray(ours)[real], theirs[real], TOLERANCE)


def test_encoder_matches_transformers_at_base_shapes():
  """ModernBERT-base's shapes (22 layers of 768, 12 heads, GeGLU 1152, a window of 128,
  transformers' defaults), two rows of 160 and 97 tokens: long enough for the window to bite."""
  torch.manual_seed(0)
  hf = transformers.ModernBertConfig(attn_implementation="eager", pad_token_id=0)
  reference = transformers.ModernBertModel(hf).eval()
  config = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  assert (config.num_hidden_layers, config.hidden_size, config.local_attention) == (22, 768, 128)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, config.vocab_size, (2, 160))
  mask = np.ones_like(ids)
  ids[1, 97:], mask[1, 97:] = 0, 0
  model = modernbert.ModernBertModel(config)
  params = _params(model, torch_state(reference), ids, mask)
  ours = jax.jit(lambda p: model.apply({"params": p}, ids, mask))(params)
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids),
                       attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  real = mask.astype(bool)
  _record("base", "encoder", np.asarray(ours)[real], theirs[real], TOLERANCE)


def test_remat_recomputes_the_same_gradients():
  """`remat` changes what the backward pass stores, not what it computes: the same loss and
  gradients, dropout on (the masks are drawn again in the recomputation, identically)."""
  config = dataclasses.replace(
      modernbert.ModernBertConfig.from_dict(_hf_config("biased").to_dict()),
      embedding_dropout=0.1, mlp_dropout=0.1, attention_dropout=0.1)
  ids, mask = _batch(config, left=True)
  params = modernbert.ModernBertModel(config).init(jax.random.key(0), ids, mask)["params"]

  def grads(remat):
    model = modernbert.ModernBertModel(dataclasses.replace(config, remat=remat))
    loss = lambda p: (model.apply({"params": p}, ids, mask, deterministic=False,  # noqa: E731
                                  rngs={"dropout": jax.random.key(1)}) ** 2).mean()
    recomputed = str(jax.make_jaxpr(loss)(params)).count("remat")  # a primitive per layer
    assert recomputed == (config.num_hidden_layers if remat else 0)
    return jax.value_and_grad(loss)(params)

  (plain_loss, plain), (remat_loss, remat) = grads(False), grads(True)
  assert abs(float(plain_loss) - float(remat_loss)) <= 1e-6 * abs(float(plain_loss))
  worst = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                           plain, remat)))
  assert worst <= 1e-6, worst


@pytest.mark.parametrize("window", [None, 5], ids=["global", "local"])
def test_attention_by_blocks_is_attention_whole(window):
  """Long inputs are attended by blocks of queries (`modernbert.attend`): the context of the
  real queries and its gradients equal those of the whole score matrix, in a global layer and
  in a local one whose window crosses the blocks' edges, with padding on either side."""
  rng = np.random.default_rng(0)
  query, key, value = (jnp.asarray(rng.normal(size=(2, 3, 64, 8)), jnp.float32)
                       for _ in range(3))
  keys = np.ones((2, 64), bool)
  keys[0, 50:], keys[1, :21] = False, False
  real = keys[:, None, :, None]

  def loss(block, q, k, v):
    context = modernbert.attend(q, k, v, jnp.asarray(keys), window, block=block)
    return (jnp.where(real, context, 0.0) ** 2).sum(), context

  (whole_loss, whole), whole_grads = jax.value_and_grad(
      lambda *a: loss(64, *a), argnums=(0, 1, 2), has_aux=True)(query, key, value)
  (loss_, blocks), grads = jax.value_and_grad(
      lambda *a: loss(16, *a), argnums=(0, 1, 2), has_aux=True)(query, key, value)
  assert "scan" in str(jax.make_jaxpr(lambda q: loss(16, q, key, value))(query))  # blocks
  np.testing.assert_allclose(np.where(real, blocks, 0), np.where(real, whole, 0), atol=1e-6)
  for ours, theirs in zip(grads, whole_grads):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)  # sums in other orders


def test_long_inputs_by_blocks_match_transformers(monkeypatch):
  """The encoder on rows of 48 tokens attended by blocks of 16 queries (a window of 4 tokens
  crossing the blocks' edges) equals transformers' whole-matrix attention on real tokens."""
  monkeypatch.setattr(modernbert, "QUERY_BLOCK", 16)
  torch.manual_seed(0)
  hf = _hf_config("plain")
  hf.max_position_embeddings = 64
  reference = transformers.ModernBertModel(hf).eval()
  config = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  rng = np.random.default_rng(1)
  ids = rng.integers(3, config.vocab_size, (2, 48))
  mask = np.ones_like(ids)
  mask[0, 40:], mask[1, :7] = 0, 0
  ids = ids * mask
  model = modernbert.ModernBertModel(config)
  params = _params(model, torch_state(reference), ids, mask)
  assert "scan" in str(jax.make_jaxpr(lambda p: model.apply({"params": p}, ids, mask))(params))
  ours = model.apply({"params": params}, ids, mask)
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids),
                       attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  real = mask.astype(bool)
  _record("plain", "blocks", np.asarray(ours)[real], theirs[real], TOLERANCE)


def test_window_and_rotation_matter():
  """The checks above can fail: without the window, or with another rotary base, the outputs
  move far beyond the tolerance."""
  torch.manual_seed(0)
  hf = _hf_config("plain")
  reference = transformers.ModernBertModel(hf).eval()
  config = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  ids, mask = _batch(config, left=False)
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids),
                       attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  real = mask.astype(bool)
  for wrong in (dataclasses.replace(config, local_attention=64),
                dataclasses.replace(config, local_rope_theta=20.0)):
    model = modernbert.ModernBertModel(wrong)
    params = _params(model, torch_state(reference), ids, mask)
    ours = model.apply({"params": params}, ids, mask)
    assert np.abs(np.asarray(ours)[real] - theirs[real]).max() > 100 * TOLERANCE


HEADS = {
    "sequence": (transformers.ModernBertForSequenceClassification,
                 lambda c: modernbert.ModernBertForSequenceClassification(c, num_labels=3)),
    "token": (transformers.ModernBertForTokenClassification,
              lambda c: modernbert.ModernBertForTokenClassification(c, num_labels=3)),
    "qa": (transformers.ModernBertForQuestionAnswering,
           lambda c: modernbert.ModernBertForQuestionAnswering(c)),
    "masked_lm": (transformers.ModernBertForMaskedLM,
                  lambda c: modernbert.ModernBertForMaskedLM(c)),
}


@pytest.mark.parametrize("variant", ["plain", "biased"])
@pytest.mark.parametrize("head", list(HEADS))
def test_heads_match_transformers(variant, head):
  """Each head's logits on the real tokens (the pooled row's for sequences; the masked LM's at
  the positions asked for), on right-padded rows, and its parameter tree against the state
  dict: every weight loaded, none left over but the tied decoder."""
  torch.manual_seed(1)
  theirs_class, ours_class = HEADS[head]
  hf = _hf_config(variant)
  hf.num_labels = 2 if head == "qa" else 3  # its classifier gives (start, end)
  reference = theirs_class(hf).eval()
  config = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  ids, mask = _batch(config, left=False)
  model = ours_class(config)
  inputs = (ids, mask)
  if head == "masked_lm":
    positions = np.array([[0, 3, 8], [1, 2, 4], [5, 11, 0], [0, 1, 1]])
    inputs = (ids, mask, np.zeros_like(ids), positions)
  state = torch_state(reference)
  params = _params(model, state, *inputs)
  exported = hf_io.state_dict_from_params(params)
  assert set(exported) == set(state) - {"decoder.weight"}
  for key, value in exported.items():
    np.testing.assert_array_equal(value, state[key])
  ours = np.asarray(model.apply({"params": params}, *inputs))
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  real = mask.astype(bool)
  if head == "sequence":
    theirs = out.logits.numpy()
    ours_real, theirs_real = ours, theirs
  elif head == "qa":
    theirs = np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    ours_real, theirs_real = ours[real], theirs[real]
  elif head == "token":
    ours_real, theirs_real = ours[real], out.logits.numpy()[real]
  else:
    theirs = np.take_along_axis(out.logits.numpy(), positions[..., None], axis=1)
    ours_real, theirs_real = ours, theirs
  _record(variant, head, ours_real, theirs_real, HEAD_TOLERANCE)




@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return family_checkpoint(tmp_path_factory.mktemp("modernbert"), "modernbert")


def test_trains_through_main_and_exports_to_transformers(checkpoint, tmp_path):
  """A ModernBERT checkpoint trains on SST-2 through `train_and_evaluate` like any other
  family (its own config class and model, chosen by model_type), and the best checkpoint
  exports as a `ModernBertForSequenceClassification` whose logits equal ours."""
  config = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                          "train.num_epochs": 1.0, "data.train_examples": 96})
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["architecture"]["model_type"] == "modernbert"
  assert saved["model"]["architecture"]["layer_types"] == [modernbert.GLOBAL, modernbert.LOCAL,
                                                           modernbert.GLOBAL]
  results = json.loads((workdir / "results.json").read_text())
  assert 0.0 <= results["final"]["results"]["validation"]["accuracy"] <= 1.0
  out = inference.export(config, workdir, tmp_path / "export")
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
  assert type(exported).__name__ == "ModernBertForSequenceClassification"
  setup, params, _ = inference.load_best(config, workdir)
  assert isinstance(setup.model, modernbert.ModernBertForSequenceClassification)
  ids, mask = _batch(setup.bert_config, left=False)
  ours = np.asarray(setup.model.apply({"params": params}, ids, mask))
  with torch.no_grad():
    theirs = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  _record("trained", "export", ours, theirs.numpy(), HEAD_TOLERANCE)


@pytest.mark.parametrize("kind, architecture", [
    ("token_classification", "ModernBertForTokenClassification"),
    ("question_answering", "ModernBertForQuestionAnswering"),
    ("masked_lm", "ModernBertForMaskedLM")])
def test_every_kind_trains_and_exports(tmp_path_factory, kind, architecture):
  """NER, QA and masked LM run through `train_and_evaluate` on a ModernBERT checkpoint, and
  each export loads in transformers as its own class with every weight in place."""
  checkpoint = family_checkpoint(tmp_path_factory.mktemp("long"), "modernbert",
                                 max_position_embeddings=128)
  config = kind_config(kind, checkpoint, 128 if kind == "question_answering" else 64)
  workdir = tmp_path_factory.mktemp(kind) / "run"
  train.train_and_evaluate(config, str(workdir))
  out = inference.export(config, workdir, workdir.parent / "export")
  model, info = getattr(transformers, architecture).from_pretrained(str(out),
                                                                   output_loading_info=True)
  assert type(model).__name__ == architecture
  assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_options_it_does_not_have_are_refused(checkpoint, tmp_path):
  """BERT-only options and heads say so in one line, before anything runs."""
  config = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                          "model.attention": "fused"})
  with pytest.raises(ConfigError, match="modernbert has its own attention only"):
    builder.build_model(config)



def test_a_head_a_family_lacks_is_named(checkpoint, monkeypatch):
  """A task kind whose head a family has no model of says which families have one."""
  row = {k: v for k, v in families.MODELS[modernbert.ModernBertConfig].items()
         if k != "relation"}
  monkeypatch.setitem(families.MODELS, modernbert.ModernBertConfig, row)
  config = semeval2010_task8.get_config()
  config.model.checkpoint = str(checkpoint)
  config.data.max_length, config.data.length_buckets = 64, (32, 64)
  with pytest.raises(ConfigError, match="modernbert has no relation model here; bert, "):
    builder.build_model(config)


@pytest.mark.parametrize("representation", ["cls", "entity_start", "entity_mean"])
def test_relation_head_reads_what_it_says(representation):
  """`cls` is transformers' ModernBertForSequenceClassification with the same weights; the
  entity heads are its encoder's states at the entities (their starts, or their tokens' mean)
  through the classifier, computed here from transformers' own outputs."""
  torch.manual_seed(3)
  hf = _hf_config("plain")
  hf.num_labels = 3
  reference = transformers.ModernBertForSequenceClassification(hf).eval()
  config = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  ids, mask = _batch(config, left=False)
  spans = np.array([[1, 3, 4, 7], [2, 3, 3, 5], [5, 9, 1, 2], [1, 2, 0, 1]])
  model = modernbert.ModernBertForRelationClassification(config, 3,
                                                         representation=representation)
  inputs = (ids, mask, np.zeros_like(ids), spans)
  state = torch_state(reference)
  if representation != "cls":  # the entity head's classifier reads 2H features
    state["classifier.weight"] = np.random.default_rng(0).normal(0, 0.2, (3, 64)).astype(
        np.float32)
  params = _params(model, state, *inputs)
  ours = np.asarray(model.apply({"params": params}, *inputs))
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    output_hidden_states=True)
  if representation == "cls":
    theirs = out.logits.numpy()
  else:
    sequence = out.hidden_states[-1].numpy()  # after the final norm, as the heads read it
    rows = np.arange(len(ids))
    if representation == "entity_start":
      features = np.concatenate([sequence[rows, spans[:, 0] - 1],
                                 sequence[rows, spans[:, 2] - 1]], -1)
    else:
      features = np.concatenate([
          np.stack([sequence[r, spans[r, 2 * e]:spans[r, 2 * e + 1]].mean(0) for r in rows])
          for e in (0, 1)], -1)
    theirs = features @ state["classifier.weight"].T + state["classifier.bias"]
  _record("plain", f"relation {representation}", ours, theirs, HEAD_TOLERANCE)


def test_relations_train_and_export_the_encoder_and_head(tmp_path_factory):
  """SemEval through `train_and_evaluate` on a ModernBERT checkpoint (entity markers added to
  its vocabulary): the export is a ModernBertModel that transformers loads, with the head's
  weights and what it reads in config.json."""
  checkpoint = family_checkpoint(tmp_path_factory.mktemp("rel"), "modernbert",
                                 max_position_embeddings=128)
  config = semeval2010_task8.get_config()
  config.model.checkpoint = str(checkpoint)
  config.data.update(train_examples=64, eval_examples=32, max_length=128,
                     length_buckets=(128,), validation_from_train=0, eval_splits=("test",))
  config.train.update(num_epochs=1.0, batch_size=16)
  config.eval.batch_size = 16
  config.checkpoint.every_steps = 1000
  config.parallel.num_devices = 1
  workdir = tmp_path_factory.mktemp("relations") / "run"
  train.train_and_evaluate(config, str(workdir))
  out = inference.export(config, workdir, workdir.parent / "export")
  model, info = transformers.ModernBertModel.from_pretrained(str(out), output_loading_info=True)
  assert not info["missing_keys"], info
  exported = json.loads((out / "config.json").read_text())
  assert exported["architectures"] == ["ModernBertModel"]
  assert exported["relation_head"]["representation"] == "entity_start"
  assert model.get_input_embeddings().weight.shape[0] == len(
      tokenization.load_tokenizer(out))  # the markers' rows


PAIRS_TASK = ml_collections.ConfigDict(dict(
    kind="classification", text_fields=("sentence1", "sentence2"), label_field="label",
    label_names=("a", "b", "c")))


def test_training_steps_match_transformers_and_torch_adamw(checkpoint):
  """Four steps of our train step (AdamW with the weight-decay mask, warm-up, clipping) on
  sentence pairs, and transformers' ModernBertForSequenceClassification with torch's AdamW on
  the same batches from the same weights: the same losses and the same updates (the first step
  has learning rate 0; the last repeats the first batch, whose loss must have fallen)."""
  config, _ = hf_io.load_config(checkpoint)
  tokenizer = tokenization.load_tokenizer(checkpoint)
  lines = FAMILY_TEXT.splitlines()
  rows = datasets.Dataset.from_dict({"sentence1": lines[:-1], "sentence2": lines[1:],
                                     "label": [i % 3 for i in range(len(lines) - 1)]})
  split = tasks.kind_of(PAIRS_TASK).encode(rows, tokenizer, PAIRS_TASK, 64, "pairs")
  picks = [np.arange(3 * i, 3 * i + 3) for i in (0, 1, 2, 0)]
  width = max(batch_width(split, r, (16, 32, 64)) for r in picks)
  batches = [make_batch(split, r, (), width) for r in picks]
  model = tasks.get("classification").build_model(config, 3, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  torch.manual_seed(2)
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(checkpoint), num_labels=3, initializer_range=0.3)
  start = torch_state(reference)
  inputs = steps.model_inputs(batches[0])
  params = _params(model, start, *inputs)
  ocfg = step_optimizer()
  ours, final_params, schedule = our_train_steps(model, params, batches, ocfg)
  theirs = torch_train_steps(reference, batches, ocfg, schedule,
                             ("input_ids", "attention_mask"),
                             lambda name: name.endswith("bias") or "norm" in name)
  assert_same_training(ours, theirs, start, hf_io.state_dict_from_params(final_params),
                       torch_state(reference), MAX_DIFFS, loss_tolerance=RELATIVE_TOLERANCE,
                       update_tolerance=UPDATE_TOLERANCE)


def test_prediction_head_loads_where_the_checkpoint_has_one():
  """transformers names the prediction head `head` in the masked LM and in the classifiers, so
  a classifier fine-tuned from a masked-LM checkpoint starts from its head; from a bare encoder
  the head starts fresh. The classifier itself is always fresh."""
  torch.manual_seed(0)
  hf = _hf_config("plain")
  hf.num_labels = 3
  config = modernbert.ModernBertConfig.from_dict(hf.to_dict())
  ids, mask = _batch(config, left=False)
  model = modernbert.ModernBertForSequenceClassification(config, num_labels=3)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask))["params"]
  fresh = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), shapes)
  masked_lm = torch_state(transformers.ModernBertForMaskedLM(hf))
  params = hf_io.params_from_state_dict(masked_lm, fresh)
  np.testing.assert_array_equal(params["head"]["dense"]["kernel"],
                                masked_lm["head.dense.weight"].T)
  assert (params["classifier"]["kernel"] == 7.0).all()
  encoder = torch_state(transformers.ModernBertModel(hf))
  params = hf_io.params_from_state_dict(encoder, fresh)
  assert (params["head"]["dense"]["kernel"] == 7.0).all()
  np.testing.assert_array_equal(params[modernbert.PREFIX]["final_norm"]["scale"],
                                encoder["final_norm.weight"])
  lm = modernbert.ModernBertForMaskedLM(config)
  lm_shapes = jax.eval_shape(lambda: lm.init(jax.random.key(0), ids, mask, np.zeros_like(ids),
                                             np.zeros((4, 1), np.int32)))["params"]
  assert hf_io.has_head(masked_lm, lm_shapes) and not hf_io.has_head(encoder, lm_shapes)
  assert lm.continues_checkpoint_head  # its `head` and `decoder.bias` both continue


def test_freezing_layer_rates_and_lora_see_its_names():
  """ModernBERT keeps its embeddings, layers and head elsewhere than BERT (`model/layers/i`,
  `head`): freezing the bottom layers, layer-wise learning rates and LoRA find them."""
  config = modernbert.ModernBertConfig.from_dict(_hf_config("plain").to_dict())
  model = modernbert.ModernBertForSequenceClassification(config, num_labels=3)
  ids, mask = _batch(config, left=False)
  params = jax.tree.map(np.asarray, model.init(jax.random.key(0), ids, mask)["params"])
  peft_cfg = default.get_config().peft
  peft_cfg.update(method="full", freeze_bottom_layers=2)
  trainable, frozen = peft.split(peft_cfg, params, jax.random.key(1))
  assert set(frozen[modernbert.PREFIX]) == {"embeddings", "layers"}
  assert set(frozen[modernbert.PREFIX]["layers"]) == {"0", "1"}
  assert set(trainable[modernbert.PREFIX]["layers"]) == {"2", "3"}
  assert {"head", "classifier"} <= set(trainable)
  depths = traverse_util.path_aware_map(lambda path, _: optim.layer_depth(path, 4), params)
  assert depths[modernbert.PREFIX]["embeddings"]["tok_embeddings"]["embedding"] == 0
  assert depths[modernbert.PREFIX]["layers"]["3"]["mlp"]["Wo"]["kernel"] == 4
  assert depths[modernbert.PREFIX]["final_norm"]["scale"] == 5
  assert depths["head"]["dense"]["kernel"] == depths["classifier"]["kernel"] == 5
  peft_cfg.update(method="lora", lora_targets=r".*/attn/Wqkv/kernel", freeze_bottom_layers=0)
  trainable, frozen = peft.split(peft_cfg, params, jax.random.key(1))
  adapted = {path[:-1] for path in traverse_util.flatten_dict(trainable[peft.LORA])}
  assert adapted == {(modernbert.PREFIX, "layers", str(i), "attn", "Wqkv") for i in range(4)}


def test_numerics_table():
  """Prints the measured differences (run with -s) for the README and the closing note
  (last in the file, so that every test above has run)."""
  for (variant, output), diff in sorted(MAX_DIFFS.items()):
    print(f"modernbert {variant:7s} {output:10s} {diff:.1e}")
