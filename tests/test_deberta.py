"""DeBERTa-v2/v3 (research/models/deberta_v2.py) against transformers' PyTorch `deberta-v2`
models: relative positions and their logarithmic buckets, the encoder and every head's logits
on left- and right-padded rows of mixed lengths, the parameter tree against the state dict,
training steps against torch's AdamW, and every task kind through `train_and_evaluate` and
export.

No DeBERTa checkpoint is on the machine: each model is a random-init transformers model of
tiny shapes, in three variants: `v3` (DeBERTa-v3's switches: shared key projections, position
buckets, a LayerNorm'ed relative table, no absolute positions, no token types), `v2` (v2-xlarge's:
separate position projections, a convolution after the first layer, absolute positions, token
types, embeddings narrower than the hidden size, distances clamped at 6) and `c2p` (content to
position only, unbucketed).
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
from transformers.models.deberta_v2 import modeling_deberta_v2 as reference_module

from conftest import require_data
from configs import default
from helpers import (FAMILY_TEXT, assert_same_training, family_checkpoint, kind_config,
                     loaded_params, our_train_steps, record_diff, step_optimizer, tiny_config,
                     torch_state, torch_train_steps)
from research import inference, optim, peft, steps, tasks, train
from research.config_base import ConfigError
from research.data import tokenization
from research.data.batches import batch_width, make_batch
from research.models import builder, deberta_v2, hf_io

# Max abs differences in float32, measured on a 2-core AMD EPYC (AVX2) (test_numerics_table
# prints them), with weights drawn at 10x transformers' init scale: at tiny shapes the encoders
# 1.6e-6 to 2.1e-6, the heads 6.6e-7 to 3.9e-6; at DeBERTa-v3-base's shapes 6.1e-6, where
# transformers' own float32 output is 2.5e-6 from its float64 one and ours 5.8e-6.
TOLERANCE = 6e-6
BASE_TOLERANCE = 1e-5
HEAD_TOLERANCE = 6e-6
# Four AdamW steps against transformers + torch.optim.AdamW: the losses, relative (measured
# 4e-7 to 9e-7), and each tensor's update as a fraction of its largest element (measured 1.7e-4
# to 1.5e-3 over runs, always the classifier's, from a start that differs between runs: the
# pooler's GELU saturates at the head's init scale of 0.3 and leaves classifier weights whose
# gradients are near Adam's eps, where float32 rounding moves an update most).
RELATIVE_TOLERANCE = 5e-6
UPDATE_TOLERANCE = 3e-3
MAX_DIFFS: dict[tuple[str, str], float] = {}
VARIANTS = ("v3", "v2", "c2p")


def _hf_config(variant: str, **updates) -> transformers.DebertaV2Config:
  kw = dict(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=64, relative_attention=True,
            initializer_range=0.2)  # 10x the default: attention that is far from uniform
  if variant == "v3":
    kw.update(position_buckets=8, norm_rel_ebd="layer_norm", share_att_key=True,
              pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0)
  elif variant == "v2":
    kw.update(pos_att_type=["p2c", "c2p"], type_vocab_size=2, conv_kernel_size=3,
              norm_rel_ebd="layer_norm",
              conv_act="gelu", max_relative_positions=6, embedding_size=24,
              hidden_act="gelu_new")
  else:
    kw.update(pos_att_type=["c2p"], position_biased_input=False, pooler_hidden_act="tanh",
              layer_norm_eps=1e-5)
  kw.update(updates)
  return transformers.DebertaV2Config(**kw)


def _batch(config, left: bool, seed: int = 0):
  """Rows of 9, 5, 12 and 2 real tokens ([CLS] = 1 first) padded to 12 on the right or left,
  token types 1 from the fifth token of each row."""
  rng = np.random.default_rng(seed)
  lengths, width = (9, 5, 12, 2), 12
  ids = np.zeros((len(lengths), width), np.int64)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    real = slice(width - n, width) if left else slice(0, n)
    ids[row, real] = rng.integers(3, config.vocab_size, n)
    ids[row, real.start] = 1
    mask[row, real] = 1
  types = np.zeros_like(ids)
  if config.type_vocab_size > 1:
    types[:, 4:] = mask[:, 4:]
  return ids, mask, types


def _params(model, state_dict, *inputs):
  bare = isinstance(model, deberta_v2.DebertaV2Model)
  return loaded_params(model, state_dict, inputs, deberta_v2.PREFIX if bare else None)


def _torch_inputs(ids, mask, types):
  return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              token_type_ids=torch.tensor(types))


def _record(variant, output, ours, theirs, limit):
  record_diff(MAX_DIFFS, variant, output, ours, theirs, limit)


pytestmark = pytest.mark.usefixtures("quiet_transformers")


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_from_transformers(variant):
  """Every switch read from a transformers config.json (`pos_att_type` as "p2c|c2p" or a
  list), and written back so that transformers reads the same model."""
  hf = _hf_config(variant)
  ours = deberta_v2.DebertaV2Config.from_dict(hf.to_dict())
  assert set(ours.pos_att_type) == set(hf.pos_att_type)
  for field in ("position_buckets", "share_att_key", "norm_rel_ebd", "conv_kernel_size",
                "max_relative_positions", "position_biased_input", "type_vocab_size"):
    assert getattr(ours, field) == getattr(hf, field, getattr(ours, field)), field
  again = transformers.DebertaV2Config(**ours.to_dict())
  theirs, mine = hf.to_dict(), again.to_dict()  # mine also names defaults (conv_act: tanh)
  assert {k: mine[k] for k in theirs if k != "transformers_version"} == {
      k: v for k, v in theirs.items() if k != "transformers_version"}
  assert deberta_v2.DebertaV2Config.from_dict(again.to_dict()) == ours


def test_config_refuses_what_it_cannot_run():
  values = _hf_config("v2").to_dict()
  with pytest.raises(ValueError, match="conv_kernel_size 4 is even"):
    deberta_v2.DebertaV2Config.from_dict(dict(values, conv_kernel_size=4))
  with pytest.raises(ValueError, match="pooler_hidden_size 16 differs"):
    deberta_v2.DebertaV2Config.from_dict(dict(values, pooler_hidden_size=16))
  with pytest.raises(ValueError, match="conv_act 'swiglu' is not one of"):
    deberta_v2.DebertaV2Config.from_dict(dict(values, conv_act="swiglu"))
  with pytest.raises(ValueError, match="legacy false with embedding_size"):
    deberta_v2.DebertaV2Config.from_dict(dict(values, legacy=False))


@pytest.mark.parametrize("buckets, max_relative", [(256, 512), (8, 64), (32, 1024), (-1, 16)])
def test_relative_positions_match_transformers(buckets, max_relative):
  """The (bucketed) distances of every query and key up to 1000 tokens, against transformers'
  `build_relative_position`: float32 logarithms rounded up, where one ulp moves a bucket."""
  config = deberta_v2.DebertaV2Config(hidden_size=32, num_attention_heads=4,
                                      relative_attention=True, position_buckets=buckets,
                                      max_relative_positions=max_relative)
  length = 1000
  states = torch.zeros(1, length, 1)
  theirs = reference_module.build_relative_position(
      states, states, bucket_size=buckets, max_position=max_relative)[0].numpy()
  np.testing.assert_array_equal(deberta_v2.relative_positions(config, length), theirs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_encoder_matches_transformers(variant, left):
  """The sequence output on real tokens. Left padding moves real tokens away from position 0
  (absolute positions, v2) and next to zeroed padding (the convolution, v2)."""
  torch.manual_seed(0)
  hf = _hf_config(variant)
  reference = transformers.DebertaV2Model(hf).eval()
  config = deberta_v2.DebertaV2Config.from_dict(hf.to_dict())
  ids, mask, types = _batch(config, left)
  model = deberta_v2.DebertaV2Model(config)
  params = _params(model, torch_state(reference), ids, mask, types)
  ours = model.apply({"params": params}, ids, mask, types)
  with torch.no_grad():
    theirs = reference(**_torch_inputs(ids, mask, types)).last_hidden_state.numpy()
  real = mask.astype(bool)
  _record(variant, "encoder", np.asarray(ours)[real], theirs[real], TOLERANCE)


def test_v3_reads_inputs_longer_than_its_positions(checkpoint):
  """DeBERTa-v3 has no absolute positions: like transformers, it takes rows longer than
  max_position_embeddings (here 100 tokens against 64; distances past 64 share the farthest
  buckets), and a run may set data.max_length above it. v2's absolute table refuses them."""
  torch.manual_seed(0)
  hf = _hf_config("v3")
  reference = transformers.DebertaV2Model(hf).eval()
  config = deberta_v2.DebertaV2Config.from_dict(hf.to_dict())
  rng = np.random.default_rng(0)
  ids = rng.integers(3, config.vocab_size, (2, 100))
  mask = np.ones_like(ids)
  mask[1, 70:] = 0
  types = np.zeros_like(ids)
  model = deberta_v2.DebertaV2Model(config)
  params = _params(model, torch_state(reference), ids, mask, types)
  ours = np.asarray(model.apply({"params": params}, ids, mask, types))
  with torch.no_grad():
    theirs = reference(**_torch_inputs(ids, mask, types)).last_hidden_state.numpy()
  real = mask.astype(bool)
  _record("v3", "encoder beyond 64 positions", ours[real], theirs[real], TOLERANCE)
  v2 = deberta_v2.DebertaV2Config.from_dict(_hf_config("v2").to_dict())
  assert (config.max_length, v2.max_length) == (deberta_v2.UNBOUNDED, 64)
  with pytest.raises(ValueError, match="longer than the model's max_position_embeddings 64"):
    deberta_v2.DebertaV2Model(v2).init(jax.random.key(0), ids, mask, types)
  run = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                       "data.max_length": 128, "data.length_buckets": (128,)})
  assert builder.build_model(run).bert_config.max_position_embeddings == 66  # and 128 is fine


def test_encoder_matches_transformers_at_v3_base_shapes():
  """DeBERTa-v3-base's encoder (12 layers of 768, 12 heads, 256 position buckets over 512
  positions; a smaller vocabulary), two rows of 300 and 181 tokens: distances beyond 128 fall
  into logarithmic buckets."""
  torch.manual_seed(0)
  hf = transformers.DebertaV2Config(
      vocab_size=1000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
      intermediate_size=3072, relative_attention=True, position_buckets=256,
      norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
      position_biased_input=False, type_vocab_size=0, max_relative_positions=-1)
  reference = transformers.DebertaV2Model(hf).eval()
  config = deberta_v2.DebertaV2Config.from_dict(hf.to_dict())
  rng = np.random.default_rng(0)
  ids = rng.integers(5, config.vocab_size, (2, 300))
  mask = np.ones_like(ids)
  ids[1, 181:], mask[1, 181:] = 0, 0
  types = np.zeros_like(ids)
  model = deberta_v2.DebertaV2Model(config)
  params = _params(model, torch_state(reference), ids, mask, types)
  ours = jax.jit(lambda p: model.apply({"params": p}, ids, mask, types))(params)
  with torch.no_grad():
    theirs = reference(**_torch_inputs(ids, mask, types)).last_hidden_state.numpy()
  real = mask.astype(bool)
  _record("v3-base", "encoder", np.asarray(ours)[real], theirs[real], BASE_TOLERANCE)


def test_remat_recomputes_the_same_gradients():
  """`remat` changes what the backward pass stores, not what it computes: the same loss and
  gradients, dropout on."""
  config = deberta_v2.DebertaV2Config.from_dict(_hf_config("v2").to_dict())
  ids, mask, types = _batch(config, left=True)
  params = deberta_v2.DebertaV2Model(config).init(jax.random.key(0), ids, mask,
                                                  types)["params"]

  def grads(remat):
    model = deberta_v2.DebertaV2Model(dataclasses.replace(config, remat=remat))
    loss = lambda p: (model.apply({"params": p}, ids, mask, types,  # noqa: E731
                                  deterministic=False,
                                  rngs={"dropout": jax.random.key(1)}) ** 2).mean()
    recomputed = str(jax.make_jaxpr(loss)(params)).count("remat")  # a primitive per layer
    assert recomputed == (config.num_hidden_layers if remat else 0)
    return jax.value_and_grad(loss)(params)

  (plain_loss, plain), (remat_loss, remat) = grads(False), grads(True)
  assert abs(float(plain_loss) - float(remat_loss)) <= 1e-6 * abs(float(plain_loss))
  worst = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                           plain, remat)))
  assert worst <= 1e-6, worst


def test_position_scores_matter():
  """Disentangled attention is not decoration: without its position terms (relative_attention
  off) the same weights give other outputs, and so does a wrong bucketing."""
  torch.manual_seed(0)
  hf = _hf_config("v3")
  reference = transformers.DebertaV2Model(hf).eval()
  config = deberta_v2.DebertaV2Config.from_dict(hf.to_dict())
  ids, mask, types = _batch(config, left=False)
  state = torch_state(reference)
  model = deberta_v2.DebertaV2Model(config)
  params = _params(model, state, ids, mask, types)
  ours = np.asarray(model.apply({"params": params}, ids, mask, types))
  unbucketed = dataclasses.replace(config, position_buckets=-1, max_relative_positions=8)
  other = np.asarray(deberta_v2.DebertaV2Model(unbucketed).apply({"params": params}, ids,
                                                                 mask, types))
  real = mask.astype(bool)
  assert np.abs(ours[real] - other[real]).max() > 1e-2
  flat = traverse_util.flatten_dict(params)
  relative = (("encoder", "rel_embeddings"), ("encoder", "LayerNorm"))
  plain = traverse_util.unflatten_dict({k: v for k, v in flat.items()
                                        if k[:2] not in relative})
  without = np.asarray(deberta_v2.DebertaV2Model(dataclasses.replace(
      config, relative_attention=False)).apply({"params": plain}, ids, mask, types))
  assert np.abs(ours[real] - without[real]).max() > 1e-2


HEADS = {"sequence": (transformers.DebertaV2ForSequenceClassification,
                      deberta_v2.DebertaV2ForSequenceClassification),
         "token": (transformers.DebertaV2ForTokenClassification,
                   deberta_v2.DebertaV2ForTokenClassification),
         "qa": (transformers.DebertaV2ForQuestionAnswering,
                deberta_v2.DebertaV2ForQuestionAnswering),
         "masked_lm": (transformers.DebertaV2ForMaskedLM, deberta_v2.DebertaV2ForMaskedLM),
         "masked_lm_v3_head": (transformers.DebertaV2ForMaskedLM,
                               deberta_v2.DebertaV2ForMaskedLM)}


@pytest.mark.parametrize("variant", ["v3", "v2"])
@pytest.mark.parametrize("head", list(HEADS))
def test_heads_match_transformers(variant, head):
  """Each head's logits on the real tokens (the pooled row's for sequences; the masked LM's at
  the positions asked for), and its parameter tree against the state dict: every weight
  loaded, none left over but the tied decoder. `masked_lm_v3_head` is `legacy=False`: v3's
  `lm_predictions` head, which its hub checkpoints hold."""
  torch.manual_seed(1)
  theirs_class, ours_class = HEADS[head]
  updates = {"legacy": False} if head == "masked_lm_v3_head" else {}
  if updates and variant == "v2":
    updates["embedding_size"] = 32  # v3's head reads the word embeddings at the hidden size
  hf = _hf_config(variant, **updates)
  hf.num_labels = 2 if head == "qa" else 3
  reference = theirs_class(hf).eval()
  config = deberta_v2.DebertaV2Config.from_dict(hf.to_dict())
  ids, mask, types = _batch(config, left=False)
  model = ours_class(config) if head in ("qa",) or "masked" in head else ours_class(config, 3)
  inputs = (ids, mask, types)
  positions = np.array([[0, 3, 8], [1, 2, 4], [5, 11, 0], [0, 1, 1]])
  if "masked" in head:
    inputs = (ids, mask, types, positions)
  state = torch_state(reference)
  params = _params(model, state, *inputs)
  exported = hf_io.state_dict_from_params(params)
  tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
  assert set(exported) == set(state) - tied - {"deberta.embeddings.position_ids"}
  for key, value in exported.items():
    np.testing.assert_array_equal(value, state[key])
  ours = np.asarray(model.apply({"params": params}, *inputs))
  with torch.no_grad():
    out = reference(**_torch_inputs(ids, mask, types))
  real = mask.astype(bool)
  if head == "sequence":
    ours_real, theirs_real = ours, out.logits.numpy()
  elif head == "qa":
    theirs = np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    ours_real, theirs_real = ours[real], theirs[real]
  elif head == "token":
    ours_real, theirs_real = ours[real], out.logits.numpy()[real]
  else:
    ours_real = ours
    theirs_real = np.take_along_axis(out.logits.numpy(), positions[..., None], axis=1)
  _record(variant, head, ours_real, theirs_real, HEAD_TOLERANCE)


@pytest.mark.parametrize("representation", ["cls", "entity_start", "entity_mean"])
def test_relation_head_reads_what_it_says(representation):
  """`cls` is transformers' DebertaV2ForSequenceClassification with the same weights; the
  entity heads are its encoder's states at the entities (their starts, or their tokens' mean)
  through the classifier, computed here from transformers' own outputs."""
  torch.manual_seed(3)
  hf = _hf_config("v3")
  hf.num_labels = 3
  reference = transformers.DebertaV2ForSequenceClassification(hf).eval()
  config = deberta_v2.DebertaV2Config.from_dict(hf.to_dict())
  ids, mask, types = _batch(config, left=False)
  spans = np.array([[1, 3, 4, 7], [2, 3, 3, 5], [5, 9, 1, 2], [1, 2, 1, 2]])  # in real tokens
  model = deberta_v2.DebertaV2ForRelationClassification(config, 3,
                                                         representation=representation)
  inputs = (ids, mask, types, spans)
  state = torch_state(reference)
  if representation != "cls":  # the entity head's classifier reads 2H features, no pooler
    state["classifier.weight"] = np.random.default_rng(0).normal(0, 0.2, (3, 64)).astype(
        np.float32)
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
  params = _params(model, state, *inputs)
  ours = np.asarray(model.apply({"params": params}, *inputs))
  with torch.no_grad():
    out = reference(**_torch_inputs(ids, mask, types))
    sequence = reference.deberta(**_torch_inputs(ids, mask, types)).last_hidden_state.numpy()
  if representation == "cls":
    theirs = out.logits.numpy()
  else:
    rows = np.arange(len(ids))
    if representation == "entity_start":
      features = np.concatenate([sequence[rows, spans[:, 0] - 1],
                                 sequence[rows, spans[:, 2] - 1]], -1)
    else:
      features = np.concatenate([
          np.stack([sequence[r, spans[r, 2 * e]:spans[r, 2 * e + 1]].mean(0) for r in rows])
          for e in (0, 1)], -1)
    theirs = features @ state["classifier.weight"].T + state["classifier.bias"]
  _record("v3", f"relation {representation}", ours, theirs, HEAD_TOLERANCE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return family_checkpoint(tmp_path_factory.mktemp("deberta"), "deberta-v2")


def test_trains_through_main_and_exports_to_transformers(checkpoint, tmp_path):
  """A DeBERTa-v3 checkpoint (its DebertaV2Tokenizer, [CLS] A [SEP]) trains on SST-2 through
  `train_and_evaluate` like any other family, and the best checkpoint exports as a
  `DebertaV2ForSequenceClassification` whose logits equal ours."""
  config = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                          "train.num_epochs": 1.0, "data.train_examples": 96})
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["architecture"]["model_type"] == "deberta-v2"
  assert saved["model"]["architecture"]["position_buckets"] == 8
  results = json.loads((workdir / "results.json").read_text())
  assert 0.0 <= results["final"]["results"]["validation"]["accuracy"] <= 1.0
  out = inference.export(config, workdir, tmp_path / "export")
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
  assert type(exported).__name__ == "DebertaV2ForSequenceClassification"
  setup, params, _ = inference.load_best(config, workdir)
  assert isinstance(setup.model, deberta_v2.DebertaV2ForSequenceClassification)
  ids, mask, types = _batch(setup.bert_config, left=False)
  ours = np.asarray(setup.model.apply({"params": params}, ids, mask, types))
  with torch.no_grad():
    theirs = exported(**_torch_inputs(ids, mask, types)).logits
  _record("trained", "export", ours, theirs.numpy(), HEAD_TOLERANCE)


@pytest.mark.parametrize("kind, architecture", [
    ("token_classification", "DebertaV2ForTokenClassification"),
    ("question_answering", "DebertaV2ForQuestionAnswering"),
    ("masked_lm", "DebertaV2ForMaskedLM"),
    ("relation_classification", "DebertaV2Model")])
def test_every_kind_trains_and_exports(tmp_path_factory, kind, architecture):
  """NER, QA, masked LM and relations (entity markers added to the vocabulary) run through
  `train_and_evaluate` on a DeBERTa checkpoint, and each export loads in transformers as its
  own class with every weight in place (relations: the bare encoder, the head described in
  config.json)."""
  require_data({"token_classification": "conll2003", "question_answering": "squad_v2_dev5",
                "relation_classification": "semeval2010_task8"}.get(kind, "sst2"))
  checkpoint = family_checkpoint(tmp_path_factory.mktemp("long"), "deberta-v2",
                                 max_position_embeddings=128)
  config = kind_config(kind, checkpoint, 64 if kind == "token_classification" else 128)
  workdir = tmp_path_factory.mktemp(kind) / "run"
  train.train_and_evaluate(config, str(workdir))
  results = json.loads((workdir / "results.json").read_text())["final"]["results"]
  assert all(np.isfinite(v) for split in results.values() for v in split.values()
             if isinstance(v, float)), results
  out = inference.export(config, workdir, workdir.parent / "export")
  model, info = getattr(transformers, architecture).from_pretrained(str(out),
                                                                   output_loading_info=True)
  assert type(model).__name__ == architecture
  assert not info["missing_keys"], info
  if kind == "relation_classification":
    exported = json.loads((out / "config.json").read_text())
    assert exported["relation_head"]["representation"] == "entity_start"
    assert model.get_input_embeddings().weight.shape[0] == len(
        tokenization.load_tokenizer(out))  # the markers' rows
  else:
    assert not info["unexpected_keys"], info


def _spm_model() -> bytes:
  """A SentencePiece Unigram model trained on `FAMILY_TEXT` with DeBERTa-v3's special pieces
  ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK])."""
  import io

  import sentencepiece
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(FAMILY_TEXT.splitlines() * 4), model_writer=model,
      vocab_size=150, model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
      pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
      user_defined_symbols=["[MASK]"], minloglevel=2)
  return model.getvalue()


def test_a_hub_checkpoint_with_only_spm_model_trains_and_exports(checkpoint, tmp_path):
  """DeBERTa-v3's hub checkpoints ship the tokenizer as `spm.model` alone (no tokenizer.json):
  it is accepted as a tokenizer, converted by transformers (with sentencepiece) to the pieces
  SentencePiece itself gives, joined [CLS] A [SEP], and copied into the export, whose tokenizer
  transformers loads."""
  import sentencepiece
  hub = tmp_path / "deberta-v3-like"
  hub.mkdir()
  for name in ("config.json", "model.safetensors"):
    (hub / name).write_bytes((checkpoint / name).read_bytes())
  (hub / "spm.model").write_bytes(_spm_model())
  (hub / "tokenizer_config.json").write_text('{"do_lower_case": false, "vocab_type": "spm"}')
  text = "we visited London , Madrid and Rome"
  pieces = sentencepiece.SentencePieceProcessor(model_file=str(hub / "spm.model")).encode(text)
  tokenizer = tokenization.load_tokenizer(hub)
  assert tokenizer(text)["input_ids"] == [1, *pieces, 2]
  config = tiny_config(**{"model.checkpoint": str(hub), "model.tokenizer": "",
                          "train.num_epochs": 1.0, "data.train_examples": 32})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  out = inference.export(config, tmp_path / "run", tmp_path / "export")
  assert (out / "spm.model").read_bytes() == (hub / "spm.model").read_bytes()
  assert transformers.AutoTokenizer.from_pretrained(str(out))(text)["input_ids"] == [
      1, *pieces, 2]


def test_options_it_does_not_have_are_refused(checkpoint):
  """BERT's fused attention says in one line that DeBERTa has its own, before anything runs."""
  config = tiny_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": "",
                          "model.attention": "fused"})
  with pytest.raises(ConfigError, match="deberta-v2 has its own attention only"):
    builder.build_model(config)


PAIRS_TASK = ml_collections.ConfigDict(dict(
    kind="classification", text_fields=("sentence1", "sentence2"), label_field="label",
    label_names=("a", "b", "c")))


def test_training_steps_match_transformers_and_torch_adamw(checkpoint):
  """Four steps of our train step (AdamW with the weight-decay mask, warm-up, clipping) on
  sentence pairs, and transformers' DebertaV2ForSequenceClassification with torch's AdamW on
  the same batches from the same weights: the same losses and the same updates (the first step
  has learning rate 0; the last repeats the first batch, whose loss must have fallen), dropout
  off."""
  config, _ = hf_io.load_config(checkpoint)
  config = dataclasses.replace(config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
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
      str(checkpoint), num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      initializer_range=0.3)
  start = torch_state(reference)
  inputs = steps.model_inputs(batches[0])
  params = _params(model, start, *inputs)
  ocfg = step_optimizer()
  ours, final_params, schedule = our_train_steps(model, params, batches, ocfg)
  theirs = torch_train_steps(reference, batches, ocfg, schedule,
                             ("input_ids", "attention_mask", "token_type_ids"),
                             lambda name: name.endswith("bias") or "LayerNorm" in name)
  assert_same_training(ours, theirs, start, hf_io.state_dict_from_params(final_params),
                       torch_state(reference), MAX_DIFFS, loss_tolerance=RELATIVE_TOLERANCE,
                       update_tolerance=UPDATE_TOLERANCE)


def test_masked_lm_continues_the_head_its_checkpoint_has():
  """A masked LM continues a checkpoint's LM head only when the checkpoint holds that head: a
  v3 hub checkpoint's `lm_predictions` for `legacy: false`; for the legacy `cls` head (what
  transformers builds when config.json says nothing) it starts fresh, as in transformers."""
  torch.manual_seed(0)
  hf = _hf_config("v3", legacy=False)
  state = torch_state(transformers.DebertaV2ForMaskedLM(hf))
  positions = np.zeros((4, 1), np.int32)
  for legacy, continues in ((False, True), (True, False)):
    config = deberta_v2.DebertaV2Config.from_dict(dict(hf.to_dict(), legacy=legacy))
    model = deberta_v2.DebertaV2ForMaskedLM(config)
    ids, mask, types = _batch(config, left=False)
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), ids, mask, types,
                                                   positions))["params"]
    assert hf_io.has_head(state, shapes) == continues
  assert not hf_io.has_head(torch_state(transformers.DebertaV2Model(hf)), shapes)


def test_freezing_layer_rates_and_lora_see_its_names():
  """DeBERTa keeps its relative-position table beside its layers and its sentence head's
  pooler outside the encoder: freezing the bottom layers freezes the table with the
  embeddings, layer-wise learning rates put it at the embeddings' depth and v2's convolution at
  the first layer's, and the pooler trains with the head."""
  config = deberta_v2.DebertaV2Config.from_dict(_hf_config("v2").to_dict())
  model = deberta_v2.DebertaV2ForSequenceClassification(config, num_labels=3)
  ids, mask, types = _batch(config, left=False)
  params = jax.tree.map(np.asarray, model.init(jax.random.key(0), ids, mask, types)["params"])
  prefix = deberta_v2.PREFIX
  peft_cfg = default.get_config().peft
  peft_cfg.update(method="full", freeze_bottom_layers=2)
  trainable, frozen = peft.split(peft_cfg, params, jax.random.key(1))
  assert set(frozen[prefix]) == {"embeddings", "encoder"}
  assert set(frozen[prefix]["encoder"]) == {"layer", "rel_embeddings", "LayerNorm", "conv"}
  assert set(frozen[prefix]["encoder"]["layer"]) == {"0", "1"}
  assert set(trainable[prefix]["encoder"]["layer"]) == {"2"}
  assert {"pooler", "classifier"} <= set(trainable)
  depths = traverse_util.path_aware_map(lambda path, _: optim.layer_depth(path, 3), params)
  encoder = depths[prefix]["encoder"]
  assert depths[prefix]["embeddings"]["word_embeddings"]["embedding"] == 0
  assert encoder["rel_embeddings"]["embedding"] == encoder["LayerNorm"]["scale"] == 0
  assert encoder["conv"]["conv"]["kernel"] == 1
  assert encoder["layer"]["2"]["output"]["dense"]["kernel"] == 3
  assert depths["pooler"]["dense"]["kernel"] == depths["classifier"]["kernel"] == 4
  peft_cfg.update(method="lora", lora_targets=r".*/attention/self/(query|value)_proj/kernel",
                  freeze_bottom_layers=0)
  trainable, frozen = peft.split(peft_cfg, params, jax.random.key(1))
  adapted = {path[:-1] for path in traverse_util.flatten_dict(trainable[peft.LORA])}
  assert adapted == {(prefix, "encoder", "layer", str(i), "attention", "self", name)
                     for i in range(3) for name in ("query_proj", "value_proj")}


def test_numerics_table():
  """Prints the measured differences (run with -s) for the README and the closing note
  (last in the file, so that every test above has run)."""
  for (variant, output), diff in sorted(MAX_DIFFS.items()):
    print(f"deberta {variant:8s} {output:26s} {diff:.1e}")
