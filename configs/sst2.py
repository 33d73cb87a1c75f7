r"""GLUE SST-2 (binary sentiment) on the embedded all-MiniLM-L6-v2.

  python -m research.main --config configs/sst2.py --workdir runs/sst2
  python -m research.main --config configs/sst2.py:quick --workdir runs/sst2_quick

Results on this machine (2 CPU cores, see README.md for the table):
  full   TBD
  quick  TBD
"""

from configs import default
from research import config_lib, tasks


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, quick=False)
  c = default.get_config()
  config_lib.set_task(c, tasks.GLUE["sst2"])
  c.data.length_buckets = (8, 16, 24, 32, 48, 64, 96, 128)  # most SST-2 phrases are short
  if arg.quick:  # a slice: minutes on 2 CPU cores
    c.data.train_examples = 8000
    c.train.num_epochs = 1.0
  return c
