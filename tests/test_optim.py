"""Weight-decay mask, learning-rate schedule and the optimizer against a hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import default
from research import optim, tasks
from research.models import bert


def _params():
  config = bert.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=16)
  model = tasks.get("classification").build_model(config, 2, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  ids = jnp.ones((1, 4), jnp.int32)
  return jax.jit(model.init)(jax.random.key(0), ids, ids)["params"]


def test_default_decay_mask_is_exactly_kernels_and_embeddings():
  params = _params()
  mask = optim.regex_mask(params, default.get_config().optimizer.weight_decay_pattern)
  names = optim.param_names(params)
  decayed = {n for n, m in traverse_util.flatten_dict(mask, sep="/").items() if m}
  assert decayed == {n for n in names if n.endswith(("/kernel", "/embedding"))}
  # Spelled out, so that a pattern that also caught LayerNorm or biases would fail:
  assert "bert/embeddings/word_embeddings/embedding" in decayed
  assert "bert/encoder/layer/1/attention/self/query/kernel" in decayed
  assert "classifier/kernel" in decayed
  for name in ("bert/embeddings/LayerNorm/scale", "bert/embeddings/LayerNorm/bias",
               "bert/encoder/layer/0/output/LayerNorm/scale",
               "bert/encoder/layer/0/attention/self/query/bias", "classifier/bias"):
    assert name in names and name not in decayed
  assert len(decayed) == 4 + 2 * 6 + 1  # 3 embeddings + pooler; 6 dense per layer; head


def _opt_config(**overrides):
  c = default.get_config().optimizer
  c.update(overrides)
  return c


def test_linear_warmup_then_linear_decay():
  schedule = optim.learning_rate_schedule(
      _opt_config(learning_rate=1e-3, warmup_ratio=0.1, warmup_steps=0), 100)
  lrs = np.array([schedule(s) for s in range(101)])
  np.testing.assert_allclose(lrs[:11], np.linspace(0, 1e-3, 11), rtol=1e-5, atol=1e-12)
  np.testing.assert_allclose(lrs[10:], np.linspace(1e-3, 0, 91), rtol=1e-5, atol=1e-12)
  steps_schedule = optim.learning_rate_schedule(
      _opt_config(learning_rate=1e-3, warmup_ratio=0.0, warmup_steps=10), 100)
  np.testing.assert_allclose([steps_schedule(s) for s in range(101)], lrs, rtol=1e-6,
                             atol=1e-12)


def test_warmup_steps_and_ratio_together_is_an_error():
  with pytest.raises(ValueError, match="not both"):
    optim.learning_rate_schedule(_opt_config(warmup_ratio=0.1, warmup_steps=5), 100)


def test_adamw_update_matches_hand_computation():
  """One step of clip -> AdamW with masked decay, against the formulas."""
  params = {"w": {"kernel": jnp.array([1.0, -2.0])}, "b": {"bias": jnp.array([0.5])}}
  grads = {"w": {"kernel": jnp.array([3.0, 4.0])}, "b": {"bias": jnp.array([0.0])}}
  cfg = _opt_config(learning_rate=0.1, schedule="constant", warmup_ratio=0.0,
                    weight_decay=0.5, weight_decay_pattern=".*/kernel$", grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(cfg, params, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  g = np.array([3.0, 4.0]) / 5.0  # clipped to global norm 1
  m, v = 0.1 * g / 0.1, 0.001 * g * g / 0.001  # bias-corrected first and second moments
  expected = -0.1 * (m / (np.sqrt(v) + 1e-8) + 0.5 * np.array([1.0, -2.0]))
  np.testing.assert_allclose(updates["w"]["kernel"], expected, atol=1e-6)  # float32 rounding
  np.testing.assert_allclose(updates["b"]["bias"], [0.0], atol=1e-12)  # no grad, no decay


def test_pattern_matching_nothing_is_an_error():
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.make_optimizer(_opt_config(weight_decay_pattern=".*/nothing$"), _params(), 10)
