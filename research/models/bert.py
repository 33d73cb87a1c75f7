"""A Flax Linen BERT that matches Hugging Face's `BertModel` parameter for parameter.

Module names mirror the Hugging Face state-dict keys (`encoder/layer/0/attention/self/query`
is `encoder.layer.0.attention.self.query`), so that import and export in `hf_io.py` are a
mechanical renaming that anyone can audit against the PyTorch model.

The same encoder is RoBERTa, XLM-RoBERTa and ELECTRA (`BertConfig.model_type`): they differ from
BERT in a few switches only, not in the transformer. RoBERTa and XLM-R number positions from
`pad_token_id + 1` and skip padding, and classify with `RobertaClassificationHead` (dense + tanh
on the first token, then `out_proj`) instead of the pooler; ELECTRA embeds into `embedding_size`
and projects to the hidden size (`embeddings_project`), has no pooler, and its classification
head is RoBERTa's with GELU. The encoder's top-level name is the family's state-dict prefix
(`bert`, `roberta`, `electra`).

`dtype` is the compute dtype (activations, matmuls); `param_dtype` the storage dtype of the
parameters. LayerNorm statistics, softmax and the logits are always computed in float32.

In training, `example_ids` ([B] int, each row's index in its split) seed the dropout masks, so
that an example draws the same masks whichever device or micro-batch holds it (`Dropout`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import mkl_gemm

Dtype = Any
# The task heads' top-level parameter names (as in Hugging Face's BertFor*, RobertaFor*,
# ElectraFor* models): every parameter outside the encoder (`ENCODERS`) belongs to the head.
HEADS = ("classifier", "qa_outputs", "cls", "lm_head", "generator_predictions",
         "generator_lm_head")
# Hugging Face's model_type -> the encoder's top-level name (the state-dict prefix of its
# *For* models, `base_model_prefix`).
MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
               "electra": "electra"}
ENCODERS = tuple(sorted(set(MODEL_TYPES.values())))
# The encoder's children below its first layer: ELECTRA projects its embeddings to the hidden
# size, and the projection freezes and decays with them.
EMBEDDINGS = ("embeddings", "embeddings_project")
# Families whose position ids start after the padding index and skip padding (fairseq's).
_PADDING_POSITIONS = ("roberta", "xlm-roberta")

def _gelu(x):
  """BERT's exact GELU in PyTorch's form, x/2 (1 + erf(x/sqrt 2)): on CPU XLA computes erf
  3x faster than the erfc that `nn.gelu(approximate=False)` uses."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}


def _fenced(x):
  """x through `clamp(-inf, x, inf)` on the CPU backend: the identity, as an op that XLA keeps
  and that XLA:CPU's YNNPACK GEMM fusions do not take in. Elsewhere x itself: the fence is a
  CPU trick, and on an accelerator only one more elementwise op."""
  if jax.default_backend() != "cpu":
    return x
  return jax.lax.clamp(jnp.asarray(-jnp.inf, x.dtype), x, jnp.asarray(jnp.inf, x.dtype))


def dense(cfg: "BertConfig", features: int, **kwargs) -> nn.Dense:
  """`nn.Dense` whose matmuls are `cfg.gemm`'s: XLA's, or MKL's custom call (`mkl_gemm`)."""
  if cfg.gemm == "mkl":
    kwargs["dot_general"] = mkl_gemm.dot_general
  return nn.Dense(features, **kwargs)


def dense_on_tokens(layer: nn.Dense, x):
  """`layer` applied to x's tokens as one [tokens, features] matrix (same parameters and maths).

  JAX then differentiates a 2-D matmul, and XLA:CPU computes the kernel's gradient as one plain
  x^T g GEMM; from the 3-D form it transposes g and runs a dot 3x slower (NOTES attempt 16).
  """
  return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], layer.features)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture hyper-parameters; field names and defaults follow `transformers.BertConfig`."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  initializer_range: float = 0.02
  model_type: str = "bert"  # "bert", "roberta", "xlm-roberta" or "electra" (`MODEL_TYPES`)
  embedding_size: int | None = None  # ELECTRA's embeddings width; None: hidden_size
  # Ours, not Hugging Face's (export leaves them out):
  dropout_impl: str = "hash"  # how dropout masks are drawn: "hash" or "threefry" (`Dropout`)
  remat: bool = False  # recompute each layer's activations in the backward pass (less memory)
  gemm: str = "xla"  # the dense layers' matmuls: "xla" or "mkl" (`mkl_gemm`, resolved from "auto")
  attention: str = "ours"  # "ours" or "fused": jax.nn.dot_product_attention (`BertSelfAttention`)

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} is not supported; supported: "
                       f"{', '.join(MODEL_TYPES)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
          f"{self.num_attention_heads}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention {self.attention!r} is not one of {ATTENTIONS}")
    if self.gemm not in mkl_gemm.LIBRARIES:
      raise ValueError(f"gemm {self.gemm!r} is not one of {mkl_gemm.LIBRARIES}")
    if self.dropout_impl not in DROPOUT_IMPLS:
      raise ValueError(f"dropout_impl {self.dropout_impl!r} is not one of {DROPOUT_IMPLS}")

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "BertConfig":
    """Builds a config from a Hugging Face `config.json` dict, ignoring unrelated keys."""
    if values.get("model_type", "bert") not in MODEL_TYPES:
      raise ValueError(f"model_type {values['model_type']!r} is not supported; supported: "
                       f"{', '.join(MODEL_TYPES)}")
    if values.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
          f"position_embedding_type {values['position_embedding_type']!r} is not supported; "
          "only 'absolute' is")
    names = {f.name for f in dataclasses.fields(cls)} - set(OWN_FIELDS)
    if values.get("model_type") != "electra":  # another family's embedding_size is not ours
      names.discard("embedding_size")
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})

  def to_dict(self) -> dict[str, Any]:
    """The Hugging Face fields (what a `config.json` holds); `embedding_size` is ELECTRA's
    only."""
    values = {k: v for k, v in dataclasses.asdict(self).items() if k not in OWN_FIELDS}
    if self.model_type == "electra":
      values["embedding_size"] = self.embedding_width
    else:
      del values["embedding_size"]
    return values

  def with_run_options(self, *, hidden_dropout: float | None, attention_dropout: float | None,
                       **own) -> "BertConfig":
    """This architecture with a run's settings: the dropout rates (None: the checkpoint's) and
    our own fields (`OWN_FIELDS`)."""
    rates = {name: rate for name, rate in (("hidden_dropout_prob", hidden_dropout),
                                           ("attention_probs_dropout_prob", attention_dropout))
             if rate is not None}
    return dataclasses.replace(self, **rates, **own)

  def with_layers(self, layers: int) -> "BertConfig":
    """This architecture with only its first `layers` layers."""
    return dataclasses.replace(self, num_hidden_layers=layers)

  @property
  def prefix(self) -> str:
    """The encoder's top-level parameter name: `bert`, `roberta` or `electra`."""
    return MODEL_TYPES[self.model_type]

  @property
  def embedding_width(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def has_pooler(self) -> bool:
    """ELECTRA has none; RoBERTa's is in `RobertaModel` but not in its classifiers."""
    return self.model_type != "electra"

  @property
  def max_length(self) -> int:
    """The longest input the position embeddings hold: RoBERTa's positions start after
    `pad_token_id`, so 514 embeddings hold 512 tokens."""
    if self.model_type in _PADDING_POSITIONS:
      return self.max_position_embeddings - self.pad_token_id - 1
    return self.max_position_embeddings

  def position_ids(self, input_ids):
    """0, 1, ... for BERT and ELECTRA; RoBERTa's `create_position_ids_from_input_ids`:
    pad_token_id + 1, + 2, ... over the non-padding tokens, pad_token_id on padding (so that
    left padding does not shift the real tokens' positions)."""
    if self.model_type in _PADDING_POSITIONS:
      real = (input_ids != self.pad_token_id).astype(jnp.int32)
      return jnp.cumsum(real, axis=-1) * real + self.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)


# BertConfig fields that Hugging Face does not have.
OWN_FIELDS = ("dropout_impl", "remat", "gemm", "attention")
ATTENTIONS = ("ours", "fused")  # BertConfig.attention


def _normal(config: BertConfig):
  return nn.initializers.normal(stddev=config.initializer_range)


def _mix32(h):
  """MurmurHash3's 32-bit finaliser: a cheap bijection in which every input bit flips about
  half of the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


DROPOUT_IMPLS = ("hash", "threefry")
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters over the 32 bits


class Dropout(nn.Module):
  """Inverted dropout whose masks are a function of (dropout key, example, element) alone.

  The rows of `x` are examples (`example_ids`: each row's index in its split; default 0..B-1):
  an example's mask does not depend on which device or micro-batch holds it, so any split of a
  batch trains the same model. Each call draws its key from the 'dropout' stream (one per call
  and step, the same on every device).

  `impl="hash"` (default): a counter-based hash, ~10x cheaper than threefry on CPU (threefry
  bits for every activation cost a fifth of a MiniLM train step there). The call's two 32-bit
  seeds and the example's index are hashed with each element's offset within its example into
  a uniform 32-bit number: keep iff it is >= rate * 2^32. `impl="threefry"`: JAX's
  `random.bernoulli` from the call's key folded with the example's index (a reference for the
  hash; the same cost as flax.linen.Dropout).
  """

  rate: float
  impl: str = "hash"

  @nn.compact
  def __call__(self, x, *, deterministic: bool, example_ids=None):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    if example_ids is None:
      example_ids = jnp.arange(x.shape[0])
    key = self.make_rng("dropout")
    if self.impl == "threefry":
      keep = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - self.rate,
                                                     x.shape[1:]))(example_ids)
    else:
      seeds = jax.random.bits(key, (2,), jnp.uint32)
      offset = jax.lax.iota(jnp.uint32, x[0].size).reshape(x.shape[1:])  # within an example
      example = _mix32(example_ids.astype(jnp.uint32) * jnp.uint32(_GOLDEN) + seeds[1])
      bits = _mix32(_mix32(offset * jnp.uint32(_GOLDEN) + seeds[0])[None]
                    ^ example.reshape((-1,) + (1,) * (x.ndim - 1)))
      keep = bits >= jnp.uint32(int(self.rate * 2**32))
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - self.rate), x.dtype), 0)


class BertEmbeddings(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, position_ids, *, deterministic: bool,
               example_ids=None):
    cfg = self.config

    def embed(num, name):
      return nn.Embed(num, cfg.embedding_width, embedding_init=_normal(cfg), dtype=self.dtype,
                      param_dtype=self.param_dtype, name=name)

    x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
         + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
         + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="LayerNorm")(x)
    return Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)(
        x, deterministic=deterministic, example_ids=example_ids)


class BertSelfAttention(nn.Module):
  """Multi-head scaled dot-product attention over the unpadded keys.

  `queries` (default: `x`) are the positions that attend; keys and values are always all of
  `x`. Heads are moved in front ([B, heads, S, head_dim]) before the two batched matmuls: XLA's
  CPU backend runs them 2x faster than an einsum that keeps heads in the middle.

  `config.attention = "fused"` hands the core to `jax.nn.dot_product_attention`, which on a GPU
  runs cuDNN's fused attention where cuDNN supports the shape and dtype (bf16, head sizes it
  takes) and XLA's composition elsewhere. It has no dropout: in training with attention
  dropout above zero, ours runs instead (the same maths; `fused_attention_applies`).
  """

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_bias, *, deterministic: bool, example_ids=None, queries=None):
    cfg = self.config
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads

    def project(name, inputs):
      y = dense_on_tokens(dense(cfg, cfg.hidden_size, kernel_init=_normal(cfg),
                                  dtype=self.dtype, param_dtype=self.param_dtype, name=name),
                           inputs)
      return y.reshape(y.shape[:-1] + (heads, head_dim))  # [B, S, heads, head_dim]

    if fused_attention_applies(cfg, deterministic):
      context = jax.nn.dot_product_attention(
          project("query", x if queries is None else queries), project("key", x),
          project("value", x), mask=attention_bias == 0)
      return context.reshape(context.shape[:-2] + (cfg.hidden_size,))

    # 1/sqrt(d) on the queries: a [.., S, d] product instead of one over the [.., S, S] scores.
    query = (project("query", x if queries is None else queries).transpose(0, 2, 1, 3)
             * (head_dim ** -0.5))
    key, value = (project(name, x).transpose(0, 2, 1, 3) for name in ("key", "value"))
    scores = jnp.matmul(query, key.swapaxes(-1, -2)).astype(jnp.float32) + attention_bias
    # Softmax with its division moved after the context matmul: dividing the [.., S, d] context
    # rows is cheaper than dividing the [.., S, S] weights (and exact: both are per query row).
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    denominators = weights.sum(axis=-1, keepdims=True)
    weights = Dropout(cfg.attention_probs_dropout_prob, cfg.dropout_impl)(
        weights, deterministic=deterministic, example_ids=example_ids)
    context = jnp.matmul(weights.astype(self.dtype), value) / denominators.astype(self.dtype)
    context = context.transpose(0, 2, 1, 3)
    return context.reshape(context.shape[:-2] + (cfg.hidden_size,))


def fused_attention_applies(config: BertConfig, deterministic: bool) -> bool:
  """Whether `config.attention = "fused"` runs: it has no attention dropout to apply."""
  return config.attention == "fused" and (deterministic
                                          or config.attention_probs_dropout_prob == 0)


class BertDenseResidual(nn.Module):
  """Dense -> dropout -> LayerNorm(x + residual): HF's `BertSelfOutput` and `BertOutput`."""

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, residual, *, deterministic: bool, example_ids=None):
    cfg = self.config
    x = dense_on_tokens(dense(cfg, cfg.hidden_size, kernel_init=_normal(cfg),
                                dtype=self.dtype, param_dtype=self.param_dtype, name="dense"), x)
    x = Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)(
        x, deterministic=deterministic, example_ids=example_ids)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="LayerNorm")(x + residual)


class BertAttention(nn.Module):
  """Self-attention plus its output projection: HF's `BertAttention`."""

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_bias, *, deterministic: bool, example_ids=None, queries=None):
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    context = BertSelfAttention(**kw, name="self")(
        x, attention_bias, deterministic=deterministic, example_ids=example_ids, queries=queries)
    residual = x if queries is None else queries
    return BertDenseResidual(**kw, name="output")(context, residual, deterministic=deterministic,
                                                  example_ids=example_ids)


class BertIntermediate(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    cfg = self.config
    x = dense_on_tokens(dense(cfg, cfg.intermediate_size, kernel_init=_normal(cfg),
                                dtype=self.dtype, param_dtype=self.param_dtype, name="dense"), x)
    activation = ACTIVATIONS[cfg.hidden_act]
    if deterministic:
      # Fenced out of the GEMM fusions, the activation is one XLA loop over [tokens, intermediate]
      # instead of a YNNPACK pass per elementwise op: eval forward -7% at MiniLM B32xS128. In
      # training the fences cost the backward more than they save (NOTES attempt 20).
      return _fenced(activation(_fenced(x)))
    return activation(x)


class BertLayer(nn.Module):
  """One post-LayerNorm transformer block; with `queries`, only those positions' outputs.

  Its arguments are positional so that `nn.remat` can keep `deterministic` static.
  """

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_bias, example_ids, queries, deterministic: bool):
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    x = BertAttention(**kw, name="attention")(x, attention_bias, deterministic=deterministic,
                                              example_ids=example_ids, queries=queries)
    h = BertIntermediate(**kw, name="intermediate")(x, deterministic=deterministic)
    return BertDenseResidual(**kw, name="output")(h, x, deterministic=deterministic,
                                                  example_ids=example_ids)


class BertLayerStack(nn.Module):
  """The `encoder.layer` list; children are named "0", "1", ... as in the state dict.

  With `cls_only`, the last layer computes the [CLS] position alone (its keys and values still
  span the sequence): exactly what a pooled head reads, for about 10/12 of a layer's FLOPs less.
  With `config.remat`, training keeps only each layer's input and recomputes the rest in the
  backward pass: about a third more compute for activations memory of one layer instead of all
  (GPU and TPU compilers keep the recomputation; XLA:CPU folds it back in).
  """

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_bias, *, deterministic: bool, example_ids=None,
               cls_only: bool = False):
    layer = BertLayer
    if self.config.remat and not deterministic:
      layer = nn.remat(BertLayer, static_argnums=(5,))  # self is 0: `deterministic`
    hidden_states = [x]
    last = self.config.num_hidden_layers - 1
    for i in range(self.config.num_hidden_layers):
      queries = x[:, :1] if cls_only and i == last else None
      x = layer(self.config, self.dtype, self.param_dtype, name=str(i))(
          x, attention_bias, example_ids, queries, deterministic)
      hidden_states.append(x)
    return x, tuple(hidden_states)


class BertEncoder(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_bias, *, deterministic: bool, example_ids=None,
               cls_only: bool = False):
    return BertLayerStack(self.config, self.dtype, self.param_dtype, name="layer")(
        x, attention_bias, deterministic=deterministic, example_ids=example_ids,
        cls_only=cls_only)


class BertPooler(nn.Module):
  """tanh(dense(hidden state of [CLS]))."""

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    x = dense(cfg, cfg.hidden_size, kernel_init=_normal(cfg), dtype=self.dtype,
               param_dtype=self.param_dtype, name="dense")(x[:, 0])
    return nn.tanh(x)


class BertModel(nn.Module):
  """The encoder: returns (sequence_output [B, S, H], pooled_output [B, H] or None; always
  None for ELECTRA, which has no pooler).

  `cls_only=True` returns a sequence output of the [CLS] position alone ([B, 1, H]); the
  pooled output is unchanged and cheaper (see `BertLayerStack`).
  """

  config: BertConfig
  add_pooling_layer: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None, output_hidden_states: bool = False,
               cls_only: bool = False):
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    if input_ids.shape[-1] > self.config.max_length:  # a gather past the table gives NaN, silently
      raise ValueError(
          f"input of {input_ids.shape[-1]} tokens is longer than the {self.config.max_length} "
          f"the model's position embeddings hold (max_position_embeddings "
          f"{self.config.max_position_embeddings})")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = BertEmbeddings(**kw, name="embeddings")(
        input_ids, token_type_ids, self.config.position_ids(input_ids),
        deterministic=deterministic, example_ids=example_ids)
    if self.config.embedding_width != self.config.hidden_size:  # ELECTRA's small embeddings
      x = dense_on_tokens(dense(self.config, self.config.hidden_size,
                                  kernel_init=_normal(self.config), dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="embeddings_project"), x)
    # Padding keys get a large negative score: [B, 1, 1, S] broadcasts over heads and queries.
    attention_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                               jnp.finfo(jnp.float32).min).astype(jnp.float32)
    x, hidden_states = BertEncoder(**kw, name="encoder")(
        x, attention_bias, deterministic=deterministic, example_ids=example_ids,
        cls_only=cls_only)
    pooled = (BertPooler(**kw, name="pooler")(x)
              if self.add_pooling_layer and self.config.has_pooler else None)
    if output_hidden_states:
      return x, pooled, hidden_states
    return x, pooled


class SentenceHead(nn.Module):
  """RoBERTa's and ELECTRA's sentence head (`RobertaClassificationHead`,
  `ElectraClassificationHead`): the first token's hidden state -> dropout -> dense -> tanh
  (RoBERTa) or GELU (ELECTRA) -> dropout -> `out_proj`. BERT's is its pooler instead."""

  config: BertConfig
  num_labels: int
  rate: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, first_token, *, deterministic: bool, example_ids=None):
    cfg = self.config
    kw = dict(kernel_init=_normal(cfg), dtype=self.dtype, param_dtype=self.param_dtype)
    x = Dropout(self.rate, cfg.dropout_impl)(first_token, deterministic=deterministic,
                                             example_ids=example_ids)
    x = dense(cfg, cfg.hidden_size, **kw, name="dense")(x)
    x = _gelu(x) if cfg.model_type == "electra" else nn.tanh(x)
    x = Dropout(self.rate, cfg.dropout_impl)(x, deterministic=deterministic,
                                             example_ids=example_ids)
    return dense(cfg, self.num_labels, **kw, name="out_proj")(x)


def _sentence_logits(module: nn.Module, cfg: BertConfig, num_labels: int, rate: float,
                     input_ids, attention_mask, token_type_ids, deterministic, example_ids):
  """The family's sentence classifier over [CLS] / <s>: BERT's pooler -> dropout -> dense
  `classifier`; RoBERTa's and ELECTRA's `SentenceHead` (no pooler). Called inside `module`'s
  compact `__call__`, so the parameters are `module`'s."""
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  if cfg.model_type == "bert":
    _, pooled = BertModel(cfg, **kw, name=cfg.prefix)(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        example_ids=example_ids, cls_only=True)
    pooled = Dropout(rate, cfg.dropout_impl)(pooled, deterministic=deterministic,
                                             example_ids=example_ids)
    return dense(cfg, num_labels, kernel_init=_normal(cfg), **kw, name="classifier")(pooled)
  sequence, _ = BertModel(cfg, add_pooling_layer=False, **kw, name=cfg.prefix)(
      input_ids, attention_mask, token_type_ids, deterministic=deterministic,
      example_ids=example_ids, cls_only=True)
  return SentenceHead(cfg, num_labels, rate, **kw, name="classifier")(
      sequence[:, 0], deterministic=deterministic, example_ids=example_ids)


class BertForSequenceClassification(nn.Module):
  """[CLS] -> the family's sentence head (`_sentence_logits`). `num_labels == 1` is
  regression."""

  config: BertConfig
  num_labels: int
  classifier_dropout: float | None = None  # None: the encoder's hidden_dropout_prob
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    rate = cfg.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout
    logits = _sentence_logits(self, cfg, self.num_labels, rate, input_ids, attention_mask,
                              token_type_ids, deterministic, example_ids)
    return logits.astype(jnp.float32)


class BertForTokenClassification(nn.Module):
  """Every token's hidden state -> dropout -> dense (no pooler, as in Hugging Face)."""

  config: BertConfig
  num_labels: int
  classifier_dropout: float | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    sequence, _ = BertModel(cfg, add_pooling_layer=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=cfg.prefix)(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        example_ids=example_ids)
    rate = cfg.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout
    sequence = Dropout(rate, cfg.dropout_impl)(sequence, deterministic=deterministic,
                                               example_ids=example_ids)
    logits = dense_on_tokens(dense(cfg, self.num_labels, kernel_init=_normal(cfg),
                                     dtype=self.dtype, param_dtype=self.param_dtype,
                                     name="classifier"), sequence)
    return logits.astype(jnp.float32)


class BertForRelationClassification(nn.Module):
  """A relation between two marked entities -> dropout -> dense over the relations.

  `entity_spans` ([B, 4] int: first and one-past-last token of entity 1, then of entity 2;
  entity markers are not inside a span) say where the entities are. `representation`:
    cls           [CLS] through the family's sentence head, as `BertForSequenceClassification`
                  (same parameters)
    entity_start  the hidden states at the two entities' starts, concatenated ([B, 2H]):
                  the marker before each entity with `start_offset=1` ("entity start" of
                  Baldini Soares et al., 2019), its first token with 0
    entity_mean   the mean hidden state of each entity's tokens, concatenated ([B, 2H])
  """

  config: BertConfig
  num_labels: int
  representation: str = "entity_start"
  start_offset: int = 1
  classifier_dropout: float | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # What `init` feeds after (input_ids, attention_mask, token_type_ids) of one 8-token row
  # (builder.init_inputs): the entities' spans.
  init_extra_inputs = ([[1, 2, 4, 5]],)

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids, entity_spans, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    rate = cfg.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout
    if self.representation == "cls":
      logits = _sentence_logits(self, cfg, self.num_labels, rate, input_ids, attention_mask,
                                token_type_ids, deterministic, example_ids)
      return logits.astype(jnp.float32)
    sequence, _ = BertModel(cfg, add_pooling_layer=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=cfg.prefix)(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        example_ids=example_ids)
    features = entity_features(sequence, entity_spans, self.representation, self.start_offset)
    features = Dropout(rate, cfg.dropout_impl)(features, deterministic=deterministic,
                                               example_ids=example_ids)
    logits = dense(cfg, self.num_labels, kernel_init=_normal(cfg), dtype=self.dtype,
                    param_dtype=self.param_dtype, name="classifier")(features)
    return logits.astype(jnp.float32)


def entity_features(sequence, entity_spans, representation: str, start_offset: int):
  """What a relation head reads of the two entities ([B, 2H], see
  `BertForRelationClassification`): their start positions' states, or their tokens' means."""
  if representation == "entity_start":
    starts = entity_spans[:, 0::2] - start_offset  # [B, 2]
    features = jnp.take_along_axis(sequence, starts[:, :, None], axis=1)
  elif representation == "entity_mean":
    positions = jnp.arange(sequence.shape[1])
    inside = ((positions >= entity_spans[:, 0::2, None])
              & (positions < entity_spans[:, 1::2, None])).astype(sequence.dtype)  # [B, 2, S]
    sums = jnp.einsum("bes,bsh->beh", inside, sequence)
    features = sums / jnp.maximum(inside.sum(-1, keepdims=True), 1)
  else:
    raise ValueError(f"representation {representation!r} is not one of "
                     "('cls', 'entity_start', 'entity_mean')")
  return features.reshape(features.shape[0], -1)


class BertForQuestionAnswering(nn.Module):
  """Every token's hidden state -> dense to (start, end) logits, `[B, S, 2]` (no pooler, no
  dropout on the head, as in Hugging Face)."""

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    sequence, _ = BertModel(cfg, add_pooling_layer=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=cfg.prefix)(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        example_ids=example_ids)
    logits = dense_on_tokens(dense(cfg, 2, kernel_init=_normal(cfg), dtype=self.dtype,
                                     param_dtype=self.param_dtype, name="qa_outputs"), sequence)
    return logits.astype(jnp.float32)


class BertForMaskedLM(nn.Module):
  """The hidden states at `masked_positions` ([B, P] token positions) -> the family's LM head
  -> logits [B, P, vocab]. Every family's is a transform (dense, GELU, LayerNorm), then a decoder
  tied to the word embeddings plus a bias; their names differ:
    BERT     cls/predictions/transform/{dense,LayerNorm}, cls/predictions/bias (the activation
             is hidden_act)
    RoBERTa  lm_head/{dense,layer_norm,bias}
    ELECTRA  generator_predictions/{dense,LayerNorm} (to embedding_size),
             generator_lm_head/bias (ElectraForMaskedLM, the generator's head)

  Only the predicted positions go through the head: the vocabulary projection, the largest
  matmul of the model, runs on those P slots (~15% of the tokens) instead of all S positions.
  """

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_extra_inputs = ([[1, 2]],)  # the masked positions (builder.init_inputs)
  # Continued pretraining starts from a checkpoint's own LM head when it has one
  # (BertForMaskedLM, BertForPreTraining); a task head always starts fresh.
  continues_checkpoint_head = True

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids, masked_positions, *,
               deterministic: bool = True, example_ids=None):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    encoder = BertModel(cfg, add_pooling_layer=False, **kw, name=cfg.prefix)
    sequence, _ = encoder(input_ids, attention_mask, token_type_ids,
                          deterministic=deterministic, example_ids=example_ids)
    hidden = jnp.take_along_axis(sequence, masked_positions[:, :, None], axis=1)  # [B, P, H]
    embedding = encoder.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    if cfg.model_type == "bert":
      return BertLMHead(cfg, **kw, name="cls")(hidden, embedding)
    if cfg.model_type == "electra":
      x = LMTransform(cfg, cfg.embedding_width, "LayerNorm", **kw,
                      name="generator_predictions")(hidden)
      return TiedDecoder(**kw, gemm=cfg.gemm, name="generator_lm_head")(x, embedding)
    return RobertaLMHead(cfg, **kw, name="lm_head")(hidden, embedding)


class BertLMHead(nn.Module):
  """`cls` of Hugging Face's BertForMaskedLM: its one child, `predictions`."""

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, embedding):
    return BertLMPredictionHead(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                                name="predictions")(hidden, embedding)


class LMTransform(nn.Module):
  """dense (to `features`) -> activation -> LayerNorm (named `norm`): the first half of every
  family's LM head. The activation is BERT's hidden_act; RoBERTa and ELECTRA hard-code GELU."""

  config: BertConfig
  features: int
  norm: str = "LayerNorm"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _lm_transform(self, x, self.features, self.norm)


def _lm_transform(module: nn.Module, x, features: int, norm: str):
  """`LMTransform`'s layers, as children of `module` (RoBERTa's lm_head holds them directly)."""
  cfg = module.config
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  x = dense_on_tokens(dense(cfg, features, kernel_init=_normal(cfg), **kw, name="dense"), x)
  x = ACTIVATIONS[cfg.hidden_act](x) if cfg.model_type == "bert" else _gelu(x)
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, **kw, name=norm)(x)


class TiedDecoder(nn.Module):
  """x @ word_embeddings^T + bias: the decoder shares the embeddings, the bias is its own."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gemm: str = "xla"  # `BertConfig.gemm`

  @nn.compact
  def __call__(self, x, embedding):
    return tied_decode(self, x, embedding, self.gemm)


class BertLMPredictionHead(nn.Module):
  """transform -> the tied decoder, whose bias is `predictions/bias`."""

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, embedding):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = LMTransform(self.config, self.config.hidden_size, **kw, name="transform")(hidden)
    return tied_decode(self, x, embedding, self.config.gemm)


class RobertaLMHead(nn.Module):
  """RoBERTa's `lm_head`: dense, GELU, `layer_norm`, then the tied decoder with `lm_head/bias`."""

  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, embedding):
    x = _lm_transform(self, hidden, self.config.hidden_size, "layer_norm")
    return tied_decode(self, x, embedding, self.config.gemm)


def tied_decode(module: nn.Module, x, embedding, gemm: str):
  """`TiedDecoder` with its `bias` a parameter of `module` itself; its product by `gemm`'s
  library (the vocabulary projection is a dense layer's worth of FLOPs, or more)."""
  bias = module.param("bias", nn.initializers.zeros, (embedding.shape[0],), module.param_dtype)
  table = embedding.astype(module.dtype)
  if gemm == "mkl":
    logits = mkl_gemm.matmul(x.reshape(-1, x.shape[-1]), table.T).reshape(
        *x.shape[:-1], table.shape[0])
  else:
    logits = jnp.einsum("bph,vh->bpv", x, table)
  return (logits + bias.astype(module.dtype)).astype(jnp.float32)
