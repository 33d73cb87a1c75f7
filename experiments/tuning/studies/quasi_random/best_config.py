"""The best trial so far of the study quasi_random (`--config experiments/tuning/rte.py`, in /work/wt-exp/experiments/tuning/studies/quasi_random):
trial 10, accuracy 0.6426 (maximize) of 16 completed trial(s).

The base config /work/wt-exp/experiments/tuning/rte.py with the trial's overrides:

  python -m research.main --config /work/wt-exp/experiments/tuning/studies/quasi_random/best_config.py --workdir runs/best

Written by research.tune_report; rewritten as the study finds better trials.
"""

BASE = '/work/wt-exp/experiments/tuning/rte.py'
BASE_ARG = None
OVERRIDES = {
    'optimizer.learning_rate': 3.0768966766193414e-05,
    'train.batch_size': 16,
    'optimizer.warmup_ratio': 0.009388498775660992,
    'optimizer.weight_decay': 0.0682412181980908,
}


def get_config(arg=None):
  from research import tune_report
  return tune_report.trial_config(BASE, BASE_ARG, OVERRIDES, arg=arg, source=__file__)
