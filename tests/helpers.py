"""Small configs and data for fast tests."""

import importlib.util
import json
import pathlib
import sys

import numpy as np

from configs import sst2


def load_encoded(data_cfg, task_cfg, tokenizer, split: str, limit: int = 0):
  """A split read and encoded as a run of `task_cfg`'s kind does (research.data.splits)."""
  from research import tasks
  from research.data import splits
  return splits.load_encoded(data_cfg, task_cfg, tasks.kind_of(task_cfg), tokenizer, split, limit)


def tiny_config(**updates):
  """SST-2 with a 1-layer, 32-wide random BERT on a slice: seconds per run on 2 cores (one
  layer, as tracing and compiling the steps dominate and grow with every layer)."""
  c = sst2.get_config()
  c.model.checkpoint = ""
  c.model.tokenizer = "embedded"
  c.model.architecture.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64)
  c.data.train_examples = 192
  c.data.eval_examples = 50
  c.data.max_length = 64
  c.data.length_buckets = (64,)  # one train and one eval program per run: tracing them dominates
  c.train.batch_size = 16
  c.train.num_epochs = 2.0
  c.eval.batch_size = 16
  c.log.every_steps = 1
  c.checkpoint.every_steps = 5
  c.parallel.num_devices = 1
  for key, value in updates.items():
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


def tiny_checkpoint(path: pathlib.Path) -> pathlib.Path:
  """A 2-layer, 32-wide random BERT (with pooler) saved by transformers, with the embedded
  checkpoint's tokenizer: a `model.checkpoint` that loads in seconds."""
  import torch
  import transformers
  from research.models import hf_io
  torch.manual_seed(0)
  transformers.BertModel(transformers.BertConfig(
      vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
  transformers.AutoTokenizer.from_pretrained(hf_io.embedded_checkpoint_dir()).save_pretrained(path)
  return path


def assert_rescored(workdir: pathlib.Path, split: str = "validation",
                    checkpoint: str = "final") -> list[str]:
  """The per-example predictions a run saved for an evaluation rescore (research.compare's
  scorers, the project's metric functions) to every metric it reported that can be
  resampled; returns those metrics."""
  from research import compare
  evaluation = compare.load_evaluation(pathlib.Path(workdir), split, checkpoint)
  scorers = compare.scorers(evaluation, evaluation)
  everything = np.arange(len(evaluation.examples["gold"]))
  checked = [name for name in evaluation.reported if name in scorers]
  assert checked, evaluation.reported
  for name in checked:
    np.testing.assert_allclose(scorers[name](everything), evaluation.reported[name],
                               rtol=1e-9, atol=1e-12, err_msg=name)
  return checked


def train_rows(workdir: pathlib.Path) -> list[dict]:
  """The training rows of a run's metrics.jsonl (step, loss, grad_norm, learning_rate, ...)."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if r["split"] == "train"]


def train_losses(workdir: pathlib.Path) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in train_rows(workdir)}


def final_state(workdir: pathlib.Path, *, best: bool = False, metric: str = "accuracy"):
  """(step, train state) of the newest checkpoint of a run (host numpy, the tree as saved);
  with `best`, (step, params) of its best checkpoint by `metric`."""
  from research import checkpoints
  ckpts = checkpoints.Checkpoints(pathlib.Path(workdir), keep=5, best_metric=metric,
                                  best_mode="max")
  try:
    if best:
      return ckpts.best_step(), ckpts.restore_best(None)[0]
    return ckpts.latest_step(), ckpts.restore_state(None)[0]
  finally:
    ckpts.close()


def jsonl_history(workdir: pathlib.Path) -> dict[int, dict]:
  """metrics.jsonl as {step: {"<split>/<name>": value}}, the rows W&B and TensorBoard show."""
  history = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    step, split = row.pop("step"), row.pop("split")
    history.setdefault(step, {}).update({f"{split}/{k}": v for k, v in row.items()})
  return history


def write_steps(writer, steps, scale: float = 1.0):
  """Metrics of `steps` through a `writers.MetricWriter`: train rows, and eval rows on even
  steps; `scale` changes the values (a recomputed step that differs)."""
  for step in steps:
    writer.write(step, "train", {"loss": np.float32(scale / step),
                                 "learning_rate": 1e-3 * step})
    if step % 2 == 0:
      writer.write(step, "eval", {"accuracy": np.float64(0.5 + scale * step / 100),
                                  "examples": 50})


def assert_same_params(a, b):
  """Two train states hold bit-identical parameters."""
  import jax
  flat_a, flat_b = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
  assert len(flat_a) == len(flat_b) > 0
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def experiment_script(relative_path: str):
  """An experiment's run.py (a script, not a package) as a module, loaded once."""
  name = relative_path.replace("/", "_").removesuffix(".py")
  if name not in sys.modules:
    path = pathlib.Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(name, path)
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  return sys.modules[name]


def get_config(arg=None):
  """`--config tests/helpers.py`: the tiny config on the command line (multi-process tests)."""
  del arg
  return tiny_config()


# Text to train the test tokenizers on: tests need no data files to build RoBERTa-, XLM-R- and
# ELECTRA-style tokenizers.
FAMILY_TEXT = """\
the cat sat on the mat and the dog ran under the big red house
a stunning film with great actors , though the story drags in the middle
Paris is the capital of France and Berlin is the capital of Germany
John Smith works for the United Nations in New York since 2019
the quick brown fox jumps over the lazy dog again and again
she did not like the ending , but the music was wonderful
Le chat dort sur le canapé pendant que la pluie tombe
Der Hund läuft schnell über die grüne Wiese zum Fluss
we visited London , Madrid and Rome during the summer holidays
an utterly forgettable movie that wastes its talented cast
the river flows slowly past the old mill and the small bridge
Maria bought three apples , two pears and a basket of cherries
"""

FAMILY_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0..4


def family_tokenizer(path: pathlib.Path, model_type: str) -> pathlib.Path:
  """A tokenizer of a family trained on `FAMILY_TEXT` and saved in `path`: byte-level BPE for
  RoBERTa, SentencePiece Unigram for XLM-R, WordPiece for ELECTRA (and BERT), and for
  ModernBERT what its checkpoints ship: byte-level BPE with BERT's special tokens, joined as
  `[CLS] A [SEP] B [SEP]`, saved as a plain `PreTrainedTokenizerFast`; for DeBERTa-v3 a
  `DebertaV2Tokenizer` (Unigram, DeBERTa-v3's special-token ids: [PAD] 0, [CLS] 1, [SEP] 2,
  [UNK] 3, [MASK] last)."""
  import tokenizers
  import transformers
  from tokenizers import processors
  lines = FAMILY_TEXT.splitlines() * 4
  specials = dict(bos_token="<s>", cls_token="<s>", pad_token="<pad>", eos_token="</s>",
                  sep_token="</s>", unk_token="<unk>", mask_token="<mask>")
  if model_type == "roberta":
    backend = tokenizers.ByteLevelBPETokenizer()
    backend.train_from_iterator(lines, vocab_size=400, min_frequency=1,
                                special_tokens=list(FAMILY_SPECIALS))
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = transformers.RobertaTokenizerFast(tokenizer_object=backend, **specials)
  elif model_type == "xlm-roberta":
    backend = tokenizers.SentencePieceUnigramTokenizer()
    backend.train_from_iterator(lines, vocab_size=300, unk_token="<unk>",
                                special_tokens=list(FAMILY_SPECIALS[:4]))
    backend.add_special_tokens(["<mask>"])  # the last id, as in XLM-R
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = transformers.XLMRobertaTokenizerFast(tokenizer_object=backend, **specials)
  elif model_type == "modernbert":
    backend = tokenizers.ByteLevelBPETokenizer()
    backend.train_from_iterator(lines, vocab_size=400, min_frequency=1,
                                special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]")
  elif model_type == "deberta-v2":
    backend = tokenizers.SentencePieceUnigramTokenizer()
    backend.train_from_iterator(lines, vocab_size=300, unk_token="[UNK]",
                                special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]"])
    vocab = [tuple(piece) for piece in json.loads(backend.to_str())["model"]["vocab"]]
    tokenizer = transformers.DebertaV2Tokenizer(vocab=vocab + [("[MASK]", 0.0)])
  else:
    backend = tokenizers.BertWordPieceTokenizer(lowercase=True)
    backend.train_from_iterator(lines, vocab_size=300, min_frequency=1)
    tokenizer = transformers.ElectraTokenizerFast(tokenizer_object=backend)
  tokenizer.save_pretrained(path)
  return path


def family_checkpoint(path: pathlib.Path, model_type: str, seed: int = 0,
                      **shapes) -> pathlib.Path:
  """A random-init encoder of a family (`RobertaModel`, `XLMRobertaModel` with its pooler,
  `ElectraModel` with 16-wide embeddings projected to the hidden size, `ModernBertModel` with
  a global, a local and a global layer and a window of 8 tokens, `DebertaV2Model` with
  DeBERTa-v3's switches and 8 position buckets), 2 layers of 32 unless
  `shapes` say otherwise, saved by transformers with its `family_tokenizer`."""
  import torch
  import transformers
  family_tokenizer(path, model_type)
  vocab_size = len(transformers.AutoTokenizer.from_pretrained(str(path)))
  kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=66)
  kw.update(shapes)
  if model_type == "electra":
    config = transformers.ElectraConfig(**{"embedding_size": 16, **kw})
  elif model_type == "modernbert":
    ids = transformers.AutoTokenizer.from_pretrained(str(path))
    config = transformers.ModernBertConfig(**{
        **kw, "num_hidden_layers": shapes.get("num_hidden_layers", 3),
        "global_attn_every_n_layers": 2, "local_attention": 8,
        "pad_token_id": ids.pad_token_id, "cls_token_id": ids.cls_token_id,
        "bos_token_id": ids.cls_token_id, "sep_token_id": ids.sep_token_id,
        "eos_token_id": ids.sep_token_id})
  elif model_type == "deberta-v2":  # DeBERTa-v3's switches, logarithmic beyond 4 tokens
    config = transformers.DebertaV2Config(**{
        **kw, "relative_attention": True, "position_buckets": 8, "norm_rel_ebd": "layer_norm",
        "share_att_key": True, "pos_att_type": "p2c|c2p", "position_biased_input": False,
        "type_vocab_size": 0, "pad_token_id": 0, **shapes})
  else:
    config = transformers.AutoConfig.for_model(model_type, pad_token_id=1, bos_token_id=0,
                                               eos_token_id=2, type_vocab_size=1, **kw)
  torch.manual_seed(seed)
  transformers.AutoModel.from_config(config).save_pretrained(path)
  return path


def step_optimizer():
  """The optimizer of the step-by-step comparisons with torch (tests/test_families.py,
  tests/test_modernbert.py): AdamW with weight decay, one warm-up step (the first step has
  learning rate 0) and clipping. Adam's eps at 1e-6: an element whose gradient is ~0 (a
  saturated GELU's bias) then moves by ~lr * g / eps, not by lr * sign(g), which would turn
  rounding noise into full-size updates."""
  from configs import default
  ocfg = default.get_config().optimizer
  ocfg.update(learning_rate=1e-3, warmup_steps=1, warmup_ratio=0.0, weight_decay=0.5,
              grad_clip_norm=0.5, eps=1e-6)
  return ocfg


def our_train_steps(model, params, batches, ocfg):
  """Our train step (its two programs compiled apart, as parallel.py does; optimisation level
  0 halves the compile time, which is most of these tests') on `batches` from `params`:
  (each step's mean loss, the final params, the learning-rate schedule)."""
  import jax
  import jax.numpy as jnp
  from research import optim, steps, tasks
  tx, schedule = optim.make_optimizer(ocfg, params, total_steps=len(batches))
  train_step = steps.make_train_step(model, tx, schedule, tasks.get("classification"))
  gradients, update = (jax.jit(jax.vmap(part, axis_name=steps.AXIS),
                               compiler_options={"xla_backend_optimization_level": 0})
                       for part in (train_step.gradients, train_step.update))
  state = jax.tree.map(lambda x: x[None], steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, frozen={}, opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(0))))
  losses = []
  for batch in batches:
    state, metrics = update(state, gradients(state, {k: v[None, None] for k, v in batch.items()},
                                             np.zeros((1, 1), np.int32)))
    losses.append(float(metrics["loss_sum"][0] / metrics["weight_sum"][0]))
  return losses, jax.tree.map(lambda x: x[0], state.params), schedule


def torch_train_steps(reference, batches, ocfg, schedule, fields, no_decay) -> list[float]:
  """transformers' `reference` classifier trained by torch.optim.AdamW on the same `batches`
  (its inputs: `fields` of each), with the same schedule, clipping and weight decay on the
  parameters `no_decay(name)` does not exempt: each step's loss."""
  import torch
  reference.train()
  named = list(reference.named_parameters())
  adamw = torch.optim.AdamW(
      [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": ocfg.weight_decay},
       {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}],
      lr=ocfg.learning_rate, betas=(ocfg.b1, ocfg.b2), eps=ocfg.eps)
  lr = torch.optim.lr_scheduler.LambdaLR(adamw, lambda t: float(schedule(t)) / ocfg.learning_rate)
  losses = []
  for batch in batches:
    loss = reference(**{k: torch.tensor(batch[k]).long() for k in fields},
                     labels=torch.tensor(batch["labels"]).long()).loss
    adamw.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), ocfg.grad_clip_norm)
    adamw.step()
    lr.step()
    losses.append(loss.item())
  return losses


def assert_same_training(ours, theirs, start, ours_final, theirs_final, max_diffs, *,
                         loss_tolerance: float, update_tolerance: float):
  """Our losses and final state dict against torch's from the same `start` (tests/
  test_modernbert.py, tests/test_deberta.py): the losses within `loss_tolerance` relative, the
  repeated first batch's loss fallen, every tensor moved and its update within
  `update_tolerance` of its largest element. The worst of each goes into `max_diffs`."""
  relative = float(np.max(np.abs(np.subtract(ours, theirs)) / np.abs(theirs)))
  max_diffs["trained", "losses (relative)"] = relative
  assert relative <= loss_tolerance, (ours, theirs)
  assert theirs[-1] < theirs[0] - 0.05  # it trained
  for key in ours_final:
    update, reference_update = ours_final[key] - start[key], theirs_final[key] - start[key]
    scale = np.abs(reference_update).max()
    assert scale > 1e-5, key  # every tensor moved
    worst = float(np.abs(update - reference_update).max() / scale)
    max_diffs["trained", "updates (of their scale)"] = max(
        worst, max_diffs.get(("trained", "updates (of their scale)"), 0.0))
    assert worst <= update_tolerance, (key, worst)


def kind_config(kind: str, checkpoint, width: int):
  """A slice of a task of `kind` for a family's `checkpoint` (tests/test_modernbert.py,
  tests/test_deberta.py): CoNLL-2003, SQuAD 2.0's five dev articles, masked LM on SST-2's
  sentences or SemEval-2010 relations; 64 examples, one epoch, rows of `width` tokens."""
  from configs import conll2003, mlm, semeval2010_task8, squad
  if kind == "token_classification":
    config = conll2003.get_config()
  elif kind == "question_answering":
    config = squad.get_config("v2")
    config.data.local_name, config.data.train_split = "squad_v2_dev5", "validation"
    config.task.doc_stride = 32
  elif kind == "relation_classification":
    config = semeval2010_task8.get_config()
    config.data.validation_from_train = 0
    config.data.eval_splits = ("test",)
  else:
    config = mlm.get_config("task=sst2")
  config.model.checkpoint = str(checkpoint)
  config.data.update(train_examples=64, eval_examples=32, max_length=width,
                     length_buckets=(width,), eval_splits=tuple(config.data.eval_splits[:1]))
  config.train.update(num_epochs=1.0, batch_size=16)
  config.eval.batch_size = 16
  config.checkpoint.every_steps = 1000
  config.parallel.num_devices = 1
  return config


def torch_state(model) -> dict:
  """A PyTorch module's state dict as numpy arrays (copies)."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def loaded_params(model, state_dict, inputs, bare_prefix: str | None = None):
  """Our `model`'s params from a PyTorch state dict, through hf_io; a bare encoder's
  (`bare_prefix`: its family's encoder name) are loaded under that name, as a task model holds
  them, and returned without it."""
  import jax
  from research.models import hf_io
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  if bare_prefix:
    template = {bare_prefix: template}
  params = hf_io.params_from_state_dict(state_dict, template, load_head=True)
  return params[bare_prefix] if bare_prefix else params


def record_diff(max_diffs: dict, variant: str, output: str, ours, theirs, limit: float):
  """Asserts the max abs difference of `ours` and `theirs` is within `limit`, keeping the worst
  of each (variant, output) in `max_diffs` for a module's numerics table."""
  diff = float(np.abs(np.asarray(ours) - np.asarray(theirs)).max())
  max_diffs[variant, output] = max(diff, max_diffs.get((variant, output), 0.0))
  assert diff <= limit, f"{variant} {output}: max diff {diff:.2e}"

