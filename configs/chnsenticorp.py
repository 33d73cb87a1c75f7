r"""ChnSentiCorp (Chinese hotel/product review sentiment) on the embedded all-MiniLM-L6-v2.

  python -m research.main --config configs/chnsenticorp.py --workdir runs/chnsenticorp

The same code as for English: the tokenizer splits CJK text one character per token. But the
embedded checkpoint's (English, uncased) vocabulary has only 244 CJK characters: 209 of the
4,059 distinct characters of the training set, 27% of their occurrences; the rest become [UNK]
(measured here). Expect a weak model; a Chinese or multilingual checkpoint (e.g.
`--config.model.checkpoint=bert-base-chinese` or `=xlm-roberta-base`) is the real fix. Data:
$RESEARCH_DATA_DIR/chnsenticorp/ (train 9,600, validation 1,200, test 1,200); there is no
canonical hub copy, so without RESEARCH_DATA_DIR set `data.dataset` must name a local
directory.

Results: experiments/glue_minilm/results.md.
"""

from configs import default
from research import config_base, named_tasks


def get_config(arg=None):
  arg = config_base.parse_arg(arg, quick=False)
  c = default.get_config()
  config_base.set_task(c, named_tasks.TASKS["chnsenticorp"])
  c.data.max_length = 256  # reviews are long: 30% exceed 126 characters, 5% exceed 254
  c.data.length_buckets = (32, 64, 96, 128, 192, 256)
  if arg.quick:
    c.data.train_examples = 2000
    c.train.num_epochs = 1.0
  return c
