r"""GLUE SST-2 (binary sentiment) on the embedded all-MiniLM-L6-v2.

  python -m research.main --config configs/sst2.py --workdir runs/sst2
  python -m research.main --config configs/sst2.py:quick --workdir runs/sst2_quick

The recipe of configs/glue.py (batch 32, 3 epochs, lr 5e-5, 10% warm-up, weight decay 0.01).
  full   3 epochs of all 67,349 training sentences
  quick  the first 8,000 sentences, 1 epoch (the README's main job; these rows ship with the
         repository in data/sst2/, so it runs offline on a fresh clone)
Dev accuracy and wall time of both: README.md, Results (measured, with the machine and date).
"""

from configs import glue
from research import config_base


def get_config(arg=None):
  arg = config_base.parse_arg(arg, quick=False)
  c = glue.get_config("sst2")
  if arg.quick:  # a slice: minutes on 2 CPU cores
    c.data.train_examples = 8000
    c.train.num_epochs = 1.0
  return c
