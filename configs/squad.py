r"""Extractive question answering on SQuAD 1.1 (or 2.0 with `:v2`) with the embedded MiniLM.

  python -m research.main --config configs/squad.py --workdir runs/squad
  python -m research.main --config configs/squad.py:v2 --workdir runs/squad_v2   # = squad_v2.py

The hub's `rajpurkar/squad` / `rajpurkar/squad_v2` (or $RESEARCH_DATA_DIR/squad[_v2]/ holding
train/validation files in the flat layout or in SQuAD's own JSON). Hugging Face's run_qa
recipe: windows of 384 tokens, the question first, the context cut with a stride of 128
overlapping tokens; 2 epochs, batch 32. Evaluation post-processes every window of a question
into one answer (n-best 20, at most 30 tokens) and scores it with the official EM and F1; for
2.0 also HasAns / NoAns and the best no-answer threshold on the split. The predictions, n-best
and null-odds files are written beside each eval/<split>_step<N>.json.
"""

from configs import default
from research import config_base, named_tasks


def get_config(arg=None):
  arg = config_base.parse_arg(arg, v2=False, quick=False)
  c = default.get_config()
  config_base.set_task(c, named_tasks.TASKS["squad_v2" if arg.v2 else "squad"])
  c.task.version_2_with_negative = arg.v2
  c.data.max_length = 384
  c.data.length_buckets = (128, 192, 256, 384)
  c.task.doc_stride = 128
  c.train.num_epochs = 2.0
  c.eval.batch_size = 64
  if arg.quick:
    c.data.train_examples = 2000
    c.data.eval_examples = 500
    c.train.num_epochs = 1.0
  return c
