r"""BERT's grid (Devlin et al. 2019, A.3: lr x batch, at 3 epochs) on the split of rte.py, for
`research.tune --sampler grid`: the baseline the quasi-random and TPE searches are set against."""

from experiments.tuning import rte

get_config = rte.get_config


def get_space(space):
  return {
      "config.optimizer.learning_rate": space.choice([2e-5, 3e-5, 5e-5]),
      "config.train.batch_size": space.choice([16, 32]),
  }
