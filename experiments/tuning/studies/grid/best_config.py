"""The best trial so far of the study grid (`--config experiments/tuning/rte_grid.py`, in /work/wt-exp/experiments/tuning/studies/grid):
trial 5, accuracy 0.6282 (maximize) of 6 completed trial(s).

The base config /work/wt-exp/experiments/tuning/rte_grid.py with the trial's overrides:

  python -m research.main --config /work/wt-exp/experiments/tuning/studies/grid/best_config.py --workdir runs/best

Written by research.tune_report; rewritten as the study finds better trials.
"""

BASE = '/work/wt-exp/experiments/tuning/rte_grid.py'
BASE_ARG = None
OVERRIDES = {
    'optimizer.learning_rate': 5e-05,
    'train.batch_size': 16,
}


def get_config(arg=None):
  from research import tune_report
  return tune_report.trial_config(BASE, BASE_ARG, OVERRIDES, arg=arg, source=__file__)
