"""Our Flax BERT against transformers' PyTorch BERT on the same weights, and checkpoint I/O."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from research import tasks
from research.models import bert, builder, hf_io

# Max abs differences from transformers in float32, measured on a 2-core AMD EPYC (AVX2): hidden
# states 2.7e-6 (the embedded MiniLM's, values up to 10; 1.2e-6 for the random small BERT's), the
# pooler's output 2.1e-7, the exported classifier's logits 6e-8. The tolerances are ~10x the
# largest (the logits' sits near the 1e-6 floor we keep for float32 model outputs).
TOLERANCE = 3e-5  # hidden states
OUTPUT_TOLERANCE = 2e-6  # the pooler's output and the classifier's logits


def _batch_with_padding(vocab_size, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, vocab_size, (3, 11)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[0, 6:] = 0  # two padded rows of different lengths
  mask[2, 9:] = 0
  ids[mask == 0] = 0
  types = np.zeros_like(ids)
  types[1, 5:] = 1  # a sentence pair
  return ids, mask, types


def _torch_dir(tmp_path, config_kwargs, seed=0):
  torch.manual_seed(seed)
  model = transformers.BertModel(transformers.BertConfig(**config_kwargs)).eval()
  model.save_pretrained(tmp_path)
  return tmp_path


def _compare_encoder(checkpoint_dir):
  config, _ = hf_io.load_config(checkpoint_dir)
  ids, mask, types = _batch_with_padding(config.vocab_size)
  model = bert.BertModel(config)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask))["params"]
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  params = hf_io.params_from_state_dict(hf_io.read_state_dict(checkpoint_dir),
                                        {"bert": template})["bert"]
  sequence, pooled, hidden = model.apply({"params": params}, ids, mask, types,
                                         output_hidden_states=True)
  reference = transformers.BertModel.from_pretrained(str(checkpoint_dir)).eval()
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types), output_hidden_states=True)
  assert len(hidden) == len(out.hidden_states) == config.num_hidden_layers + 1
  for ours, theirs in zip(hidden, out.hidden_states):
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(np.asarray(sequence), out.last_hidden_state.numpy(),
                             atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(np.asarray(pooled), out.pooler_output.numpy(),
                             atol=OUTPUT_TOLERANCE, rtol=0)


def test_embedded_minilm_matches_pytorch():
  _compare_encoder(hf_io.embedded_checkpoint_dir())


def test_random_small_bert_matches_pytorch(tmp_path):
  _compare_encoder(_torch_dir(tmp_path, dict(
      vocab_size=5000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
      intermediate_size=96, max_position_embeddings=32, type_vocab_size=2)))


@pytest.mark.parametrize("model_type, max_positions, longest", [("bert", 64, 64),
                                                            ("roberta", 66, 64)])
def test_an_input_longer_than_the_position_table_is_refused(model_type, max_positions, longest):
  """jnp.take clamps an index past the table: without a check, 128 tokens on 64 positions
  returned numbers (transformers raises). Shapes are static, so the check is at trace time."""
  config = bert.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, model_type=model_type,
                           max_position_embeddings=max_positions, pad_token_id=1)
  model = bert.BertModel(config)
  fits = jnp.ones((1, longest), jnp.int32)
  jax.eval_shape(lambda: model.init(jax.random.key(0), fits, fits))
  too_long = jnp.ones((1, longest + 1), jnp.int32)
  with pytest.raises(ValueError, match=f"{longest + 1} tokens .* {longest} .*"
                                       f"max_position_embeddings {max_positions}"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), too_long, too_long))


def test_pytorch_bin_checkpoint_loads_like_safetensors(tmp_path):
  torch.manual_seed(1)
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=2000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=48))
  model.save_pretrained(tmp_path / "st")
  (tmp_path / "bin").mkdir()
  torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
  a = hf_io.read_state_dict(tmp_path / "st")
  b = hf_io.read_state_dict(tmp_path / "bin")
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def _classifier(config, num_labels):
  model = tasks.get("classification").build_model(config, num_labels, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  ids = jnp.ones((1, 4), jnp.int32)
  params = jax.jit(lambda r: model.init(r, ids, ids)["params"])(jax.random.key(3))
  return model, jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_export_round_trip_through_transformers(tmp_path, num_labels):
  """Our exported directory loads in AutoModelForSequenceClassification with equal logits."""
  source = hf_io.embedded_checkpoint_dir()
  config, raw = hf_io.load_config(source)
  model, params = _classifier(config, num_labels)
  params = hf_io.params_from_state_dict(hf_io.read_state_dict(source), params)
  names = ("a", "b", "c") if num_labels == 3 else ()
  assert raw["transformers_version"] != transformers.__version__  # the checkpoint's: 4.8.2
  hf_io.export(params, tmp_path, base_config=raw, architecture="BertForSequenceClassification",
               label_names=names, num_labels=num_labels, tokenizer_dir=source,
               source="/runs/sst2")
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(tmp_path)).eval()
  ids, mask, types = _batch_with_padding(config.vocab_size)
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       token_type_ids=torch.tensor(types)).logits.numpy()
  ours = np.asarray(model.apply({"params": params}, ids, mask, types))
  np.testing.assert_allclose(ours, theirs, atol=OUTPUT_TOLERANCE, rtol=0)
  assert reference.config.num_labels == num_labels
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["problem_type"] == ("regression" if num_labels == 1
                                   else "single_label_classification")
  # The versions and source of the export, not the source checkpoint's: transformers writes
  # its own version when it saves the model it loaded.
  reference.save_pretrained(tmp_path / "resaved")
  resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
  assert saved["transformers_version"] == resaved["transformers_version"]
  assert saved["_name_or_path"] == "/runs/sst2"
  assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))("hi")["input_ids"]
  # And back: importing the export with its head reproduces our params exactly.
  again = hf_io.params_from_state_dict(hf_io.read_state_dict(tmp_path), params, load_head=True)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_missing_and_mismatched_weights_are_listed_in_one_error():
  source = hf_io.embedded_checkpoint_dir()
  config, _ = hf_io.load_config(source)
  _, params = _classifier(config, 2)
  state = hf_io.read_state_dict(source)
  del state["encoder.layer.3.output.dense.bias"]
  del state["pooler.dense.weight"]
  state["embeddings.token_type_embeddings.weight"] = np.zeros((3, 384), np.float32)
  with pytest.raises(hf_io.CheckpointError) as error:
    hf_io.params_from_state_dict(state, params)
  message = str(error.value)
  assert "2 missing, 1 mismatched" in message
  assert "bert.encoder.layer.3.output.dense.bias" in message
  assert "bert.pooler.dense.weight" in message
  assert "bert.embeddings.token_type_embeddings.weight: checkpoint (3, 384)" in message


def test_head_is_fresh_and_seeded():
  source = hf_io.embedded_checkpoint_dir()
  config, _ = hf_io.load_config(source)
  state = hf_io.read_state_dict(source)
  _, a = _classifier(config, 2)
  loaded = hf_io.params_from_state_dict(state, a)
  np.testing.assert_array_equal(loaded["classifier"]["kernel"], a["classifier"]["kernel"])
  np.testing.assert_array_equal(loaded["bert"]["pooler"]["dense"]["kernel"],
                                state["pooler.dense.weight"].T)


@pytest.mark.parametrize("config_name,computed", [
    ("sst2", {("classifier", "bias"), ("classifier", "kernel")}),
    # 4 entity markers added to the vocabulary: their rows' noise comes from the fresh init
    ("semeval2010_task8", {("classifier", "bias"), ("classifier", "kernel"),
                           ("bert", "embeddings", "word_embeddings", "embedding")}),
    # a base checkpoint has no masked-LM head (it starts fresh) and a pooler the model lacks
    ("mlm", {("cls", "predictions", "bias"), ("cls", "predictions", "transform", "dense", "bias"),
             ("cls", "predictions", "transform", "dense", "kernel"),
             ("cls", "predictions", "transform", "LayerNorm", "bias"),
             ("cls", "predictions", "transform", "LayerNorm", "scale")}),
])
def test_init_computes_only_what_the_checkpoint_does_not_overwrite(small_checkpoint,
                                                                   config_name, computed,
                                                                   caplog):
  """The parameters of a run that starts from a checkpoint equal a whole init with the
  checkpoint loaded over it, bit for bit; only the leaves the checkpoint does not fill are
  computed."""
  import importlib

  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.model.checkpoint = str(small_checkpoint)
  config.model.tokenizer = ""
  setup = builder.build_model(config)
  rng = jax.random.key(3)
  inputs = builder.init_inputs(setup.model)
  whole = jax.jit(lambda r: setup.model.init(r, *inputs)["params"])(rng)  # as init_params was
  whole = jax.tree.map(np.asarray, whole)
  state = hf_io.grow_vocabulary(hf_io.read_state_dict(small_checkpoint), whole)
  expected = hf_io.params_from_state_dict(state, whole)
  assert hf_io.initialised_leaves(hf_io.read_state_dict(small_checkpoint), whole) == computed
  caplog.set_level("INFO")
  params = builder.init_params(setup, rng)
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == "compiling and running the parameter init ..."
  assert lines[-1].startswith("... parameters initialised in ")
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for ours, reference in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert isinstance(ours, np.ndarray) and ours.dtype == reference.dtype
    np.testing.assert_array_equal(ours, reference)


def test_unusable_checkpoints_give_clear_errors(tmp_path):
  with pytest.raises(hf_io.CheckpointError, match="does not exist"):
    hf_io.resolve_checkpoint(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(hf_io.CheckpointError, match="no config.json"):
    hf_io.resolve_checkpoint(str(tmp_path / "empty"))
  (tmp_path / "empty" / "config.json").write_text("{}")
  with pytest.raises(hf_io.CheckpointError, match="has none of model.safetensors"):
    hf_io.read_state_dict(tmp_path / "empty")
  with pytest.raises(hf_io.CheckpointError, match="neither a local directory nor"):
    hf_io.resolve_checkpoint("no-such-user/no-such-model")  # offline in tests


def test_bfloat16_compute_stays_close_to_float32():
  source = hf_io.embedded_checkpoint_dir()
  config, _ = hf_io.load_config(source)
  ids, mask, types = _batch_with_padding(config.vocab_size)
  model32 = bert.BertModel(config)
  model16 = bert.BertModel(config, dtype=jnp.bfloat16)
  template = jax.eval_shape(lambda: model32.init(jax.random.key(0), ids, mask))["params"]
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  params = hf_io.params_from_state_dict(hf_io.read_state_dict(source), {"bert": template})["bert"]
  _, pooled32 = model32.apply({"params": params}, ids, mask, types)
  seq16, pooled16 = model16.apply({"params": params}, ids, mask, types)
  assert seq16.dtype == jnp.bfloat16
  # measured 2.8e-3 (pooled values up to 0.22; bfloat16's epsilon is 7.8e-3) on 2-core EPYC; ~10x
  assert np.abs(np.asarray(pooled16, np.float32) - np.asarray(pooled32)).max() < 0.03


def test_hash_dropout_is_an_unbiased_independent_bernoulli_mask():
  layer = bert.Dropout(0.1)
  x = jnp.ones((1000, 1000))
  apply = jax.jit(lambda key: layer.apply({}, x, deterministic=False, rngs={"dropout": key}))
  a, b = np.asarray(apply(jax.random.key(0))), np.asarray(apply(jax.random.key(1)))
  keep = a != 0
  n = keep.size
  assert abs(keep.mean() - 0.9) < 4 * np.sqrt(0.09 / n)  # 4 sigma
  # inverted dropout scaling: float32's 1 / 0.9 is 4.8e-8 off (measured), within one ulp anywhere
  np.testing.assert_allclose(a[keep], 1 / 0.9, rtol=2e-7)
  assert abs(a.mean() - 1.0) < 4 * np.sqrt(0.09 / n) / 0.9
  flat = keep.ravel().astype(float)
  for lag in (1, 2, 1000):  # neighbours and the next row
    assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.01
  assert abs(np.corrcoef(flat, (b != 0).ravel())[0, 1]) < 0.01  # another key: independent
  np.testing.assert_array_equal(apply(jax.random.key(0)), a)  # same key: same mask
  assert layer.apply({}, x, deterministic=True) is x
  assert bert.Dropout(0.0).apply({}, x, deterministic=False) is x


def test_attention_dropout_drops_the_normalised_probabilities():
  """Our attention divides by the softmax denominator after the context matmul and drops the
  unnormalised weights; that must equal HF's dropout on the normalised probabilities."""
  config = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64,
                           attention_probs_dropout_prob=0.5)
  attention = bert.BertSelfAttention(config)
  x = jax.random.normal(jax.random.key(0), (2, 7, 32))
  bias = jnp.where(jnp.arange(7) < 5, 0.0, -1e9)[None, None, None, :].repeat(2, 0)  # 2 padded
  params = attention.init(jax.random.key(1), x, bias, deterministic=True)["params"]
  masks = []

  def keep_dropout_mask(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, bert.Dropout):
      masks.append(out != 0)
    return out

  with nn.intercept_methods(keep_dropout_mask):
    ours = attention.apply({"params": params}, x, bias, deterministic=False,
                           rngs={"dropout": jax.random.key(2)})
  (keep,) = masks
  assert 0.3 < float(keep[..., :5].mean()) < 0.7  # the mask really drops

  def heads(name):
    y = x @ params[name]["kernel"] + params[name]["bias"]
    return y.reshape(2, 7, 4, 8).transpose(0, 2, 1, 3)

  probs = jax.nn.softmax(heads("query") @ heads("key").swapaxes(-1, -2) / np.sqrt(8) + bias)
  context = (jnp.where(keep, probs / 0.5, 0) @ heads("value")).transpose(0, 2, 1, 3)
  # measured 1.5e-8 max abs (values up to 0.19) on 2-core EPYC (AVX2); ~10x
  np.testing.assert_allclose(np.asarray(ours), np.asarray(context.reshape(2, 7, 32)),
                             atol=2e-7, rtol=0)


def test_inference_activation_is_fenced_without_changing_a_value():
  """The eval forward fences the activation out of XLA:CPU's GEMM fusions with identity clamps:
  they must change no value (infinities and NaN included) and XLA must keep them (if a later XLA
  folds them away, the eval speed-up of NOTES attempt 20 is gone)."""
  special = jnp.array([-jnp.inf, -1e30, -3.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, 1e30, jnp.inf,
                       jnp.nan])
  bits = lambda a: np.asarray(a).view(np.uint32)  # noqa: E731  (-0.0 and NaN's payload too)
  np.testing.assert_array_equal(bits(jax.jit(bert._fenced)(special)), bits(special))
  config = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64)
  layer = bert.BertIntermediate(config)
  x = 3 * jax.random.normal(jax.random.key(0), (2, 7, 32))
  params = layer.init(jax.random.key(1), x, deterministic=True)["params"]

  def apply(deterministic):
    return jax.jit(lambda p, x: layer.apply({"params": p}, x, deterministic=deterministic))

  # measured bit-equal on 2-core EPYC; two programs, which another CPU's XLA may fuse otherwise:
  # 1e-6 is ~16 ulp of these values (up to 0.9)
  np.testing.assert_allclose(np.asarray(apply(True)(params, x)),
                             np.asarray(apply(False)(params, x)), atol=1e-6, rtol=0)
  assert apply(True).lower(params, x).compile().as_text().count(" clamp(") >= 2
  assert " clamp(" not in apply(False).lower(params, x).compile().as_text()


@pytest.mark.parametrize("impl", bert.DROPOUT_IMPLS)
def test_an_examples_dropout_mask_does_not_depend_on_its_batch(impl):
  """Masks are a function of (key, example index, element): example 7 draws the same mask in
  a batch of 8 at row 7 and in a batch of 2 at row 0, so any split of a batch over devices and
  micro-batches drops the same activations."""
  layer = bert.Dropout(0.3, impl)
  x = jnp.ones((8, 5, 16))
  apply = jax.jit(lambda x, ids: layer.apply({}, x, deterministic=False, example_ids=ids,
                                             rngs={"dropout": jax.random.key(0)}))
  whole = np.asarray(apply(x, jnp.arange(8)))
  part = np.asarray(apply(x[:2], jnp.array([7, 3])))
  np.testing.assert_array_equal(part[0], whole[7])
  np.testing.assert_array_equal(part[1], whole[3])
  keep = whole != 0
  assert 0.6 < keep.mean() < 0.8  # rate 0.3
  assert not (keep[0] == keep[1]).all()  # examples draw their own masks
  other_key = layer.apply({}, x, deterministic=False, example_ids=jnp.arange(8),
                          rngs={"dropout": jax.random.key(1)})
  assert not (np.asarray(other_key) == whole).all()


def test_threefry_dropout_is_an_unbiased_bernoulli_mask():
  layer = bert.Dropout(0.1, "threefry")
  x = jnp.ones((1000, 1000))
  out = np.asarray(jax.jit(lambda key: layer.apply({}, x, deterministic=False,
                                                    rngs={"dropout": key}))(jax.random.key(0)))
  keep = out != 0
  assert abs(keep.mean() - 0.9) < 4 * np.sqrt(0.09 / keep.size)
  np.testing.assert_allclose(out[keep], 1 / 0.9, rtol=2e-7)  # as the hash mask's: 4.8e-8 measured


def _grads_and_residual_bytes(remat: bool, length: int = 256):
  """A 3-layer model's gradients (dropout on) and the bytes JAX saves for its backward pass."""
  import contextlib
  import io
  import re
  import jax.ad_checkpoint
  config = bert.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=3,
                           num_attention_heads=4, intermediate_size=256, remat=remat)
  model = tasks.get("classification").build_model(config, 2, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  ids = jax.random.randint(jax.random.key(0), (4, length), 1, 64)
  mask = jnp.ones_like(ids)
  params = jax.jit(model.init)(jax.random.key(1), ids[:1, :8], mask[:1, :8])["params"]

  def loss(params):
    logits = model.apply({"params": params}, ids, mask, deterministic=False,
                         rngs={"dropout": jax.random.key(2)})
    return jax.nn.log_softmax(logits)[:, 0].sum()

  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    jax.ad_checkpoint.print_saved_residuals(loss, params)
  sizes = {"f32": 4, "u32": 4, "i32": 4, "bool": 1}
  saved = sum(sizes[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
              for dtype, dims in re.findall(r"^(\w+)\[([\d,]*)\]", printed.getvalue(), re.M))
  return jax.jit(jax.grad(loss))(params), saved


def test_remat_keeps_only_layer_inputs_for_the_same_gradients():
  """What remat promises on any backend: the backward pass keeps each layer's inputs instead of
  its activations (here the [4, heads, 256, 256] attention weights), and recomputes the rest to
  the same gradients. (XLA:CPU then folds the recomputation back in: no memory is saved on the
  CPU; GPU and TPU compilers keep it.)"""
  plain, plain_bytes = _grads_and_residual_bytes(False)
  rematted, remat_bytes = _grads_and_residual_bytes(True)
  # measured bit-equal on the CPU (XLA:CPU folds the recomputation back in); the tolerance is for
  # the compilers that recompute, in another order
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted)):  # dropout included
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert remat_bytes < 0.1 * plain_bytes  # measured: 2.6 MB instead of 47.8 MB


def test_the_inference_fence_is_a_cpu_only_trick(monkeypatch):
  config = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64)
  layer = bert.BertIntermediate(config)
  x = jax.random.normal(jax.random.key(0), (2, 7, 32))
  params = layer.init(jax.random.key(1), x, deterministic=True)["params"]
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  hlo = jax.jit(lambda p, x: layer.apply({"params": p}, x, deterministic=True)).lower(
      params, x).as_text()
  assert "clamp" not in hlo


@pytest.mark.parametrize("attention_dropout", [0.0, 0.1])
def test_fused_attention_computes_ours(attention_dropout, monkeypatch):
  """`model.attention=fused` (jax.nn.dot_product_attention; cuDNN's kernel on a GPU) gives our
  attention's outputs and gradients, on padded rows and with [CLS]-only queries (the pooled
  head's last layer); with attention dropout in training ours runs, the only one that has it."""
  config = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64,
                           attention_probs_dropout_prob=attention_dropout)
  ids, mask, types = (np.asarray(a) % 64 for a in _batch_with_padding(2000))
  models = {name: tasks.get("classification").build_model(
      dataclasses.replace(config, attention=name), 3, dtype=jnp.float32,
      param_dtype=jnp.float32, classifier_dropout=None) for name in bert.ATTENTIONS}
  params = models["ours"].init(jax.random.key(0), ids, mask, types)["params"]
  example_ids = jnp.arange(len(ids))

  def loss(params, model, deterministic):
    logits = model.apply({"params": params}, ids, mask, types, deterministic=deterministic,
                         example_ids=example_ids, rngs={"dropout": jax.random.key(1)})
    return jnp.sum(jnp.sin(logits))

  calls = []
  fused_attention = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *args, **kwargs: calls.append(1) or fused_attention(*args, **kwargs))
  for deterministic in (True, False):
    calls.clear()
    run = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
    (ours, ours_grads), (fused, fused_grads) = (run(params, models[name], deterministic)
                                                for name in bert.ATTENTIONS)
    # measured on the AVX2 EPYC: the loss 2.0e-7 relative, the gradients 6.0e-8 absolute apart
    # (the same maths in another order); bit-equal where ours runs for both
    np.testing.assert_allclose(fused, ours, rtol=2e-6)
    for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(ours_grads)):
      np.testing.assert_allclose(a, b, rtol=0, atol=5e-7)
    fused_runs = deterministic or attention_dropout == 0
    assert bert.fused_attention_applies(models["fused"].config, deterministic) == fused_runs
    assert len(calls) == (2 if fused_runs else 0)  # one per layer, traced once
