"""SQuAD 2.0: configs/squad.py with unanswerable questions (see there).

  python -m research.main --config configs/squad_v2.py --workdir runs/squad_v2
"""

from configs import squad


def get_config(arg=None):
  return squad.get_config("v2" + (f",{arg}" if arg else ""))
