r"""MiniLM on RTE, searched by `research.tune` (experiments/tuning/README.md).

  experiments/tuning/run.sh      # the three searches, the reruns of their best, the comparison

The recipe of configs/glue.py:rte, with two changes so that the search never looks at the split
its winners are compared on: 'validation' is 277 rows held out of train (stratified, the same
rows for every trial and seed; as many rows as RTE's dev set), and 'test' is RTE's dev set
(run.sh points RESEARCH_DATA_DIR at a folder whose rte/test.jsonl is GLUE's RTE dev file). The
first eval split picks the best checkpoint and ranks the trials; test is scored alongside,
never used by the search. Evaluating every 100 steps gives the pruners rungs to decide on (an evaluation of both
splits costs about as much as 60 training steps here).
"""

from configs import glue


def get_config(arg=None):
  del arg
  c = glue.get_config("rte")
  c.data.validation_from_train = 277
  c.data.eval_splits = ("validation", "test")
  c.eval.every_steps = 100
  return c


def get_space(space):
  # Wider than the BERT grid (rte_grid.py): a decade and a half of learning rates, warm-up
  # and weight decay from none to well past the recipe's.
  return {
      "config.optimizer.learning_rate": space.log_uniform(1e-5, 3e-4),
      "config.train.batch_size": space.choice([16, 32]),
      "config.optimizer.warmup_ratio": space.uniform(0.0, 0.2),
      "config.optimizer.weight_decay": space.uniform(0.0, 0.1),
  }
