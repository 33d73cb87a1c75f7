"""DeBERTa-v2 and -v3 in Flax Linen, parameter for parameter Hugging Face's `DebertaV2Model`.

Module names mirror the state-dict keys of transformers' `deberta-v2` models
(`deberta/encoder/layer/0/attention/self/query_proj` is `deberta.encoder.layer.0.attention.
self.query_proj`), as `bert.py` does for BERT, so that `hf_io`'s mechanical renaming loads and
exports them. DeBERTa-v3 checkpoints are `deberta-v2` models with other switches.

What differs from BERT (He et al. 2021, 2023): disentangled attention. Beside content-to-content
scores, each query scores the relative position of each key (`c2p`: the query against the
projected embedding of the distance i - j) and each key scores the query's relative position
(`p2c`), the three summed and scaled by sqrt(head_dim * 3). Distances come from one table of
`2 * span` relative embeddings shared by every layer (`encoder/rel_embeddings`, LayerNorm'ed when
`norm_rel_ebd` says so), each layer projecting it with its own key and query projections
(`share_att_key`, v3) or separate ones (`pos_key_proj`, `pos_query_proj`). Beyond `span / 2`
tokens, distances fall into logarithmic buckets (`position_buckets`, v3). No absolute position
embeddings unless `position_biased_input`; no token types when `type_vocab_size` is 0; v2's
large models add a convolution after the first layer (`conv_kernel_size`). The sentence head is
`ContextPooler` (dense + activation on the first token, outside the encoder: `pooler`) then the
`classifier`; the masked-LM head is BERT's (`legacy`, transformers' default) or v3's
`lm_predictions`, both tied to the word embeddings.

Relative positions depend on the sequence length only, so they are computed here in numpy when
the model is traced (in float32, as transformers does), and only the rows of the relative table
that the length can reach are projected: the same dot products as transformers' gather over the
whole table, fewer of them for short inputs.

As in transformers, embeddings at padding positions are zeroed and padding keys are never
attended to; outputs at padding positions are not defined (transformers' are a uniform average).
Dropout is `bert.Dropout`; the dropout on the relative embeddings is one mask for the whole
batch, as in transformers (they have no example axis).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import mkl_gemm
# BERT's dense -> dropout -> LayerNorm(x + residual) is DeBERTa's `SelfOutput` and `Output`
# too: the same fields of the config, the same parameter names.
from research.models.bert import (ACTIVATIONS, DROPOUT_IMPLS, BertDenseResidual, Dropout,
                                  dense, dense_on_tokens, entity_features, tied_decode)

Dtype = Any
PREFIX = "deberta"  # the encoder's state-dict prefix (`base_model_prefix`)
# The task heads' top-level parameter names (transformers' DebertaV2For* models): the sentence
# head's `pooler` sits outside the encoder.
HEADS = ("pooler", "classifier", "qa_outputs", "cls", "lm_predictions")
# Beside `embeddings`, the encoder's parts that embed the input (frozen and decayed as
# embeddings): the relative-position table and its LayerNorm.
EMBEDDINGS = (("encoder", "rel_embeddings"), ("encoder", "LayerNorm"))
# Activations by transformers' names (the convolution's default is tanh).
_ACTIVATIONS = {**ACTIVATIONS, "tanh": jnp.tanh}


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
  """Architecture hyper-parameters; field names and defaults follow `transformers.
  DebertaV2Config` (DeBERTa-v2-xlarge), and the attributes its modules read with a default
  (`position_buckets`, `share_att_key`, `norm_rel_ebd`, `conv_*`, ...)."""

  vocab_size: int = 128100
  hidden_size: int = 1536
  num_hidden_layers: int = 24
  num_attention_heads: int = 24
  intermediate_size: int = 6144
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-7
  relative_attention: bool = False
  max_relative_positions: int = -1  # < 1: max_position_embeddings
  pad_token_id: int = 0
  position_biased_input: bool = True
  pos_att_type: tuple[str, ...] = ()  # of "c2p", "p2c"
  pooler_dropout: float = 0.0
  pooler_hidden_act: str = "gelu"
  pooler_hidden_size: int | None = None  # None: hidden_size
  cls_dropout: float | None = None  # None: hidden_dropout_prob
  legacy: bool = True  # the masked LM's head: BERT's `cls` (True) or `lm_predictions`
  position_buckets: int = -1
  share_att_key: bool = False
  norm_rel_ebd: str = "none"
  conv_kernel_size: int = 0
  conv_groups: int = 1
  conv_act: str = "tanh"
  embedding_size: int | None = None  # None: hidden_size
  attention_head_size: int | None = None  # None: hidden_size // num_attention_heads
  model_type: str = "deberta-v2"
  # Ours, not Hugging Face's (export leaves them out):
  dropout_impl: str = "hash"
  gemm: str = "xla"
  remat: bool = False  # recompute each layer's activations in the backward pass (as BERT's)

  def __post_init__(self):
    types = self.pos_att_type
    if isinstance(types, str):
      types = [t.strip() for t in types.lower().split("|")]
    object.__setattr__(self, "pos_att_type", tuple(types or ()))
    checks = [
        (self.model_type == "deberta-v2", f"model_type {self.model_type!r} is not 'deberta-v2'"),
        (self.attention_head_size is not None
         or self.hidden_size % self.num_attention_heads == 0,
         f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
         f"{self.num_attention_heads}"),
        (self.pooler_hidden_size in (None, self.hidden_size),
         f"pooler_hidden_size {self.pooler_hidden_size} differs from hidden_size "
         f"{self.hidden_size} (transformers' classifier reads hidden_size features)"),
        (self.conv_kernel_size <= 0 or self.conv_kernel_size % 2 == 1,
         f"conv_kernel_size {self.conv_kernel_size} is even: its output would not keep the "
         "sequence length"),
        (self.conv_kernel_size <= 0 or self.hidden_size % self.conv_groups == 0,
         f"hidden_size {self.hidden_size} is not a multiple of conv_groups {self.conv_groups}"),
        (self.legacy or self.embedding_width == self.hidden_size,
         "legacy false with embedding_size != hidden_size: lm_predictions needs equal sizes"),
        (self.dropout_impl in DROPOUT_IMPLS,
         f"dropout_impl {self.dropout_impl!r} is not one of {DROPOUT_IMPLS}"),
        (self.gemm in mkl_gemm.LIBRARIES, f"gemm {self.gemm!r} is not one of "
         f"{mkl_gemm.LIBRARIES}"),
    ]
    checks += [(act in _ACTIVATIONS, f"{name} {act!r} is not one of {sorted(_ACTIVATIONS)}")
               for name, act in (("hidden_act", self.hidden_act),
                                 ("pooler_hidden_act", self.pooler_hidden_act),
                                 ("conv_act", self.conv_act))]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "DebertaV2Config":
    """From a `config.json` dict (`pos_att_type` as a list or transformers' "p2c|c2p")."""
    names = {f.name for f in dataclasses.fields(cls)} - set(OWN_FIELDS)
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})

  def to_dict(self) -> dict[str, Any]:
    """The Hugging Face fields (what a `config.json` holds)."""
    values = {k: v for k, v in dataclasses.asdict(self).items()
              if k not in OWN_FIELDS and v is not None}
    values["pos_att_type"] = list(self.pos_att_type)
    return values

  def with_run_options(self, *, hidden_dropout: float | None, attention_dropout: float | None,
                       dropout_impl: str, gemm: str, remat: bool = False,
                       attention: str = "ours") -> "DebertaV2Config":
    """This architecture with a run's settings: the dropout rates (None: the checkpoint's) and
    our own fields. The fused attention core is BERT's option only: disentangled attention
    adds position scores that `jax.nn.dot_product_attention` has no place for."""
    if attention != "ours":
      raise ValueError(f"attention {attention!r}: deberta-v2 has its own attention only")
    rates = {name: rate for name, rate in (("hidden_dropout_prob", hidden_dropout),
                                           ("attention_probs_dropout_prob", attention_dropout))
             if rate is not None}
    return dataclasses.replace(self, **rates, dropout_impl=dropout_impl, gemm=gemm, remat=remat)

  def with_layers(self, layers: int) -> "DebertaV2Config":
    """This architecture with only its first `layers` layers (v2's convolution follows the
    first, which stays)."""
    return dataclasses.replace(self, num_hidden_layers=layers)

  @property
  def prefix(self) -> str:
    return PREFIX

  @property
  def max_length(self) -> int:
    """The longest input: the absolute position table's rows where the model has one (v2);
    else no limit (v3: its positions are relative only, and as in transformers, distances
    beyond `max_relative_positions` fall into the farthest buckets)."""
    return self.max_position_embeddings if self.position_biased_input else UNBOUNDED

  @property
  def embedding_width(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def head_dim(self) -> int:
    return self.attention_head_size or self.hidden_size // self.num_attention_heads

  @property
  def max_relative(self) -> int:
    """The largest distance distinguished (transformers' resolved `max_relative_positions`)."""
    return (self.max_relative_positions if self.max_relative_positions >= 1
            else self.max_position_embeddings)

  @property
  def span(self) -> int:
    """Half the relative table's rows: distances -span..span-1 (`pos_ebd_size`)."""
    return self.position_buckets if self.position_buckets > 0 else self.max_relative


OWN_FIELDS = ("dropout_impl", "gemm", "remat")
UNBOUNDED = 2 ** 31 - 1  # `max_length` of a model without absolute positions


def _normal(config: DebertaV2Config):
  return nn.initializers.normal(stddev=config.initializer_range)


def relative_positions(config: DebertaV2Config, length: int) -> np.ndarray:
  """[S, S] int: the (bucketed) distance i - j from query i to key j, as transformers'
  `build_relative_position`: exact up to `position_buckets // 2`, logarithmic beyond, in
  float32 as its `make_log_bucket_position` computes it."""
  positions = np.arange(length)
  relative = positions[:, None] - positions[None, :]
  if config.position_buckets <= 0:
    return relative
  mid = config.position_buckets // 2
  sign = np.sign(relative)
  near = (relative < mid) & (relative > -mid)
  distance = np.where(near, mid - 1, np.abs(relative)).astype(np.float32)
  ratio = np.log(distance / np.float32(mid)) / np.log(np.float32((config.max_relative - 1) / mid))
  log_position = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
  return np.where(distance <= mid, relative, log_position * sign).astype(np.int64)


class DebertaV2Embeddings(nn.Module):
  """Words (+ absolute positions, + token types, where the config has them), projected to the
  hidden size when `embedding_size` differs, LayerNorm, zeroed at padding, dropout."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, attention_mask, *, deterministic: bool,
               example_ids=None):
    cfg = self.config

    def embed(num, name):
      return nn.Embed(num, cfg.embedding_width, embedding_init=_normal(cfg), dtype=self.dtype,
                      param_dtype=self.param_dtype, name=name)

    x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
    if cfg.position_biased_input:
      x = x + embed(cfg.max_position_embeddings, "position_embeddings")(
          jnp.arange(input_ids.shape[-1])[None])
    if cfg.type_vocab_size > 0:
      x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
    if cfg.embedding_width != cfg.hidden_size:
      x = dense_on_tokens(dense(cfg, cfg.hidden_size, use_bias=False, kernel_init=_normal(cfg),
                                dtype=self.dtype, param_dtype=self.param_dtype,
                                name="embed_proj"), x)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="LayerNorm")(x)
    x = x * attention_mask[..., None].astype(x.dtype)
    return Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)(
        x, deterministic=deterministic, example_ids=example_ids)


def _heads(x, heads: int):
  """[..., S, heads * d] -> [..., heads, S, d]."""
  x = x.reshape(x.shape[:-1] + (heads, -1))
  return jnp.moveaxis(x, -2, -3)


class DisentangledSelfAttention(nn.Module):
  """Content-to-content scores plus, where `pos_att_type` asks, content-to-position (`c2p`) and
  position-to-content (`p2c`) scores through the relative table `relative` ([R, H], the rows
  that `index` [S, S] reaches), masked to the real keys, softmax in float32."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask, relative, index, *, deterministic: bool, example_ids=None):
    cfg = self.config
    heads, width = cfg.num_attention_heads, cfg.num_attention_heads * cfg.head_dim

    layers = {}

    def project(name, inputs):  # a projection used twice (`share_att_key`) is one layer
      if name not in layers:
        layers[name] = dense(cfg, width, kernel_init=_normal(cfg), dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)
      return _heads(dense_on_tokens(layers[name], inputs), heads)  # [B, h, S, d] or [h, R, d]

    query, key, value = (project(n, x) for n in ("query_proj", "key_proj", "value_proj"))
    types = [t for t in ("c2p", "p2c") if cfg.relative_attention and t in cfg.pos_att_type]
    scale = np.sqrt(np.float32(cfg.head_dim * (1 + len(types)))).astype(np.float32)
    scale = jnp.asarray(scale, self.dtype)
    scores = jnp.matmul(query, key.swapaxes(-1, -2) / scale)
    if cfg.relative_attention:
      relative = Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)(
          relative[None], deterministic=deterministic,
          example_ids=jnp.zeros((1,), jnp.int32))[0]  # one mask for the batch
      if "c2p" in types:  # query i . position key of distance(i, j)
        position_key = project("key_proj" if cfg.share_att_key else "pos_key_proj", relative)
        c2p = jnp.matmul(query, position_key.swapaxes(-1, -2))  # [B, h, S, R]
        scores = scores + jnp.take_along_axis(
            c2p, jnp.broadcast_to(index, c2p.shape[:2] + index.shape), axis=-1) / scale
      if "p2c" in types:  # key j . position query of distance(i, j)
        position_query = project("query_proj" if cfg.share_att_key else "pos_query_proj",
                                 relative)
        p2c = jnp.matmul(key, position_query.swapaxes(-1, -2))  # [B, h, S (keys), R]
        p2c = jnp.take_along_axis(p2c, jnp.broadcast_to(index.T, p2c.shape[:2] + index.shape),
                                  axis=-1)
        scores = scores + p2c.swapaxes(-1, -2) / scale
    scores = jnp.where(key_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = Dropout(cfg.attention_probs_dropout_prob, cfg.dropout_impl)(
        weights, deterministic=deterministic, example_ids=example_ids)
    context = jnp.matmul(weights.astype(self.dtype), value)
    return jnp.moveaxis(context, -3, -2).reshape(x.shape[:-1] + (width,))


class DebertaV2Attention(nn.Module):
  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask, relative, index, *, deterministic: bool, example_ids=None):
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    context = DisentangledSelfAttention(**kw, name="self")(
        x, key_mask, relative, index, deterministic=deterministic, example_ids=example_ids)
    return BertDenseResidual(**kw, name="output")(context, x, deterministic=deterministic,
                                              example_ids=example_ids)


class DebertaV2Intermediate(nn.Module):
  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    x = dense_on_tokens(dense(cfg, cfg.intermediate_size, kernel_init=_normal(cfg),
                              dtype=self.dtype, param_dtype=self.param_dtype, name="dense"), x)
    return _ACTIVATIONS[cfg.hidden_act](x)


class DebertaV2Layer(nn.Module):
  """One post-LayerNorm block with disentangled attention. Its arguments are positional so
  that `nn.remat` can keep `deterministic` static."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask, relative, index, example_ids, deterministic: bool):
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    x = DebertaV2Attention(**kw, name="attention")(x, key_mask, relative, index,
                                                   deterministic=deterministic,
                                                   example_ids=example_ids)
    h = DebertaV2Intermediate(**kw, name="intermediate")(x)
    return BertDenseResidual(**kw, name="output")(h, x, deterministic=deterministic,
                                              example_ids=example_ids)


class DebertaV2LayerStack(nn.Module):
  """The `encoder.layer` list; children are named "0", "1", ... as in the state dict. Called
  once per run of consecutive layers (`layers`), so that v2's convolution, a sibling of this
  list in the state dict, can act between the first layer and the second. With
  `config.remat`, training keeps each layer's input only and recomputes the rest in the
  backward pass (`bert.BertLayerStack` says when that saves memory)."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask, relative, index, *, layers: range, deterministic: bool,
               example_ids=None):
    layer = DebertaV2Layer
    if self.config.remat and not deterministic:
      layer = nn.remat(DebertaV2Layer, static_argnums=(6,))  # self is 0: `deterministic`
    for i in layers:
      x = layer(self.config, self.dtype, self.param_dtype, name=str(i))(
          x, key_mask, relative, index, example_ids, deterministic)
    return x


class ConvLayer(nn.Module):
  """DeBERTa-v2's convolution over the embeddings, added to the first layer's output:
  LayerNorm(layer + act(dropout(conv(embeddings) zeroed at padding))), zeroed at padding."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings, layer_output, real, *, deterministic: bool, example_ids=None):
    cfg = self.config
    pad = (cfg.conv_kernel_size - 1) // 2
    out = nn.Conv(cfg.hidden_size, (cfg.conv_kernel_size,), padding=[(pad, pad)],
                  feature_group_count=cfg.conv_groups, kernel_init=_normal(cfg),
                  dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(embeddings)
    out = out * real
    out = Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)(
        out, deterministic=deterministic, example_ids=example_ids)
    out = _ACTIVATIONS[cfg.conv_act](out)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="LayerNorm")(layer_output + out)
    return x * real


class DebertaV2Encoder(nn.Module):
  """The layers (`layer/0`, ...), the relative table they share (`rel_embeddings`, its
  `LayerNorm`) and v2's `conv` after the first layer."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, *, deterministic: bool, example_ids=None):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    length = x.shape[1]
    key_mask = attention_mask[:, None, None, :] > 0  # [B, 1, 1, S]
    relative, index = None, None
    if cfg.relative_attention:
      table = nn.Embed(2 * cfg.span, cfg.hidden_size, embedding_init=_normal(cfg), **kw,
                       name="rel_embeddings").embedding
      rows = np.clip(relative_positions(cfg, length) + cfg.span, 0, 2 * cfg.span - 1)
      first, last = int(rows.min()), int(rows.max())
      relative, index = table[first:last + 1], jnp.asarray(rows - first, jnp.int32)
      if "layer_norm" in [t.strip() for t in cfg.norm_rel_ebd.lower().split("|")]:
        # LayerNorm acts on each row alone: normalising the reachable rows is normalising the
        # table, as transformers does, for fewer rows.
        relative = nn.LayerNorm(epsilon=cfg.layer_norm_eps, **kw, name="LayerNorm")(relative)
      relative = relative.astype(self.dtype)
    stack = DebertaV2LayerStack(cfg, **kw, name="layer")
    run = dict(deterministic=deterministic, example_ids=example_ids)
    if cfg.conv_kernel_size <= 0:
      return stack(x, key_mask, relative, index, layers=range(cfg.num_hidden_layers), **run)
    real = attention_mask[..., None].astype(x.dtype)
    first_layer = stack(x, key_mask, relative, index, layers=range(1), **run)
    h = ConvLayer(cfg, **kw, name="conv")(x, first_layer, real, **run)
    return stack(h, key_mask, relative, index, layers=range(1, cfg.num_hidden_layers), **run)


class DebertaV2Model(nn.Module):
  """The encoder: embeddings, layers -> the sequence output [B, S, H]."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    if input_ids.shape[-1] > cfg.max_length:
      raise ValueError(f"input of {input_ids.shape[-1]} tokens is longer than the model's "
                       f"max_position_embeddings {cfg.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    x = DebertaV2Embeddings(**kw, name="embeddings")(
        input_ids, token_type_ids, attention_mask, deterministic=deterministic,
        example_ids=example_ids)
    return DebertaV2Encoder(**kw, name="encoder")(x, attention_mask, deterministic=deterministic,
                                                  example_ids=example_ids)


def _encode(module: nn.Module, input_ids, attention_mask, token_type_ids, deterministic,
            example_ids):
  """The sequence output, with `module`'s encoder parameters."""
  return DebertaV2Model(module.config, module.dtype, module.param_dtype, name=PREFIX)(
      input_ids, attention_mask, token_type_ids, deterministic=deterministic,
      example_ids=example_ids)


def _classifier(module: nn.Module, x, num_labels: int):
  cfg = module.config
  layer = dense(cfg, num_labels, kernel_init=_normal(cfg), dtype=module.dtype,
                param_dtype=module.param_dtype, name="classifier")
  return dense_on_tokens(layer, x)


def _rate(module: nn.Module) -> float:
  """The head's dropout: the run's `classifier_dropout`, else `cls_dropout`, else the hidden
  dropout (transformers' order)."""
  cfg = module.config
  if module.classifier_dropout is not None:
    return module.classifier_dropout
  return cfg.hidden_dropout_prob if cfg.cls_dropout is None else cfg.cls_dropout


class ContextPooler(nn.Module):
  """The first token -> dropout (`pooler_dropout`) -> dense -> `pooler_hidden_act`."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, sequence, *, deterministic: bool, example_ids=None):
    cfg = self.config
    x = Dropout(cfg.pooler_dropout, cfg.dropout_impl)(
        sequence[:, 0], deterministic=deterministic, example_ids=example_ids)
    x = dense(cfg, cfg.hidden_size, kernel_init=_normal(cfg), dtype=self.dtype,
              param_dtype=self.param_dtype, name="dense")(x)
    return _ACTIVATIONS[cfg.pooler_hidden_act](x)


def _sequence_logits(module: nn.Module, input_ids, attention_mask, token_type_ids,
                     deterministic: bool, example_ids):
  """`DebertaV2ForSequenceClassification`'s logits, with `module`'s parameters."""
  sequence = _encode(module, input_ids, attention_mask, token_type_ids, deterministic,
                     example_ids)
  pooled = ContextPooler(module.config, module.dtype, module.param_dtype, name="pooler")(
      sequence, deterministic=deterministic, example_ids=example_ids)
  pooled = Dropout(_rate(module), module.config.dropout_impl)(
      pooled, deterministic=deterministic, example_ids=example_ids)
  return _classifier(module, pooled, module.num_labels).astype(jnp.float32)


class DebertaV2ForSequenceClassification(nn.Module):
  """The first token -> `pooler` -> dropout -> classifier; one output per label, or one for
  regression."""

  config: DebertaV2Config
  num_labels: int
  classifier_dropout: float | None = None  # None: the config's cls_dropout
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    return _sequence_logits(self, input_ids, attention_mask, token_type_ids, deterministic,
                            example_ids)


class DebertaV2ForRelationClassification(nn.Module):
  """A relation between two marked entities, as `bert.BertForRelationClassification` reads it:
  `representation="cls"` is `DebertaV2ForSequenceClassification` (same parameters); the
  entities' start states or token means ([B, 2H], `bert.entity_features`) -> dropout -> a dense
  `classifier` (transformers has no such head: the export is the bare encoder plus it)."""

  config: DebertaV2Config
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
    if self.representation == "cls":
      return _sequence_logits(self, input_ids, attention_mask, token_type_ids, deterministic,
                              example_ids)
    sequence = _encode(self, input_ids, attention_mask, token_type_ids, deterministic,
                       example_ids)
    features = entity_features(sequence, entity_spans, self.representation, self.start_offset)
    features = Dropout(_rate(self), self.config.dropout_impl)(
        features, deterministic=deterministic, example_ids=example_ids)
    return _classifier(self, features, self.num_labels).astype(jnp.float32)


class DebertaV2ForTokenClassification(nn.Module):
  """Every token's output -> dropout (the hidden dropout, as transformers) -> classifier."""

  config: DebertaV2Config
  num_labels: int
  classifier_dropout: float | None = None  # None: hidden_dropout_prob
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    sequence = _encode(self, input_ids, attention_mask, token_type_ids, deterministic,
                       example_ids)
    rate = cfg.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout
    sequence = Dropout(rate, cfg.dropout_impl)(sequence, deterministic=deterministic,
                                               example_ids=example_ids)
    return _classifier(self, sequence, self.num_labels).astype(jnp.float32)


class DebertaV2ForQuestionAnswering(nn.Module):
  """Every token's output -> `qa_outputs` to (start, end) logits [B, S, 2] (no dropout)."""

  config: DebertaV2Config
  classifier_dropout: float | None = None  # unused: transformers' QA head has no dropout
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    sequence = _encode(self, input_ids, attention_mask, token_type_ids, deterministic,
                       example_ids)
    layer = dense(cfg, 2, kernel_init=_normal(cfg), dtype=self.dtype,
                  param_dtype=self.param_dtype, name="qa_outputs")
    return dense_on_tokens(layer, sequence).astype(jnp.float32)


class _Transform(nn.Module):
  """dense (to `features`) -> hidden_act -> LayerNorm: the first half of both LM heads."""

  config: DebertaV2Config
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _transform(self, x, self.features)


def _transform(module: nn.Module, x, features: int):
  """`_Transform`'s layers as children of `module` (v3's `lm_head` holds them directly)."""
  cfg = module.config
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  x = dense_on_tokens(dense(cfg, features, kernel_init=_normal(cfg), **kw, name="dense"), x)
  x = _ACTIVATIONS[cfg.hidden_act](x)
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, **kw, name="LayerNorm")(x)


class _TiedLMHead(nn.Module):
  """The transform, then the decoder tied to the word embeddings with this module's `bias`:
  legacy `cls/predictions` holds the transform as `transform` (to embedding_size), v3's
  `lm_predictions/lm_head` holds its layers directly."""

  config: DebertaV2Config
  legacy: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, embedding):
    cfg = self.config
    if self.legacy:
      x = _Transform(cfg, cfg.embedding_width, self.dtype, self.param_dtype,
                     name="transform")(hidden)
    else:
      x = _transform(self, hidden, cfg.hidden_size)
    return tied_decode(self, x, embedding, cfg.gemm)


class _Holder(nn.Module):
  """The state-dict level above the LM head: `cls` holds `predictions`, `lm_predictions`
  holds `lm_head`."""

  config: DebertaV2Config
  legacy: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, embedding):
    return _TiedLMHead(self.config, self.legacy, self.dtype, self.param_dtype,
                       name="predictions" if self.legacy else "lm_head")(hidden, embedding)


class DebertaV2ForMaskedLM(nn.Module):
  """The outputs at `masked_positions` ([B, P]) -> the LM head (`legacy`: BERT's
  `cls/predictions`; else v3's `lm_predictions/lm_head`) -> logits [B, P, vocab]."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_extra_inputs = ([[1, 2]],)  # the masked positions (builder.init_inputs)
  continues_checkpoint_head = True  # a checkpoint's own LM head, where it has one

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, masked_positions=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    encoder = DebertaV2Model(cfg, **kw, name=PREFIX)
    sequence = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic,
                       example_ids=example_ids)
    if masked_positions is not None:
      sequence = jnp.take_along_axis(sequence, masked_positions[..., None], axis=1)
    embedding = encoder.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    return _Holder(cfg, cfg.legacy, **kw, name="cls" if cfg.legacy else "lm_predictions")(
        sequence, embedding)
