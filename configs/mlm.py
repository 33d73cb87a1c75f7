r"""Masked-LM continued pretraining of the embedded all-MiniLM-L6-v2 ("Don't stop pretraining",
Gururangan et al., 2020): on a task's own training text (TAPT) or on any corpus (DAPT).

  python -m research.main --config configs/mlm.py:task=rte --workdir runs/tapt_rte
  python -m research.main --config configs/mlm.py:dataset=~/corpus,text_field=text \
      --workdir runs/dapt
  python -m research.main --config configs/mlm.py:dataset=~/big_corpus,stream,steps=100000 \
      --workdir runs/dapt_streamed
  python -m research.main --config configs/mlm.py:task=rte --workdir runs/tapt_rte \
      --mode=export --output runs/tapt_rte/export
  python -m research.main --config configs/glue.py:rte --workdir runs/rte_after_tapt \
      --config.model.checkpoint=runs/tapt_rte/export

Arguments:
  task=NAME        a registered task (research/named_tasks.py): its training texts (both sentences
                   of a pair, as fine-tuning sees them; labels unused), its validation texts
                   for the held-out loss
  dataset=PATH     instead, a folder of train.{txt,jsonl,csv,parquet} (a .txt file is one text
                   per line) or a hub dataset; `text_field` names the text (default "text");
                   5% of train is held out when there is no validation split
  whole_word       whole-word masking (all pieces of a chosen word masked together)
  group            concatenate the texts and cut them into rows of max_length (HF run_mlm's
                   group_texts) instead of one text per row
  stream           read the training texts as a `datasets` stream, never whole in memory (a
                   corpus larger than memory, or a hub corpus not downloaded first), through a
                   shuffle buffer of data.shuffle_buffer texts; needs steps=N and, with
                   dataset=PATH, a validation split there (validation.txt, ...)
  steps=N          train N optimizer steps (train.num_steps) instead of 3 epochs
  quick            2,000 training texts, 500 held out, 1 epoch

The embedded checkpoint is a sentence encoder without an LM head: the head starts freshly
initialised (the log says so) and is exported with the encoder as BertForMaskedLM.
"""

from configs import default
from research import config_base, named_tasks


def get_config(arg=None):
  arg = config_base.parse_arg(arg, task="sst2", dataset="", text_field="text", whole_word=False,
                             group=False, stream=False, steps=0, quick=False)
  c = default.get_config()
  if arg.dataset:
    c.task.text_fields = (arg.text_field,)
    c.data.dataset = arg.dataset
    c.data.validation_from_train = 0.05
  else:
    if arg.task not in named_tasks.TASKS:
      raise config_base.ConfigError(f"configs/mlm.py: task={arg.task!r} is not a registered task "
                                   f"({sorted(named_tasks.TASKS)}); or give dataset=PATH")
    config_base.set_task(c, named_tasks.TASKS[arg.task])
    c.data.eval_splits = c.data.eval_splits[:1]
  c.task.kind = "masked_lm"
  c.task.label_names = ()
  c.task.metrics = ("accuracy", "perplexity")
  c.task.whole_word_masking = arg.whole_word
  c.task.line_by_line = not arg.group
  c.eval.best_metric = "loss"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.warmup_ratio = 0.06
  c.train.num_epochs = 3.0
  if arg.group:
    c.data.length_buckets = (c.data.max_length,)
  c.train.num_steps = arg.steps
  if arg.stream:
    c.data.streaming = True
    c.data.validation_from_train = 0.0
  if arg.quick:
    c.data.train_examples = 2000
    c.data.eval_examples = 500
    c.train.num_epochs = 1.0
  return c
