r"""GLUE SST-2 (binary sentiment) on the embedded all-MiniLM-L6-v2.

  python -m research.main --config configs/sst2.py --workdir runs/sst2
  python -m research.main --config configs/sst2.py:quick --workdir runs/sst2_quick

The recipe of configs/glue.py (batch 32, 3 epochs, lr 5e-5, 10% warm-up, weight decay 0.01).
Measured on 2 CPU cores (README.md has the table):
  full   3 epochs of 67,349 sentences: dev accuracy 0.891 (0.884 and 0.889 after epochs 1
         and 2), 51 minutes, 66.5 training examples/s
  quick  the first 8,000 sentences, 1 epoch: dev accuracy 0.826-0.841 (seeds 0, 1), 2.5-3.5
         minutes (warm / cold compilation cache)
"""

from configs import glue
from research import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, quick=False)
  c = glue.get_config("sst2")
  if arg.quick:  # a slice: minutes on 2 CPU cores, >= 0.80 dev accuracy
    c.data.train_examples = 8000
    c.train.num_epochs = 1.0
  return c
