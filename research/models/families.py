"""The model families, by the `model_type` of a checkpoint's config.json: which config class
reads it, which Flax class each task kind trains, and where a family keeps its embeddings,
layers and task heads in the parameter tree (for freezing, layer-wise learning rates and
loading).

BERT, RoBERTa, XLM-R and ELECTRA are one family in code (`bert.py`: switches on
`BertConfig.model_type`); ModernBERT (`modernbert.py`) and DeBERTa-v2/v3 (`deberta_v2.py`) are
their own. A new family is a module with a config class (`from_dict`, `to_dict`,
`with_run_options`, `with_layers`, `prefix`, `max_length`) and its task models, and a row in
each table here.
"""

from __future__ import annotations

from typing import Any

from research.config_base import ConfigError
from research.models import bert, deberta_v2, modernbert

# model_type -> its config class; every other model_type is read by BertConfig (which names
# the ones it supports when it meets another).
CONFIGS = {"modernbert": modernbert.ModernBertConfig, "deberta-v2": deberta_v2.DebertaV2Config}
# model_type -> the prefix of its transformers classes (`RobertaForSequenceClassification`).
CLASS_PREFIXES = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta",
                  "electra": "Electra", "modernbert": "ModernBert",
                  "deberta-v2": "DebertaV2"}
# Each family's model of each head a task kind asks for (`TaskKind.build_model`).
MODELS = {
    bert.BertConfig: {"sequence": bert.BertForSequenceClassification,
                      "token": bert.BertForTokenClassification,
                      "relation": bert.BertForRelationClassification,
                      "question_answering": bert.BertForQuestionAnswering,
                      "masked_lm": bert.BertForMaskedLM},
    modernbert.ModernBertConfig: {"sequence": modernbert.ModernBertForSequenceClassification,
                                  "token": modernbert.ModernBertForTokenClassification,
                                  "relation": modernbert.ModernBertForRelationClassification,
                                  "question_answering": modernbert.ModernBertForQuestionAnswering,
                                  "masked_lm": modernbert.ModernBertForMaskedLM},
    deberta_v2.DebertaV2Config: {"sequence": deberta_v2.DebertaV2ForSequenceClassification,
                                 "token": deberta_v2.DebertaV2ForTokenClassification,
                                 "relation": deberta_v2.DebertaV2ForRelationClassification,
                                 "question_answering": deberta_v2.DebertaV2ForQuestionAnswering,
                                 "masked_lm": deberta_v2.DebertaV2ForMaskedLM},
}
# Each encoder name (its state-dict prefix) -> the task-head names of its family's models.
HEADS_OF = {**{prefix: bert.HEADS for prefix in bert.ENCODERS},
            modernbert.PREFIX: modernbert.HEADS, deberta_v2.PREFIX: deberta_v2.HEADS}
ENCODERS = tuple(HEADS_OF)
HEADS = tuple(dict.fromkeys(h for heads in HEADS_OF.values() for h in heads))
# The word-embedding table's name under each family's encoder.
WORD_EMBEDDINGS = {**{prefix: ("embeddings", "word_embeddings") for prefix in bert.ENCODERS},
                   modernbert.PREFIX: ("embeddings", "tok_embeddings"),
                   deberta_v2.PREFIX: ("embeddings", "word_embeddings")}
# Parts of a model that load from a checkpoint that has them and start fresh otherwise, as
# transformers does: BERT's pooler (a masked LM has none), ModernBERT's prediction head (its
# masked LM and its classifiers share the name).
OPTIONAL = tuple((prefix, "pooler") for prefix in bert.ENCODERS) + (("head",),)


def config_from_dict(values: dict[str, Any]):
  """The architecture of a config.json dict, by its `model_type` (default `bert`)."""
  return CONFIGS.get(values.get("model_type", "bert"), bert.BertConfig).from_dict(values)


def model_class(config, head: str):
  """The Flax class of `config`'s family for `head` (a key of `MODELS`' rows)."""
  models = MODELS[type(config)]
  if head not in models:
    families = sorted(t for c, row in MODELS.items() if head in row
                      for t in _model_types(c))
    raise ConfigError(f"config.task.kind: {config.model_type} has no {head} model here; "
                      f"{', '.join(families)} have one")
  return models[head]


def _model_types(config_class) -> tuple[str, ...]:
  return tuple(bert.MODEL_TYPES) if config_class is bert.BertConfig else tuple(
      t for t, c in CONFIGS.items() if c is config_class)


def layer_of(path: tuple[str, ...]) -> int | None:
  """The encoder layer a parameter belongs to (None: embeddings, head or outside)."""
  if path[0] in bert.ENCODERS + (deberta_v2.PREFIX,) and path[1:3] == ("encoder", "layer"):
    return int(path[3])
  if path[:3] == (deberta_v2.PREFIX, "encoder", "conv"):  # v2's convolution follows layer 0
    return 0
  if path[:2] == (modernbert.PREFIX, "layers"):
    return int(path[2])
  return None


def is_embeddings(path: tuple[str, ...]) -> bool:
  """Whether a parameter is the encoder's input embeddings (ELECTRA's projection included;
  DeBERTa's relative-position table with its LayerNorm)."""
  if path[0] in bert.ENCODERS:
    return path[1] in bert.EMBEDDINGS
  if path[0] == deberta_v2.PREFIX:
    return path[1] == "embeddings" or path[1:3] in deberta_v2.EMBEDDINGS
  return path[:2] == (modernbert.PREFIX, "embeddings")
