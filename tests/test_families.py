"""RoBERTa, XLM-RoBERTa and ELECTRA through our one Flax encoder, against transformers' PyTorch
models: forward numerics, import -> export -> import, training steps, the input pipeline with
their tokenizers, and PEFT / weight-decay names.

No such checkpoint is on the machine: each is a random-init transformers model saved with
`save_pretrained`, with a tokenizer trained here on `helpers.FAMILY_TEXT` (byte-level BPE for
RoBERTa, SentencePiece Unigram for XLM-R, WordPiece for ELECTRA). Shapes are tiny (2 layers of
32) but for one forward pass at RoBERTa-base shapes.
"""

import dataclasses
import json
import shutil

import datasets
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from configs import default, squad
from helpers import (FAMILY_TEXT, family_checkpoint, family_tokenizer, our_train_steps,
                     step_optimizer, torch_train_steps)
from research import optim, peft, steps, tasks
from research.data import tokenization
from research.data.batches import batch_width, make_batch
from research.data.encoded import IGNORE
from research.models import bert, hf_io

FAMILIES = ("roberta", "xlm-roberta", "electra")
# Max abs differences in float32, measured on a 2-core AMD EPYC (AVX2) (test_numerics_table
# prints them): hidden states 3.5e-6 and pooler 1.7e-6 at RoBERTa-base shapes (9.5e-7 and 1e-7
# for the tiny families'), the heads' logits 1.3e-7 (the masked LMs'; the others' 1e-8 to 7e-8).
TOLERANCE = 1e-5  # the encoder's outputs: 3x
HEAD_TOLERANCE = 1.5e-6  # the heads' logits: ~10x
# Training losses after updates, relative (as tests/test_reference_training.py's): the updated
# weights carry the rounding of the gradients into each later step. Measured 8.1e-6 (ELECTRA's).
RELATIVE_TOLERANCE = 2e-5
NUM_LABELS = 3
# Each task kind, and transformers' auto class of its model.
HEADS = {
    "classification": transformers.AutoModelForSequenceClassification,
    "regression": transformers.AutoModelForSequenceClassification,
    "token_classification": transformers.AutoModelForTokenClassification,
    "question_answering": transformers.AutoModelForQuestionAnswering,
    "masked_lm": transformers.AutoModelForMaskedLM,
}
MAX_DIFFS: dict[tuple[str, str], float] = {}  # (family, output) -> max abs diff, for the report


pytestmark = pytest.mark.usefixtures("quiet_transformers")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("families")
  return {family: family_checkpoint(root / family, family) for family in FAMILIES}


def _padded_batch(config: bert.BertConfig, left: bool, seed: int = 0):
  """Rows of 9, 5, 12 and 2 real tokens (<s>/[CLS] first) padded with pad_token_id to 12, on
  the right or on the left."""
  rng = np.random.default_rng(seed)
  lengths, width = (9, 5, 12, 2), 12
  ids = np.full((len(lengths), width), config.pad_token_id, np.int64)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    real = slice(width - n, width) if left else slice(0, n)
    ids[row, real] = rng.integers(5, config.vocab_size, n)
    ids[row, real.start] = 0 if config.model_type != "electra" else 2  # <s> / [CLS]
    mask[row, real] = 1
  types = np.zeros_like(ids)
  if config.type_vocab_size > 1:
    types[0, 5:9] = 1  # a sentence pair
  return ids, mask, types


def _ours(model, state_dict, inputs):
  """`model`'s params, head included, from a PyTorch state dict (through hf_io), and its
  output on `inputs`."""
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  params = hf_io.params_from_state_dict(state_dict, template, load_head=True)
  return params, model.apply({"params": params}, *inputs)


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  """A copy of `model`'s weights (numpy() alone would share their memory)."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _record(family, output, ours, theirs, relative=False, limit=TOLERANCE):
  """Asserts ours == theirs to `limit` (or RELATIVE_TOLERANCE of theirs) and keeps the
  difference for the table."""
  diff = np.abs(np.asarray(ours) - np.asarray(theirs))
  if relative:
    diff, output = diff / np.abs(theirs), f"{output} (relative)"
  diff = float(diff.max())
  MAX_DIFFS[family, output] = max(diff, MAX_DIFFS.get((family, output), 0.0))
  limit = RELATIVE_TOLERANCE if relative else limit
  assert diff <= limit, f"{family} {output}: max diff {diff:.2e}"


def _compare_encoder(family, config, state_dict, reference, left):
  ids, mask, types = _padded_batch(config, left)
  model = bert.BertModel(config)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask))["params"]
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  params = hf_io.params_from_state_dict(state_dict, {config.prefix: template})[config.prefix]
  sequence, pooled, hidden = model.apply({"params": params}, ids, mask, types,
                                         output_hidden_states=True)
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types), output_hidden_states=True)
  assert len(hidden) == len(out.hidden_states) == config.num_hidden_layers + 1
  real = mask.astype(bool)  # padding positions' states are never read
  for ours, theirs in zip(hidden, out.hidden_states):
    _record(family, "hidden states", np.asarray(ours)[real], theirs.numpy()[real])
  if config.has_pooler:
    _record(family, "pooled", pooled, out.pooler_output.numpy())
  else:
    assert pooled is None


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_matches_transformers(checkpoints, family):
  """Every layer's hidden states and the pooler, on rows of mixed lengths padded on the right,
  then on the left: RoBERTa's and XLM-R's position ids count real tokens only, so left padding
  does not shift them (ids 0, 1, ... would pass the first batch and fail the second)."""
  config, raw = hf_io.load_config(checkpoints[family])
  assert config.model_type == family and raw["model_type"] == family
  # RoBERTa's positions start at pad_token_id + 1: 66 position embeddings hold 64 tokens.
  assert config.max_length == (66 if family == "electra" else 64)
  reference = transformers.AutoModel.from_pretrained(str(checkpoints[family])).eval()
  state = hf_io.read_state_dict(checkpoints[family])
  for left in (False, True):
    _compare_encoder(family, config, state, reference, left)


def test_encoder_matches_transformers_at_roberta_base_shapes():
  """12 layers of 768 (a small vocabulary): the numerics hold at the size papers fine-tune."""
  torch.manual_seed(0)
  reference = transformers.RobertaModel(transformers.RobertaConfig(
      vocab_size=1000, max_position_embeddings=514, pad_token_id=1, type_vocab_size=1)).eval()
  config = bert.BertConfig.from_dict(reference.config.to_dict())
  _compare_encoder("roberta-base shapes", config, _state(reference), reference, left=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_task_heads_match_transformers_and_export_round_trips(checkpoints, family, tmp_path):
  """Each task kind's logits against transformers' *For* model of the family, heads included
  (RoBERTa's dense + tanh + out_proj classifier, ELECTRA's with GELU, the LM heads); then
  import -> export -> import is bit-exact, and transformers loads the export as the family's own
  class (model_type kept) with the same logits."""
  source = checkpoints[family]
  config, raw = hf_io.load_config(source)
  ids, mask, types = _padded_batch(config, left=False)
  positions = np.asarray([[1, 3], [2, 4], [0, 11], [1, 1]], np.int32)
  for kind, auto in HEADS.items():
    num_labels = {"question_answering": 2, "regression": 1}.get(kind, NUM_LABELS)
    torch.manual_seed(1)
    reference = auto.from_pretrained(str(source), num_labels=num_labels).eval()
    model = tasks.get(kind).build_model(config, num_labels, dtype=jnp.float32,
                                        param_dtype=jnp.float32, classifier_dropout=None)
    inputs = (ids, mask, types) + ((positions,) if kind == "masked_lm" else ())
    params, ours = _ours(model, _state(reference), inputs)
    ours = np.asarray(ours)
    theirs = _logits(kind, reference, ids, mask, types, positions)
    real = mask == 1 if kind in ("token_classification", "question_answering") else slice(None)
    _record(family, kind, ours[real], theirs[real], limit=HEAD_TOLERANCE)

    task = ml_collections.ConfigDict(dict(kind=kind, representation="cls"))
    architecture = tasks.kind_of(task).hf_architecture(task, config.model_type)
    out = tmp_path / kind
    names = ("a", "b", "c") if num_labels == NUM_LABELS else ()
    hf_io.export(params, out, base_config=raw, architecture=architecture, label_names=names,
                 num_labels=tasks.get(kind).num_outputs(names), tokenizer_dir=source)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == family and saved["architectures"] == [architecture]
    again = hf_io.params_from_state_dict(hf_io.read_state_dict(out), params, load_head=True)
    jax.tree.map(np.testing.assert_array_equal, again, params)
    exported = auto.from_pretrained(str(out)).eval()
    assert type(exported).__name__ == architecture
    _record(family, f"export {kind}", ours[real],
            _logits(kind, exported, ids, mask, types, positions)[real], limit=HEAD_TOLERANCE)
  assert transformers.AutoTokenizer.from_pretrained(str(out))("the cat")["input_ids"]


def _logits(kind, reference, ids, mask, types, positions):
  """transformers' output in the shape of ours: [B, S, 2] for QA, the masked positions' rows
  for a masked LM."""
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types))
  if kind == "question_answering":
    return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
  if kind == "masked_lm":
    return np.take_along_axis(out.logits.numpy(), positions[:, :, None], axis=1)
  return out.logits.numpy()


def _pairs():
  """Sentence pairs (consecutive lines of FAMILY_TEXT) with 3 labels."""
  lines = FAMILY_TEXT.splitlines()
  n = len(lines) - 1
  return datasets.Dataset.from_dict({"sentence1": lines[:n], "sentence2": lines[1:],
                                     "label": [i % NUM_LABELS for i in range(n)]})


def test_tokenizers_load_as_auto_tokenizer_loads_them(checkpoints, tmp_path):
  """`load_tokenizer` names a family's class itself (AutoTokenizer imports torch): the class
  transformers registers for the family, and the tokenizer AutoTokenizer loads."""
  registered = transformers.models.auto.tokenization_auto.TOKENIZER_MAPPING_NAMES
  assert tokenization.FAMILY_TOKENIZERS == {
      family: registered[family].removesuffix("Fast")
      for family in tokenization.FAMILY_TOKENIZERS}
  # A checkpoint whose tokenizer_config.json names another family's class: AutoTokenizer
  # decides (it loads the class registered for config.json's model_type).
  mismatched = tmp_path / "roberta_declared_as_bert"
  shutil.copytree(checkpoints["roberta"], mismatched)
  settings = json.loads((mismatched / "tokenizer_config.json").read_text())
  (mismatched / "tokenizer_config.json").write_text(
      json.dumps({**settings, "tokenizer_class": "BertTokenizerFast"}))
  direct = 0
  for path in (hf_io.embedded_checkpoint_dir(), *checkpoints.values(), mismatched):
    ours = tokenization.load_tokenizer(path)
    auto = transformers.AutoTokenizer.from_pretrained(str(path))
    direct += tokenization._family_tokenizer_class(path) is not None
    assert type(ours) is type(auto), path
    assert ours.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str(), path
    assert ours.special_tokens_map == auto.special_tokens_map, path
    texts = FAMILY_TEXT.splitlines()[:4]
    expected = auto(texts[:2], texts[2:])
    assert {k: ours(texts[:2], texts[2:])[k] for k in expected} == dict(expected), path
  assert direct == 4 and tokenization._family_tokenizer_class(mismatched) is None


PAIRS_TASK = ml_collections.ConfigDict(dict(
    kind="classification", text_fields=("sentence1", "sentence2"), label_field="label",
    label_names=("a", "b", "c")))


@pytest.mark.parametrize("family", FAMILIES)
def test_pairs_are_encoded_by_the_tokenizer(checkpoints, family):
  """A pair is what the family's tokenizer makes of it: RoBERTa's and XLM-R's
  `<s> A </s></s> B </s>` with one token type, ELECTRA's `[CLS] A [SEP] B [SEP]` with two."""
  tokenizer = tokenization.load_tokenizer(checkpoints[family])
  rows = _pairs()
  split = tasks.kind_of(PAIRS_TASK).encode(rows, tokenizer, PAIRS_TASK, 64, "pairs")
  for i in range(3):
    expected = transformers.AutoTokenizer.from_pretrained(str(checkpoints[family]))(
        rows[i]["sentence1"], rows[i]["sentence2"], truncation=True, max_length=64)["input_ids"]
    assert split.input_ids[i, :split.lengths[i]].tolist() == expected
  ids, types = split.input_ids[0, :split.lengths[0]], split.token_type_ids[0, :split.lengths[0]]
  separators = np.flatnonzero(ids == tokenizer.sep_token_id)
  if family == "electra":
    assert len(separators) == 2 and types[separators[0] + 1:].all() and not types[:3].any()
  else:
    assert len(separators) == 3 and separators[1] == separators[0] + 1  # </s></s>
    assert ids[0] == tokenizer.cls_token_id == 0 and not split.token_type_ids.any()


NER_WORDS = [["John", "Smith", "visited", "Madrid", "yesterday"],
             ["Maria", "works", "for", "the", "United", "Nations"]]
NER_TAGS = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-PER", "O", "O", "O", "B-ORG", "I-ORG"]]


@pytest.mark.parametrize("family", ("roberta", "modernbert"))
def test_token_classification_labels_first_sub_word_of_byte_level_bpe(checkpoints, family,
                                                                       tmp_path):
  """Words through a byte-level BPE tokenizer get the space a word has in running text
  (add_prefix_space), so each word's first sub-word is `Ġ...`; its tag sits there, on no other
  sub-word. RoBERTa's tokenizer class and ModernBERT's (a plain PreTrainedTokenizerFast with
  [CLS]/[SEP]) alike."""
  names = ("O", "B-PER", "I-PER", "B-LOC", "B-ORG", "I-ORG")
  task = ml_collections.ConfigDict(dict(kind="token_classification", text_fields=("tokens",),
                                        label_field="tags", label_names=names))
  source = checkpoints[family] if family in checkpoints else family_tokenizer(tmp_path, family)
  tokenizer = tokenization.load_tokenizer(source)
  assert not getattr(tokenizer, "add_prefix_space", False)  # as shipped: the pipeline adds it
  rows = datasets.Dataset.from_dict({"tokens": NER_WORDS, "tags": NER_TAGS})
  split = tasks.kind_of(task).encode(rows, tokenizer, task, 32, "ner")
  for i, (words, tags) in enumerate(zip(NER_WORDS, NER_TAGS)):
    tokens = tokenizer.convert_ids_to_tokens(split.input_ids[i, :split.lengths[i]].tolist())
    first = np.flatnonzero(split.word_index[i] >= 0)
    assert split.word_index[i, first].tolist() == list(range(len(words)))
    assert [names[t] for t in split.labels[i, first]] == tags
    assert all(tokens[p].startswith("Ġ") for p in first)
    assert sum(t.startswith("Ġ") for t in tokens) == len(words)  # each word starts once
    assert (split.labels[i][split.word_index[i] < 0] == IGNORE).all()
    assert len(first) < split.lengths[i] - 2  # some word has more than one sub-word


@pytest.mark.parametrize("family", ("roberta", "xlm-roberta"))
def test_question_answering_windows_find_the_answer(checkpoints, family):
  """Questions and long contexts as the tokenizer pairs and windows them (`</s></s>`, 4
  special tokens for RoBERTa's and XLM-R's): every window that holds the answer labels tokens
  whose offsets are the answer's characters."""
  context = " ".join(FAMILY_TEXT.splitlines())
  answer = "the United Nations"
  rows = datasets.Dataset.from_dict({
      "id": ["q"], "question": ["Where does John Smith work?"], "context": [context],
      "answers": [{"text": [answer], "answer_start": [context.index(answer)]}]})
  task = squad.get_config().task
  task.doc_stride = 16
  tokenizer = tokenization.load_tokenizer(checkpoints[family])
  split = tasks.kind_of(task).encode(rows, tokenizer, task, 64, "qa")
  assert len(split) > 3  # the context takes several windows
  found = 0
  for f in range(len(split)):
    first, last = split.labels[f]
    if (first, last) == (0, 0):
      continue
    found += 1
    start, end = split.offsets[f, first, 0], split.offsets[f, last, 1]
    assert context[start:end] == answer
  assert found >= 1


@pytest.mark.parametrize("family", ("roberta", "electra"))
def test_training_steps_match_transformers_and_torch_adamw(checkpoints, family):
  """Four steps of our train step (AdamW with the weight-decay mask, warm-up, clipping) on pair
  batches, and transformers' *ForSequenceClassification with torch.optim.AdamW on the same
  batches from the same weights, dropout off: the same losses and the same weights after (the
  first step has learning rate 0; the last repeats the first batch, whose loss must have
  fallen). XLM-R's model is RoBERTa's: compiling its step again would show nothing new."""
  source = checkpoints[family]
  config, _ = hf_io.load_config(source)
  config = dataclasses.replace(config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  tokenizer = tokenization.load_tokenizer(source)
  split = tasks.kind_of(PAIRS_TASK).encode(_pairs(), tokenizer, PAIRS_TASK, 64, "pairs")
  rows = [np.arange(3 * i, 3 * i + 3) for i in (0, 1, 2, 0)]
  width = max(batch_width(split, r, (16, 32, 64)) for r in rows)  # one program
  batches = [make_batch(split, r, (), width) for r in rows]
  model = tasks.get("classification").build_model(config, NUM_LABELS, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  # The head's initialisation, which ours takes over: wide (std 0.3), so that its logits and the
  # gradients it sends into the encoder are far from zero.
  torch.manual_seed(2)
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(source), num_labels=NUM_LABELS, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, initializer_range=0.3)
  start = _state(reference)
  inputs = steps.model_inputs(batches[0])
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
  params = hf_io.params_from_state_dict(
      start, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template), load_head=True)
  ocfg = step_optimizer()
  ours, final_params, schedule = our_train_steps(model, params, batches, ocfg)
  theirs = torch_train_steps(reference, batches, ocfg, schedule,
                             ("input_ids", "attention_mask", "token_type_ids"),
                             lambda name: name.endswith("bias") or "LayerNorm" in name)
  _record(family, "training losses (4 steps)", ours, theirs, relative=True)
  assert theirs[-1] < theirs[0] - 0.05  # it trained
  final = hf_io.state_dict_from_params(final_params)
  reference_final = _state(reference)
  assert set(final) <= set(start)
  for key in final:
    value = start[key]
    update, reference_update = final[key] - value, reference_final[key] - value
    scale = np.abs(reference_update).max()
    if key.endswith("attention.self.key.bias"):  # softmax ignores it: no gradient, only decay
      continue
    assert scale > 1e-5, key  # every tensor moved
    # measured 2.5e-4 of the scale at worst (RoBERTa's classifier.dense) on 2-core EPYC; 12x
    np.testing.assert_allclose(update, reference_update, atol=0.003 * scale, err_msg=key)


@pytest.mark.parametrize("family", ("roberta", "electra"))
def test_lora_weight_decay_and_freezing_see_the_family_names(checkpoints, family):
  """The default LoRA targets and weight-decay regex match `roberta/...` and `electra/...`
  parameters; ELECTRA's embeddings projection sits with the embeddings (frozen with them, and
  at their depth for layer-wise learning rates)."""
  config, _ = hf_io.load_config(checkpoints[family])
  model = tasks.get("classification").build_model(config, NUM_LABELS, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  ids = np.ones((1, 4), np.int32)
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                        jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids))["params"])
  c = default.get_config()
  factors = peft.lora_init(c.peft, params, jax.random.key(0))
  adapted = {"/".join(path[:-1]) for path in traverse_util.flatten_dict(factors)}
  prefix = config.prefix
  assert adapted == {f"{prefix}/encoder/layer/{i}/attention/self/{name}"
                     for i in range(2) for name in ("query", "value")}
  decays = {name: bool(d) for name, d in zip(
      optim.param_names(params), jax.tree.leaves(optim.regex_mask(
          params, c.optimizer.weight_decay_pattern)))}
  assert decays[f"{prefix}/embeddings/word_embeddings/embedding"]
  assert decays[f"{prefix}/encoder/layer/1/output/dense/kernel"]
  assert decays["classifier/dense/kernel"] and decays["classifier/out_proj/kernel"]
  assert not decays[f"{prefix}/embeddings/LayerNorm/scale"]
  assert not decays["classifier/out_proj/bias"]
  c.peft.freeze_bottom_layers = 1
  trainable = {name for name in optim.param_names(params)
               if peft.is_trainable(c.peft, tuple(name.split("/")))}
  assert not any(n.startswith((f"{prefix}/embeddings", f"{prefix}/encoder/layer/0/"))
                 for n in trainable)
  assert f"{prefix}/encoder/layer/1/output/dense/kernel" in trainable
  assert "classifier/out_proj/kernel" in trainable
  if family == "electra":
    assert decays["electra/embeddings_project/kernel"]
    assert optim.layer_depth(("electra", "embeddings_project", "kernel"), 2) == 0
    assert "electra/embeddings_project/kernel" not in trainable


def test_unsupported_model_type_and_foreign_architecture_are_named(tmp_path):
  with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported; supported: bert, "
                                       r"roberta, xlm-roberta, electra"):
    bert.BertConfig.from_dict({"model_type": "gpt2"})
  with pytest.raises(ValueError, match=r"'BertForSequenceClassification' is not a roberta "
                                       r"class \(Roberta\.\.\.\)"):
    hf_io.export({}, tmp_path / "out", base_config={"model_type": "roberta"},
                 architecture="BertForSequenceClassification", label_names=(), num_labels=2,
                 tokenizer_dir=tmp_path)
  assert not (tmp_path / "out").exists()


def test_numerics_table():
  """Runs last: the family x output table of max differences (pytest -s shows it); each test
  above asserted its own."""
  lines = [f"{family:22s} {output:40s} {diff:.2e}" for (family, output), diff in
           sorted(MAX_DIFFS.items())]
  print("\nmax abs diff against transformers (float32)\n" + "\n".join(lines))
