r"""CoNLL-2003 English NER (IOB2) on the embedded all-MiniLM-L6-v2.

  python -m research.main --config configs/conll2003.py --workdir runs/conll2003
  python -m research.main --config configs/conll2003.py --workdir runs/conll2003_xlmr \
      --config.model.checkpoint=xlm-roberta-base  # cased; roberta-base works the same way

Each word's tag is learnt on its first sub-word (the others are ignored by the loss and the
metrics); evaluation is entity-level precision/recall/F1 by the CoNLL rules, overall and per
entity type, on the validation (dev) and test sets, with predictions made per word. Note that
the embedded checkpoint is uncased, which costs NER some accuracy.

Results: experiments/glue_minilm/results.md.
"""

from configs import default
from research import config_base, named_tasks


def get_config(arg=None):
  arg = config_base.parse_arg(arg, quick=False)
  c = default.get_config()
  config_base.set_task(c, named_tasks.TASKS["conll2003"])
  c.data.length_buckets = (16, 24, 32, 48, 64, 96, 128)
  if arg.quick:
    c.data.train_examples = 2000
    c.train.num_epochs = 1.0
  return c
