r"""Any GLUE task on the embedded all-MiniLM-L6-v2: `configs/glue.py:<task>`.

  python -m research.main --config configs/glue.py:mrpc --workdir runs/mrpc
  python -m research.main --config configs/glue.py:rte,quick --workdir runs/rte_quick
  python -m research.main --config configs/glue.py:rte --workdir runs/rte_roberta \
      --config.model.checkpoint=roberta-base
  python -m research.main --config configs/glue.py:rte --workdir runs/rte_electra \
      --config.model.checkpoint=google/electra-base-discriminator

Tasks: cola sst2 mrpc stsb qqp mnli qnli rte wnli; `research/named_tasks.py` holds their text
fields, label names and official metrics (the first one picks the best checkpoint). SST-2,
CoLA, MRPC, RTE and STS-B are read from $RESEARCH_DATA_DIR/<task>/ when it is set, the others
(and all of them without it) from the hub's nyu-mll/glue.

The recipe is BERT's (Devlin et al. 2019, §4.1 and google-research/bert's defaults): batch 32,
3 epochs, peak lr 5e-5 with 10% linear warm-up then linear decay, weight decay 0.01 on kernels
and embeddings, clipping at 1.0, sequences of up to 128 tokens.

Results, ours next to transformers' Trainer on the same recipe and checkpoint:
experiments/glue_minilm/results.md.

`get_space` is what `research.tune` searches around that recipe (the ranges of the fine-tuning
studies that followed BERT: learning rates over a decade, both batch sizes, warm-up and weight
decay from none to twice the recipe's):

  python -m research.tune --config configs/glue.py:rte --study runs/rte_tpe --trials 30 \
      --sampler tpe --pruner asha
"""

from configs import default
from research import config_base, named_tasks


def get_config(arg=None):
  arg = config_base.parse_arg(arg, task="", quick=False)
  if arg.task not in named_tasks.GLUE:
    raise config_base.ConfigError(f"configs/glue.py needs a task: glue.py:<task> with <task> "
                                 f"one of {sorted(named_tasks.GLUE)} (got {arg.task!r})")
  c = default.get_config()
  config_base.set_task(c, named_tasks.GLUE[arg.task])
  if arg.task == "sst2":  # most SST-2 training phrases are a few words long
    c.data.length_buckets = (8, 16, 24, 32, 48, 64, 96, 128)
  if arg.quick:  # a slice, for a first look in minutes
    c.data.train_examples = 2000
    c.train.num_epochs = 1.0
  return c


def get_space(space):
  return {
      "config.optimizer.learning_rate": space.log_uniform(1e-5, 1e-4),
      "config.train.batch_size": space.choice([16, 32]),
      "config.optimizer.warmup_ratio": space.uniform(0.0, 0.2),
      "config.optimizer.weight_decay": space.uniform(0.0, 0.02),
  }
