r"""SemEval-2010 Task 8 relation classification on the embedded all-MiniLM-L6-v2.

  python -m research.main --config configs/semeval2010_task8.py --workdir runs/semeval
  python -m research.main --config configs/semeval2010_task8.py:representation=cls,markers=0 ...

The two nominals are marked inline (<e1>…</e1>, <e2>…</e2>); by default the tags become the
marker tokens [E1] [/E1] [E2] [/E2] (added to the vocabulary) and the head reads the hidden
states at [E1] and [E2] ("entity start", Baldini Soares et al., 2019). `representation=cls`
reads the pooled [CLS] instead, `entity_mean` the mean over each entity's tokens; `markers=0`
drops the marker tokens (the tags are only used to find the entities).

The release has no validation split: 800 training rows (stratified by label, the same for
every seed) are held out for picking the best checkpoint, and the test set (2,717, the
release's keys) is scored with the official measure, `relation_f1`: macro-F1 over the nine
relations with directionality, `Other` excluded (metrics.relation_scores).

The hub copy (SemEvalWorkshop/sem_eval_2010_task_8) names its label field "relation":
  --config.data.dataset=SemEvalWorkshop/sem_eval_2010_task_8 --config.task.label_field=relation

Results: experiments/relation_extraction/results.md.
"""

from configs import default
from research import config_base, named_tasks


def get_config(arg=None):
  arg = config_base.parse_arg(arg, representation="entity_start", markers=True, quick=False)
  c = default.get_config()
  config_base.set_task(c, named_tasks.TASKS["semeval2010_task8"])
  c.task.representation = arg.representation
  if not arg.markers:
    c.task.entity_markers = ()
  c.data.validation_from_train = 800
  c.data.length_buckets = (32, 48, 64, 96, 128)
  c.train.num_epochs = 3.0
  c.optimizer.learning_rate = 1e-4
  if arg.quick:
    c.data.train_examples = 2000
    c.train.num_epochs = 1.0
  return c
