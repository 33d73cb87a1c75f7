"""transformers' Trainer as the reference our training is checked against, on the recipe of a
config: its arguments, our batches in our order fed to it, a training clock that survives
resumes, its inputs and model for a task, and the official metrics (scikit-learn, scipy,
seqeval) of its outputs. One module that the runners (glue_minilm, relation_extraction,
question_answering, tapt) and the tests (tests/test_reference_training.py,
tests/test_glue_reference.py) import, so that every comparison with the Trainer uses the same
pieces. torch and transformers are imported inside the functions: loading this module is cheap.
"""

from __future__ import annotations

import json
import pathlib
import time


def register_trainer_order():
  """`data.batch_order = "hf_trainer"`: each epoch's examples in the order the Trainer's
  length-grouped sampler would visit them (`get_length_grouped_indices`: mega-batches of up to
  50 batches, each sorted from longest to shortest, the longest example first), its torch
  generator seeded from the epoch's generator; the library drops the last incomplete batch."""
  import numpy as np
  import torch
  from transformers.trainer_pt_utils import get_length_grouped_indices
  from research.data.batches import register_batch_order

  def hf_trainer_order(lengths, batch_size, rng):
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return np.asarray(get_length_grouped_indices(lengths.tolist(), batch_size,
                                                 generator=generator))

  register_batch_order("hf_trainer", hf_trainer_order)


def our_train_order(config, epochs: int):
  """The training example indices ours visits, batch after batch, over `epochs` epochs."""
  import numpy as np
  from research import tasks, train
  from research.data import splits
  from research.models import builder
  tokenizer = builder.build_model(config).tokenizer
  split = splits.load_encoded(config.data, config.task, tasks.kind_of(config.task), tokenizer,
                              config.data.train_split, config.data.train_examples)
  batches = train.train_batches(config, split)
  return np.concatenate([batches.epoch_order(e).reshape(-1) for e in range(epochs)])


def in_order_trainer():
  """A Trainer class that takes its training rows in the dataset's order: given the rows of
  `our_train_order` as one epoch, it sees our batches in our order."""
  import torch
  import transformers

  class InOrderTrainer(transformers.Trainer):

    def _get_train_sampler(self, train_dataset=None):
      return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

  return InOrderTrainer




def label_id(names: list[str], value) -> int:
  """A label as the data holds it (its name, or already an id) as an id."""
  return names.index(value) if isinstance(value, str) else int(value)


def reference_metrics(spec, rows, logits, word_index) -> dict[str, float]:
  """Official metrics by scikit-learn / scipy / seqeval on the reference's outputs."""
  import numpy as np
  import scipy.stats
  import sklearn.metrics
  if spec.kind == "regression":
    gold = np.asarray(rows[spec.label_field], np.float64)
    predicted = logits[:, 0]
    return {"pearson": scipy.stats.pearsonr(gold, predicted)[0],
            "spearman": scipy.stats.spearmanr(gold, predicted)[0]}
  names = list(spec.label_names)
  if spec.kind == "token_classification":
    import seqeval.metrics
    gold, guess = [], []
    for i, tags in enumerate(rows[spec.label_field]):
      words = ["O"] * len(tags)  # words past max_length are predicted O
      for position, word in enumerate(word_index[i]):
        if word is not None and position < logits.shape[1]:
          words[word] = names[int(logits[i, position].argmax())]
      gold.append([names[label_id(names, t)] for t in tags])
      guess.append(words)
    return {"entity_f1": seqeval.metrics.f1_score(gold, guess),
            "entity_precision": seqeval.metrics.precision_score(gold, guess),
            "entity_recall": seqeval.metrics.recall_score(gold, guess),
            "accuracy": seqeval.metrics.accuracy_score(gold, guess)}
  gold = np.array([label_id(names, v) for v in rows[spec.label_field]])
  predicted = logits.argmax(-1)
  out = {"accuracy": sklearn.metrics.accuracy_score(gold, predicted)}
  if "f1" in spec.metrics:
    out["f1"] = sklearn.metrics.f1_score(gold, predicted)
  if "matthews_corr" in spec.metrics:
    out["matthews_corr"] = sklearn.metrics.matthews_corrcoef(gold, predicted)
  return out


def train_in_our_order(model, config, seed: int, workdir: pathlib.Path, train_set, collate):
  """The Trainer on `train_set`, rows already in our batch order for every epoch (one Trainer
  epoch), with `collate`; returns (trainer, clock) after training, the trainer set to predict
  every row in dataset order (the runners of relation_extraction and question_answering)."""
  args = reference_training_args(config, seed, 1.0, workdir, save_steps=10_000,
                                 remove_unused_columns=False)
  clock = train_clock(workdir / "train_seconds.json")
  trainer = in_order_trainer()(model=model, args=args, train_dataset=train_set,
                               data_collator=collate, callbacks=[clock])
  trainer.train()
  trainer.args.dataloader_drop_last = False
  trainer.args.train_sampling_strategy = "random"
  return trainer, clock


def train_clock(path: pathlib.Path):
  """A Trainer callback that counts training seconds across interruptions, as ours does: the
  time so far is saved next to every checkpoint and a resumed run adds to it."""
  import transformers

  class TrainClock(transformers.TrainerCallback):

    def __init__(self):
      self.before = json.loads(path.read_text()) if path.exists() else 0.0
      self.start = time.perf_counter()

    def seconds(self) -> float:
      return self.before + time.perf_counter() - self.start

    def on_train_begin(self, args, state, control, **kwargs):
      self.start = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
      path.write_text(json.dumps(self.seconds()))

  return TrainClock()


def reference_training_args(config, seed: int, epochs: float, workdir: pathlib.Path,
                            **overrides):
  """The Trainer's arguments for the recipe of `config` (tests/test_reference_training.py
  checks that ours trains step for step like a Trainer given these)."""
  import transformers
  opt = config.optimizer
  args = dict(
      output_dir=str(workdir), per_device_train_batch_size=config.train.batch_size,
      per_device_eval_batch_size=config.eval.batch_size, learning_rate=opt.learning_rate,
      num_train_epochs=epochs, warmup_steps=opt.warmup_ratio, weight_decay=opt.weight_decay,
      adam_beta1=opt.b1, adam_beta2=opt.b2, adam_epsilon=opt.eps,
      max_grad_norm=opt.grad_clip_norm, lr_scheduler_type="linear", optim="adamw_torch",
      seed=seed, data_seed=seed, train_sampling_strategy="group_by_length",
      dataloader_drop_last=True, save_strategy="steps",
      save_steps=config.checkpoint.every_steps, save_total_limit=1,
      eval_strategy="no", logging_steps=50, report_to="none", use_cpu=True,
      disable_tqdm=True)
  return transformers.TrainingArguments(**{**args, **overrides})


def trainer_inputs(spec, tokenizer, max_length: int, rows):
  """`rows` of a task (`spec`: a TaskSpec or a config's `task`) as the Trainer's inputs, labels
  as ids. Returns them and, for token tasks, each token's word where it is the word's first
  sub-word (None elsewhere), to map predictions back to words."""
  token_task = spec.kind == "token_classification"
  names = list(spec.label_names)
  enc = tokenizer(*[list(rows[f]) for f in spec.text_fields], truncation=True,
                  max_length=max_length, is_split_into_words=token_task)
  if token_task:  # the first sub-word of each word carries its tag, the rest -100
    labels, words = [], []
    for i, tags in enumerate(rows[spec.label_field]):
      ids, seen, row = enc.word_ids(i), set(), []
      for word in ids:
        tag = tags[word] if word is not None and word not in seen else None
        row.append(-100 if tag is None else label_id(names, tag))
        if word is not None:
          seen.add(word)
      labels.append(row)
      words.append([w if w is not None and ids.index(w) == p else None
                    for p, w in enumerate(ids)])
    enc["labels"] = labels
    return enc, words
  values = list(rows[spec.label_field])
  enc["labels"] = ([float(v) for v in values] if spec.kind == "regression"
                   else [label_id(names, v) for v in values])
  return enc, None


def entity_start_classifier(checkpoint: str, vocabulary: int, num_labels: int):
  """transformers' BertModel with our relation head (bert.BertForRelationClassification with
  `representation=entity_start`): the hidden states at the [E1] and [E2] markers (the token
  before each entity span), concatenated -> dropout -> linear. The embeddings grow to
  `vocabulary` rows (the marker tokens) by transformers' own init of new rows. Its forward
  takes our batches' `entity_spans` (start, end of each entity's tokens)."""
  import torch
  import transformers

  class EntityStartClassifier(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.bert = transformers.BertModel.from_pretrained(checkpoint, add_pooling_layer=False)
      self.bert.resize_token_embeddings(vocabulary)
      hidden = self.bert.config.hidden_size
      self.dropout = torch.nn.Dropout(self.bert.config.hidden_dropout_prob)
      self.classifier = torch.nn.Linear(2 * hidden, num_labels)
      torch.nn.init.normal_(self.classifier.weight, std=self.bert.config.initializer_range)
      torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask, entity_spans, labels=None, token_type_ids=None):
      hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state
      starts = entity_spans[:, 0::2] - 1
      features = hidden[torch.arange(len(hidden))[:, None], starts].reshape(len(hidden), -1)
      logits = self.classifier(self.dropout(features))
      loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
      return {"loss": loss, "logits": logits}

  return EntityStartClassifier()


def reference_model(spec, checkpoint: str, **overrides):
  """transformers' model for the task from `checkpoint`, with a new head; `overrides` go to
  its config (e.g. dropout)."""
  import transformers
  if spec.kind == "token_classification":
    return transformers.AutoModelForTokenClassification.from_pretrained(
        checkpoint, num_labels=len(spec.label_names), **overrides)
  regression = spec.kind == "regression"
  return transformers.AutoModelForSequenceClassification.from_pretrained(
      checkpoint, num_labels=1 if regression else len(spec.label_names),
      problem_type="regression" if regression else "single_label_classification", **overrides)
