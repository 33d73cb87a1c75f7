"""ModernBERT in Flax Linen, parameter for parameter Hugging Face's `ModernBertModel`.

Module names mirror the state-dict keys of transformers' `modernbert` models
(`model/layers/0/attn/Wqkv` is `model.layers.0.attn.Wqkv`), as `bert.py` does for BERT, so that
`hf_io`'s mechanical renaming loads and exports them.

What differs from BERT (Warner et al. 2024): rotary position embeddings instead of a position
table, with one base for the global layers and another for the local ones; every
`global_attn_every_n_layers`-th layer attends globally, the others within a window of
`local_attention` tokens (a key `j` is seen from query `i` when |i - j| <= local_attention // 2,
transformers' bidirectional sliding-window mask); pre-LayerNorm blocks (none before the first
layer's attention) and a final LayerNorm; a GeGLU feed-forward (`Wi` gives input and gate,
`act(input) * gate`); one fused QKV projection; no biases and no LayerNorm biases where the
config says so; no token types. Its task heads put `ModernBertPredictionHead` (dense, activation,
LayerNorm) under the classifier, after pooling the first token or the mean over real tokens
(`classifier_pooling`), and the masked-LM decoder is tied to the token embeddings.

Positions are 0..S-1 whatever the padding, as in transformers: rotary attention depends on
relative positions only, so left padding does not change the real tokens' outputs. Padding is
handled by the attention mask (transformers 5 does the same outside FlashAttention's unpadded
path); the outputs on real tokens are the same either way.

Dropout is `bert.Dropout` (masks a function of the example, not of the batch it sits in).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import mkl_gemm
from research.models.bert import (ACTIVATIONS, DROPOUT_IMPLS, Dropout, TiedDecoder, dense,
                                  dense_on_tokens, entity_features)

Dtype = Any
PREFIX = "model"  # the encoder's state-dict prefix (`base_model_prefix`)
# The task heads' top-level parameter names (transformers' ModernBertFor* models).
HEADS = ("head", "classifier", "decoder")
GLOBAL, LOCAL = "full_attention", "sliding_attention"  # transformers' layer types


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
  """Architecture hyper-parameters; field names and defaults follow
  `transformers.ModernBertConfig` (ModernBERT-base)."""

  vocab_size: int = 50368
  hidden_size: int = 768
  intermediate_size: int = 1152
  num_hidden_layers: int = 22
  num_attention_heads: int = 12
  hidden_activation: str = "gelu"
  max_position_embeddings: int = 8192
  initializer_range: float = 0.02
  initializer_cutoff_factor: float = 2.0
  norm_eps: float = 1e-5
  norm_bias: bool = False
  pad_token_id: int = 50283
  attention_bias: bool = False
  attention_dropout: float = 0.0
  layer_types: tuple[str, ...] = ()  # () : every third layer global, from layer 0
  global_rope_theta: float = 160_000.0
  local_rope_theta: float = 10_000.0
  local_attention: int = 128
  embedding_dropout: float = 0.0
  mlp_bias: bool = False
  mlp_dropout: float = 0.0
  decoder_bias: bool = True
  classifier_pooling: str = "cls"
  classifier_dropout: float = 0.0
  classifier_bias: bool = False
  classifier_activation: str = "gelu"
  model_type: str = "modernbert"
  # Ours, not Hugging Face's (export leaves them out):
  dropout_impl: str = "hash"
  gemm: str = "xla"
  remat: bool = False  # recompute each layer's activations in the backward pass (as BERT's)

  def __post_init__(self):
    if not self.layer_types:
      object.__setattr__(self, "layer_types", _layer_types(self.num_hidden_layers, 3))
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    checks = [
        (self.hidden_size % self.num_attention_heads == 0,
         f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
         f"{self.num_attention_heads}"),
        (len(self.layer_types) == self.num_hidden_layers,
         f"layer_types names {len(self.layer_types)} layers, num_hidden_layers is "
         f"{self.num_hidden_layers}"),
        (set(self.layer_types) <= {GLOBAL, LOCAL},
         f"layer_types {sorted(set(self.layer_types))}: each is {GLOBAL!r} or {LOCAL!r}"),
        (self.classifier_pooling in ("cls", "mean"),
         f"classifier_pooling {self.classifier_pooling!r} is not 'cls' or 'mean'"),
        (self.dropout_impl in DROPOUT_IMPLS,
         f"dropout_impl {self.dropout_impl!r} is not one of {DROPOUT_IMPLS}"),
        (self.gemm in mkl_gemm.LIBRARIES, f"gemm {self.gemm!r} is not one of "
         f"{mkl_gemm.LIBRARIES}"),
    ]
    checks += [(act in ACTIVATIONS, f"{name} {act!r} is not one of {sorted(ACTIVATIONS)}")
               for name, act in (("hidden_activation", self.hidden_activation),
                                 ("classifier_activation", self.classifier_activation))]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ModernBertConfig":
    """From a `config.json` dict: transformers 5's `layer_types` and `rope_parameters`, or the
    older `global_attn_every_n_layers`, `global_rope_theta` and `local_rope_theta` that
    checkpoints on the hub still carry. Only the default (unscaled) rotary embedding loads."""
    values = dict(values)
    if values.get("model_type", "modernbert") != "modernbert":
      raise ValueError(f"model_type {values['model_type']!r} is not 'modernbert'")
    rope = values.pop("rope_parameters", None) or {}
    for layer_type, field in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
      params = rope.get(layer_type) or {}
      if params.get("rope_type", "default") != "default":
        raise ValueError(f"rope_parameters[{layer_type!r}] is of rope_type "
                         f"{params['rope_type']!r}; only 'default' is supported")
      if "rope_theta" in params:
        values[field] = params["rope_theta"]
    if values.get("rope_scaling"):
      raise ValueError(f"rope_scaling {values['rope_scaling']!r} is not supported")
    if not values.get("layer_types"):
      values["layer_types"] = _layer_types(values.get("num_hidden_layers", cls.num_hidden_layers),
                                           values.get("global_attn_every_n_layers", 3))
    if not values.get("tie_word_embeddings", True):
      raise ValueError("tie_word_embeddings false: an untied masked-LM decoder is not supported")
    names = {f.name for f in dataclasses.fields(cls)} - set(OWN_FIELDS)
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})

  def to_dict(self) -> dict[str, Any]:
    """The Hugging Face fields (what a `config.json` holds)."""
    values = {k: v for k, v in dataclasses.asdict(self).items() if k not in OWN_FIELDS}
    values["layer_types"] = list(self.layer_types)
    for field in ("global_rope_theta", "local_rope_theta"):
      del values[field]
    values["rope_parameters"] = {
        GLOBAL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
        LOCAL: {"rope_type": "default", "rope_theta": self.local_rope_theta}}
    return values

  def with_run_options(self, *, hidden_dropout: float | None, attention_dropout: float | None,
                       dropout_impl: str, gemm: str, remat: bool = False,
                       attention: str = "ours") -> "ModernBertConfig":
    """This architecture with a run's settings. `hidden_dropout` (None: the checkpoint's) is
    the embeddings' and the feed-forward's dropout, `attention_dropout` the attention
    probabilities' and output's, as transformers names them. The fused attention core is BERT's
    option only, for now."""
    if attention != "ours":
      raise ValueError(f"attention {attention!r}: modernbert has its own attention only")
    rates = {}
    if hidden_dropout is not None:
      rates.update(embedding_dropout=hidden_dropout, mlp_dropout=hidden_dropout)
    if attention_dropout is not None:
      rates.update(attention_dropout=attention_dropout)
    return dataclasses.replace(self, **rates, dropout_impl=dropout_impl, gemm=gemm, remat=remat)

  def with_layers(self, layers: int) -> "ModernBertConfig":
    """This architecture with only its first `layers` layers, each global or local as before."""
    return dataclasses.replace(self, num_hidden_layers=layers,
                               layer_types=self.layer_types[:layers])

  @property
  def prefix(self) -> str:
    return PREFIX

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def max_length(self) -> int:
    return self.max_position_embeddings

  @property
  def sliding_window(self) -> int:
    """How far a local layer sees on either side (transformers' `sliding_window`)."""
    return self.local_attention // 2


OWN_FIELDS = ("dropout_impl", "gemm", "remat")


def _layer_types(layers: int, every: int) -> tuple[str, ...]:
  return tuple(GLOBAL if i % every == 0 else LOCAL for i in range(layers))


def _init(config: ModernBertConfig, std: float):
  """transformers' init: a normal truncated at `initializer_cutoff_factor` deviations."""
  cutoff = config.initializer_cutoff_factor
  return nn.initializers.truncated_normal(std, lower=-cutoff, upper=cutoff)


def _stds(config: ModernBertConfig) -> dict[str, float]:
  return {"in": config.initializer_range,
          "out": config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers),
          "final_out": config.hidden_size ** -0.5}


def _linear(module: nn.Module, x, features: int, use_bias: bool, init: str, name: str):
  """A dense layer of `module` over x's tokens, initialised as transformers does (`_stds`)."""
  cfg = module.config
  layer = dense(cfg, features, use_bias=use_bias, kernel_init=_init(cfg, _stds(cfg)[init]),
                dtype=module.dtype, param_dtype=module.param_dtype, name=name)
  return dense_on_tokens(layer, x)


def _layer_norm(module: nn.Module, name: str) -> nn.LayerNorm:
  """A LayerNorm of `module` (with a bias where the config says so)."""
  cfg = module.config
  return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.norm_bias, dtype=module.dtype,
                      param_dtype=module.param_dtype, name=name)


def rotary_tables(config: ModernBertConfig, length: int, theta: float):
  """cos and sin [S, head_dim] of positions 0..S-1, computed in float32 as transformers does
  (inverse frequencies theta^(-2i/d), each repeated for the two halves)."""
  d = config.head_dim
  inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
  freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq)[None]
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def _rotate(x, cos, sin):
  """x [B, heads, S, d] rotated by position (transformers' `apply_rotary_pos_emb`)."""
  half = x.shape[-1] // 2
  x = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


class ModernBertEmbeddings(nn.Module):
  config: ModernBertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, *, deterministic: bool, example_ids=None):
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=_init(cfg, _stds(cfg)["in"]),
                 dtype=self.dtype, param_dtype=self.param_dtype, name="tok_embeddings")(input_ids)
    x = _layer_norm(self, "norm")(x)
    return Dropout(cfg.embedding_dropout, cfg.dropout_impl)(
        x, deterministic=deterministic, example_ids=example_ids)


# Queries per block of the attention of long inputs (`attend`): a block's scores are
# [B, heads, 512, keys] instead of the whole [B, heads, S, S].
QUERY_BLOCK = 512


def _allowed(keys, query_positions, key_positions, window: int | None):
  """Which keys ([B, 1, Q, K] bool) each query may see: real keys (`keys` [B, K]), within
  `window` positions on either side in a local layer."""
  allowed = keys[:, None, None, :]
  if window is not None:
    distance = jnp.abs(query_positions[:, None] - key_positions[None, :])
    allowed = allowed & (distance <= window)[None, None]
  return allowed


def _weights(query, key, allowed):
  """softmax(q k^T) in float32 over the allowed keys; a row that allows none (a padding query
  far from any real token) is uniform, never NaN."""
  scores = jnp.matmul(query, key.swapaxes(-1, -2)).astype(jnp.float32)
  return jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), axis=-1)


def attend(query, key, value, keys, window: int | None, block: int | None = None):
  """The attention context [B, heads, S, d] of query, key, value [B, heads, S, d] (no
  dropout), by blocks of `block` queries when S is a multiple of `block` larger than it.

  A block sees all keys in a global layer and only the keys within `window` of it in a local
  one (its block plus `window` on either side), and its scores are recomputed in the backward
  pass (`jax.checkpoint` inside the loop, which XLA cannot fold back as it folds a layer's
  `remat`): the memory of attention grows as S * block instead of S^2, and a local layer's
  compute as S * (block + 2 * window). Each row's softmax is over the same keys as the whole
  matrix's, so the result is the same up to float rounding. `block` None: `QUERY_BLOCK`."""
  block = block or QUERY_BLOCK
  length = query.shape[2]
  positions = jnp.arange(length)
  if length <= block or length % block:
    weights = _weights(query, key, _allowed(keys, positions, positions, window))
    return jnp.matmul(weights.astype(value.dtype), value)
  span = length if window is None else block + 2 * window
  if window is not None:  # keys padded by the window on both sides, as masked keys
    pad = [(0, 0), (0, 0), (window, window), (0, 0)]
    key, value = jnp.pad(key, pad), jnp.pad(value, pad)
    keys = jnp.pad(keys, [(0, 0), (window, window)])

  @jax.checkpoint
  def one_block(query_block, start):
    first = 0 if window is None else start  # the first key seen, in padded key positions
    block_keys = jax.lax.dynamic_slice_in_dim(keys, first, span, axis=1)
    block_key = jax.lax.dynamic_slice_in_dim(key, first, span, axis=2)
    block_value = jax.lax.dynamic_slice_in_dim(value, first, span, axis=2)
    key_positions = first + jnp.arange(span) - (0 if window is None else window)
    allowed = _allowed(block_keys, start + jnp.arange(block), key_positions, window)
    weights = _weights(query_block, block_key, allowed)
    return jnp.matmul(weights.astype(block_value.dtype), block_value)

  batch, heads, _, d = query.shape
  blocks = query.reshape(batch, heads, length // block, block, d).transpose(2, 0, 1, 3, 4)
  starts = jnp.arange(0, length, block)
  context = jax.lax.map(lambda args: one_block(*args), (blocks, starts))  # [n, B, h, Q, d]
  return context.transpose(1, 2, 0, 3, 4).reshape(batch, heads, length, d)


class ModernBertAttention(nn.Module):
  """Fused QKV, rotary queries and keys, softmax in float32 over the real keys (within
  `window` positions in a local layer). Without attention dropout (ModernBERT's default, and
  always in evaluation), long inputs are attended by blocks of queries (`attend`)."""

  config: ModernBertConfig
  window: int | None = None  # None: a global layer
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, keys, rotary, *, deterministic: bool, example_ids=None):
    cfg = self.config
    heads, d = cfg.num_attention_heads, cfg.head_dim
    qkv = _linear(self, x, 3 * cfg.hidden_size, cfg.attention_bias, "in", "Wqkv")
    qkv = qkv.reshape(qkv.shape[:-1] + (3, heads, d)).transpose(2, 0, 3, 1, 4)  # 3,B,h,S,d
    cos, sin = rotary
    query = (_rotate(qkv[0], cos, sin) * (d ** -0.5)).astype(self.dtype)
    key = _rotate(qkv[1], cos, sin).astype(self.dtype)
    if deterministic or cfg.attention_dropout == 0.0:
      context = attend(query, key, qkv[2], keys, self.window)
    else:  # dropout on the whole weight matrix, each example's mask its own (`Dropout`)
      positions = jnp.arange(x.shape[1])
      weights = _weights(query, key, _allowed(keys, positions, positions, self.window))
      weights = Dropout(cfg.attention_dropout, cfg.dropout_impl)(
          weights, deterministic=deterministic, example_ids=example_ids)
      context = jnp.matmul(weights.astype(self.dtype), qkv[2])
    context = context.transpose(0, 2, 1, 3).reshape(x.shape[:-1] + (cfg.hidden_size,))
    out = _linear(self, context, cfg.hidden_size, cfg.attention_bias, "out", "Wo")
    return Dropout(cfg.attention_dropout, cfg.dropout_impl)(
        out, deterministic=deterministic, example_ids=example_ids)


class ModernBertMLP(nn.Module):
  """GeGLU: `Wi` gives [input, gate]; act(input) * gate -> dropout -> `Wo`."""

  config: ModernBertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool, example_ids=None):
    cfg = self.config
    h = _linear(self, x, 2 * cfg.intermediate_size, cfg.mlp_bias, "in", "Wi")
    inputs, gate = jnp.split(h, 2, axis=-1)
    h = ACTIVATIONS[cfg.hidden_activation](inputs) * gate
    h = Dropout(cfg.mlp_dropout, cfg.dropout_impl)(h, deterministic=deterministic,
                                                    example_ids=example_ids)
    return _linear(self, h, cfg.hidden_size, cfg.mlp_bias, "out", "Wo")


class ModernBertEncoderLayer(nn.Module):
  """x + attn(attn_norm(x)), then + mlp(mlp_norm(.)); layer 0 has no `attn_norm` (the
  embeddings' norm precedes it). Its arguments are positional so that `nn.remat` can keep
  `deterministic` static."""

  config: ModernBertConfig
  index: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, keys, rotary, example_ids, deterministic: bool):
    cfg = self.config
    kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    window = cfg.sliding_window if cfg.layer_types[self.index] == LOCAL else None
    h = x if self.index == 0 else _layer_norm(self, "attn_norm")(x)
    x = x + ModernBertAttention(**kw, window=window, name="attn")(
        h, keys, rotary, deterministic=deterministic, example_ids=example_ids)
    h = _layer_norm(self, "mlp_norm")(x)
    return x + ModernBertMLP(**kw, name="mlp")(h, deterministic=deterministic,
                                               example_ids=example_ids)


class ModernBertLayers(nn.Module):
  """The `layers` list; children are named "0", "1", ... as in the state dict. With
  `config.remat`, training keeps each layer's input only and recomputes the rest in the
  backward pass (`bert.BertLayerStack` says when that saves memory)."""

  config: ModernBertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, *, deterministic: bool, example_ids=None):
    cfg = self.config
    length = x.shape[1]
    keys = attention_mask > 0  # [B, S]: padding keys are never seen
    tables = {GLOBAL: rotary_tables(cfg, length, cfg.global_rope_theta),
              LOCAL: rotary_tables(cfg, length, cfg.local_rope_theta)}
    layer = ModernBertEncoderLayer
    if cfg.remat and not deterministic:
      layer = nn.remat(ModernBertEncoderLayer, static_argnums=(5,))  # self is 0
    for i, kind in enumerate(cfg.layer_types):
      x = layer(cfg, i, self.dtype, self.param_dtype, name=str(i))(
          x, keys, tables[kind], example_ids, deterministic)
    return x


class ModernBertModel(nn.Module):
  """The encoder: embeddings, layers, final norm -> the sequence output [B, S, H]."""

  config: ModernBertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, *, deterministic: bool = True,
               example_ids=None):
    cfg = self.config
    if input_ids.shape[-1] > cfg.max_length:
      raise ValueError(f"input of {input_ids.shape[-1]} tokens is longer than the model's "
                       f"max_position_embeddings {cfg.max_position_embeddings}")
    kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    x = ModernBertEmbeddings(**kw, name="embeddings")(input_ids, deterministic=deterministic,
                                                      example_ids=example_ids)
    x = ModernBertLayers(**kw, name="layers")(x, attention_mask, deterministic=deterministic,
                                              example_ids=example_ids)
    return _layer_norm(self, "final_norm")(x)


class ModernBertPredictionHead(nn.Module):
  """dense -> activation -> LayerNorm, under every task head (transformers' `head`)."""

  config: ModernBertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    x = _linear(self, x, cfg.hidden_size, cfg.classifier_bias, "out", "dense")
    return _layer_norm(self, "norm")(ACTIVATIONS[cfg.classifier_activation](x))


def _classify(module: nn.Module, features, num_labels: int, rate: float, deterministic: bool,
              example_ids):
  """head -> dropout -> classifier: what every ModernBertFor* head but the masked LM does."""
  cfg = module.config
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  x = ModernBertPredictionHead(cfg, **kw, name="head")(features)
  x = Dropout(rate, cfg.dropout_impl)(x, deterministic=deterministic, example_ids=example_ids)
  return _linear(module, x, num_labels, True, "final_out", "classifier")


def _rate(module: nn.Module) -> float:
  return (module.config.classifier_dropout if module.classifier_dropout is None
          else module.classifier_dropout)


def _sequence_logits(module: nn.Module, input_ids, attention_mask, deterministic: bool,
                     example_ids):
  """`ModernBertForSequenceClassification`'s logits, with `module`'s parameters."""
  sequence = ModernBertModel(module.config, module.dtype, module.param_dtype, name=PREFIX)(
      input_ids, attention_mask, deterministic=deterministic, example_ids=example_ids)
  if module.config.classifier_pooling == "cls":
    pooled = sequence[:, 0]
  else:
    real = attention_mask.astype(sequence.dtype)[..., None]
    pooled = (sequence * real).sum(axis=1) / real.sum(axis=1)
  return _classify(module, pooled, module.num_labels, _rate(module), deterministic, example_ids)


class ModernBertForSequenceClassification(nn.Module):
  """The first token's output (`classifier_pooling="cls"`) or the mean over real tokens
  (`"mean"`) -> head -> dropout -> classifier; one output per label, or one for regression."""

  config: ModernBertConfig
  num_labels: int
  classifier_dropout: float | None = None  # None: the config's
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    return _sequence_logits(self, input_ids, attention_mask, deterministic,
                            example_ids).astype(jnp.float32)


class ModernBertForRelationClassification(nn.Module):
  """A relation between two marked entities, as `bert.BertForRelationClassification` reads it:
  `representation="cls"` is `ModernBertForSequenceClassification` (same parameters); the
  entities' start states or token means ([B, 2H], `bert.entity_features`) -> dropout -> a dense
  `classifier` (transformers has no such head: the export is the bare encoder plus it)."""

  config: ModernBertConfig
  num_labels: int
  representation: str = "entity_start"
  start_offset: int = 1
  classifier_dropout: float | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_extra_inputs = ([[1, 2, 4, 5]],)  # builder.init_inputs: one row's entity spans

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids, entity_spans, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    if self.representation == "cls":
      return _sequence_logits(self, input_ids, attention_mask, deterministic,
                              example_ids).astype(jnp.float32)
    sequence = ModernBertModel(cfg, self.dtype, self.param_dtype, name=PREFIX)(
        input_ids, attention_mask, deterministic=deterministic, example_ids=example_ids)
    features = entity_features(sequence, entity_spans, self.representation, self.start_offset)
    features = Dropout(_rate(self), cfg.dropout_impl)(features, deterministic=deterministic,
                                                      example_ids=example_ids)
    return _linear(self, features, self.num_labels, True, "final_out",
                   "classifier").astype(jnp.float32)


def _token_logits(module: nn.Module, num_labels: int, input_ids, attention_mask,
                  deterministic: bool, example_ids):
  """Every token's output -> head -> dropout -> classifier, with `module`'s parameters."""
  sequence = ModernBertModel(module.config, module.dtype, module.param_dtype, name=PREFIX)(
      input_ids, attention_mask, deterministic=deterministic, example_ids=example_ids)
  return _classify(module, sequence, num_labels, _rate(module), deterministic,
                   example_ids).astype(jnp.float32)


class ModernBertForTokenClassification(nn.Module):
  """Every token's output -> head -> dropout -> classifier."""

  config: ModernBertConfig
  num_labels: int
  classifier_dropout: float | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    return _token_logits(self, self.num_labels, input_ids, attention_mask, deterministic,
                         example_ids)


class ModernBertForQuestionAnswering(nn.Module):
  """Every token's output -> head -> dropout -> classifier to (start, end) logits [B, S, 2]."""

  config: ModernBertConfig
  classifier_dropout: float | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    return _token_logits(self, 2, input_ids, attention_mask, deterministic, example_ids)


class ModernBertForMaskedLM(nn.Module):
  """The outputs at `masked_positions` ([B, P]) -> head -> the decoder tied to the token
  embeddings, plus `decoder/bias` -> logits [B, P, vocab]."""

  config: ModernBertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  continues_checkpoint_head = True  # a checkpoint's own `head` and `decoder`, where it has them

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, masked_positions=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    encoder = ModernBertModel(cfg, self.dtype, self.param_dtype, name=PREFIX)
    sequence = encoder(input_ids, attention_mask, deterministic=deterministic,
                       example_ids=example_ids)
    if masked_positions is not None:
      sequence = jnp.take_along_axis(sequence, masked_positions[..., None], axis=1)
    x = ModernBertPredictionHead(cfg, self.dtype, self.param_dtype, name="head")(sequence)
    embedding = encoder.variables["params"]["embeddings"]["tok_embeddings"]["embedding"]
    if cfg.decoder_bias:
      return TiedDecoder(self.dtype, self.param_dtype, cfg.gemm, name="decoder")(x, embedding)
    return jnp.einsum("bph,vh->bpv", x, embedding.astype(self.dtype)).astype(jnp.float32)
