"""A task's model from a config: architecture, tokenizer and initial parameters.

Training (`train.py`) and inference (`inference.py`: eval, predict, export) both build the
model of a config here, so that inference needs nothing of the training loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from research import config_lib, tasks
from research.data import tokenization
from research.models import bert, hf_io, mkl_gemm


@dataclasses.dataclass
class ModelSetup:
  model: Any                        # a Flax module from TaskKind.build_model
  bert_config: bert.BertConfig
  hf_config: dict[str, Any]         # the source config.json, kept for export
  checkpoint_dir: pathlib.Path | None
  tokenizer_dir: pathlib.Path
  tokenizer: Any                    # the fast tokenizer, with entity markers if the task has them
  compute: dict[str, str]           # what computes: dtype, dense matmuls and why, CPU, XLA_FLAGS


def build_model(config: ml_collections.ConfigDict) -> ModelSetup:
  """The model of `config.model`: a Hugging Face checkpoint, or random init when it is ''."""
  mcfg = config.model
  if mcfg.checkpoint:
    checkpoint_dir = hf_io.resolve_checkpoint(mcfg.checkpoint)
    bert_config, hf_config = hf_io.load_config(checkpoint_dir)
    if mcfg.num_layers_kept:
      logging.info("keeping the first %d of the checkpoint's %d layers (model.num_layers_kept)",
                   mcfg.num_layers_kept, bert_config.num_hidden_layers)
  else:
    checkpoint_dir = None
    bert_config = bert.BertConfig(**mcfg.architecture.to_dict())
    hf_config = {"model_type": "bert", **bert_config.to_dict()}
  gemm, why = choose_gemm(mcfg)
  try:
    run_config = kept_layers(bert_config, mcfg).with_run_options(
        hidden_dropout=mcfg.hidden_dropout_prob,
        attention_dropout=mcfg.attention_probs_dropout_prob, dropout_impl=mcfg.dropout_impl,
        remat=mcfg.remat, gemm=gemm, attention=mcfg.attention)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.model: {e}") from None
  # What a run changes (dropout rates, the layers kept) goes into the export's config.
  before = bert_config.to_dict()
  hf_config.update({k: v for k, v in run_config.to_dict().items() if before.get(k) != v})
  bert_config = run_config
  if config.data.max_length > bert_config.max_length:
    raise config_lib.ConfigError(
        f"config.data.max_length: {config.data.max_length} exceeds the {bert_config.max_length} "
        f"tokens that the model's max_position_embeddings "
        f"{bert_config.max_position_embeddings} hold")
  tokenizer_dir = (hf_io.resolve_checkpoint(mcfg.tokenizer) if mcfg.tokenizer
                   else checkpoint_dir)
  if tokenizer_dir is None:
    raise config_lib.ConfigError("config.model.tokenizer: a randomly initialised model needs a "
                                 "tokenizer ('embedded', a directory or a hub name)")
  hf_io.require_tokenizer(tokenizer_dir, "config.model.tokenizer" if mcfg.tokenizer
                         else "config.model.checkpoint")
  task = config.task
  kind = tasks.kind_of(task)
  tokenizer = tokenization.load_tokenizer(tokenizer_dir)
  markers = kind.entity_markers(task)
  if markers:  # new tokens: the embedding matrix grows to hold them (hf_io.grow_vocabulary)
    ids = tokenization.add_marker_tokens(tokenizer, markers)
    bert_config = dataclasses.replace(
        bert_config, vocab_size=max(bert_config.vocab_size, max(ids) + 1))
    hf_config["vocab_size"] = bert_config.vocab_size
  model = kind.build_model(bert_config, kind.num_outputs(tuple(task.label_names)),
                           dtype=jnp.dtype(mcfg.dtype), param_dtype=jnp.dtype(mcfg.param_dtype),
                           classifier_dropout=mcfg.classifier_dropout, task=task)
  compute = {"dtype": mcfg.dtype, "gemm": gemm, "gemm_reason": why,
             "cpu": mkl_gemm.cpu_description(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  return ModelSetup(model, bert_config, hf_config, checkpoint_dir, tokenizer_dir, tokenizer,
                    compute)


def kept_layers(architecture, mcfg: ml_collections.ConfigDict):
  """`architecture` (a checkpoint's) with only its first `mcfg.num_layers_kept` layers (0: all
  of them); its family's config class knows what else the depth sets (`with_layers`)."""
  kept = mcfg.num_layers_kept
  if not kept:
    return architecture
  if kept > architecture.num_hidden_layers:
    raise config_lib.ConfigError(
        f"config.model.num_layers_kept: {kept} exceeds the checkpoint's "
        f"{architecture.num_hidden_layers} layers")
  return architecture.with_layers(kept)


def choose_gemm(mcfg: ml_collections.ConfigDict) -> tuple[str, str]:
  """The dense layers' matmuls for `mcfg.gemm` on this machine, and why (logged: the same
  config picks MKL on a CPU with bfloat16 units and XLA elsewhere, `mkl_gemm.choose`)."""
  try:
    gemm, why = mkl_gemm.choose(mcfg.gemm, mcfg.dtype)
  except mkl_gemm.Unavailable as e:
    raise config_lib.ConfigError(f"config.model.gemm: 'mkl' cannot run here: {e}") from None
  logging.info("dense matmuls: %s (%s)", gemm.upper(), why)
  return gemm, why


def with_checkpoint_architecture(config: ml_collections.ConfigDict
                                 ) -> ml_collections.ConfigDict:
  """A copy of `config` whose `model.architecture` is the checkpoint's (read from its
  config.json), so that the run's config.json shows the model that was trained rather than
  the unused default shapes; random init keeps its own."""
  if not config.model.checkpoint:
    return config
  bert_config, _ = hf_io.load_config(hf_io.resolve_checkpoint(config.model.checkpoint))
  bert_config = kept_layers(bert_config, config.model)
  config = config.copy_and_resolve_references()
  config.model.architecture = type(config.model.architecture)(bert_config.to_dict())
  return config


def init_inputs(model) -> tuple[jax.Array, ...]:
  """A one-row batch of `model`'s positional inputs, to initialise it (shapes only): a head
  that reads more than the tokens says what (`init_extra_inputs`, a model class attribute)."""
  dummy = jnp.ones((1, 8), jnp.int32)
  extra = getattr(model, "init_extra_inputs", ())
  return (dummy, dummy, jnp.zeros_like(dummy)) + tuple(jnp.asarray(x, jnp.int32) for x in extra)


def init_params(setup: ModelSetup, rng: jax.Array) -> Any:
  """Fresh parameters from `rng`, then the checkpoint's encoder weights over them (host numpy).

  With a checkpoint, only the leaves it does not overwrite are computed (`hf_io.
  initialised_leaves`): the same values as a whole init, whose encoder would cost seconds of
  compilation to be thrown away. Logged before and after: compiling the init takes a while."""
  logging.info("compiling and running the parameter init ...")
  start = time.perf_counter()
  params = _init_params(setup, rng)
  logging.info("... parameters initialised in %.1f s", time.perf_counter() - start)
  return params


def _init_params(setup: ModelSetup, rng: jax.Array) -> Any:
  inputs = init_inputs(setup.model)

  def init(r):
    return setup.model.init(r, *inputs)["params"]

  if setup.checkpoint_dir is None:
    return jax.tree.map(np.asarray, jax.jit(init)(rng))
  state = hf_io.read_state_dict(setup.checkpoint_dir)
  shapes = jax.eval_shape(init, rng)
  continues = getattr(setup.model, "continues_checkpoint_head", False)  # a masked LM's
  lm_head = continues and hf_io.has_head(state, shapes)
  if continues and not lm_head:
    logging.info("the checkpoint has no masked-LM head of this model's (%s): it starts "
                 "freshly initialised", ", ".join(k for k in shapes if k in hf_io.HEADS))
  used = sorted(hf_io.initialised_leaves(state, shapes, load_head=lm_head))
  shapes = traverse_util.flatten_dict(shapes)
  values = jax.jit(lambda r: [traverse_util.flatten_dict(init(r))[path] for path in used])(rng)
  params = traverse_util.unflatten_dict({**shapes, **{
      path: np.asarray(value) for path, value in zip(used, values)}})
  state = hf_io.grow_vocabulary(state, params)
  return hf_io.params_from_state_dict(state, params, load_head=lm_head)
