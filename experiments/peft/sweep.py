r"""Full fine-tuning vs frozen encoder vs BitFit vs LoRA (r = 4, 16), embedded MiniLM.

  python -m research.sweep --config experiments/peft/sweep.py:sst2 --workdir runs/peft_sst2
  python -m research.sweep --config experiments/peft/sweep.py:mrpc --workdir runs/peft_mrpc
  python -m research.report runs/peft_sst2 --out experiments/peft/sst2
  python -m research.report runs/peft_mrpc --out experiments/peft/mrpc

SST-2 uses a slice (the first 8,000 training sentences, 1 epoch; the full dev set); MRPC the
whole task (3 epochs). Full fine-tuning uses the GLUE recipe's 5e-5; the other methods' learning
rates come from a one-seed pilot on the SST-2 slice (experiments/peft/README.md: the usual 1e-3
for a linear probe and 5e-4 for BitFit and LoRA under-train in 250 steps): frozen encoder 3e-2,
BitFit 2e-3, LoRA 2e-3 (alpha = 2r, on the query and value kernels). 3 seeds each. Results:
experiments/peft/README.md.
"""

from configs import glue
from research import config_base


def get_config(arg=None):
  arg = config_base.parse_arg(arg, task="sst2")
  c = glue.get_config(arg.task)
  if arg.task == "sst2":
    c.data.train_examples = 8000
    c.train.num_epochs = 1.0
  return c


def get_hyper(hyper):
  methods = hyper.chainit([
      hyper.zipit([hyper.sweep("config.peft.method", ["full", "frozen_encoder", "bitfit"]),
                   hyper.sweep("config.optimizer.learning_rate", [5e-5, 3e-2, 2e-3])]),
      hyper.product([hyper.fixed("config.peft.method", "lora"),
                     hyper.fixed("config.optimizer.learning_rate", 2e-3),
                     hyper.zipit([hyper.sweep("config.peft.lora_rank", [4, 16]),
                                  hyper.sweep("config.peft.lora_alpha", [8.0, 32.0])])]),
  ])
  return hyper.product([methods, hyper.sweep("config.seed", [0, 1, 2])])
