r"""BERT's fine-tuning grid (Devlin et al. 2019, Appendix A.3) on RTE, embedded MiniLM.

  python -m research.sweep --config experiments/bert_recipe/rte_grid.py --workdir experiments/bert_recipe/runs
  python -m research.report experiments/bert_recipe/runs --out experiments/bert_recipe

The paper's grid is lr in {5e-5, 3e-5, 2e-5} x batch in {16, 32} x epochs in {2, 3, 4}. On 2 CPU
cores we run the lr x batch part at 3 epochs, each with 3 seeds: 18 runs. Everything else is the
recipe of configs/glue.py (10% warm-up, linear decay, weight decay 0.01, clipping 1.0, 128
tokens). Results: experiments/bert_recipe/README.md.
"""

from configs import glue


def get_config(arg=None):
  del arg
  return glue.get_config("rte")


def get_hyper(hyper):
  # Seeds outermost: a sweep cut short still covers every setting with the seeds it finished.
  return hyper.product([
      hyper.sweep("config.seed", [0, 1, 2]),
      hyper.sweep("config.optimizer.learning_rate", [5e-5, 3e-5, 2e-5]),
      hyper.sweep("config.train.batch_size", [16, 32]),
  ])
