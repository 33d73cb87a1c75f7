"""End to end, every task kind: our trainer against transformers' Trainer on the same batches.

  python -m benchmarks.bench --e2e --out bench_out/               # every workload (WORKLOADS)
  python -m benchmarks.bench --quick --e2e ner,qa --out bench_out/

Each workload is a shipped config sized down (its first `train` training examples, one epoch,
one evaluation of the first `eval` examples of its first eval split at the end, one checkpoint
at the end). Both systems run it in a fresh process of their own, one after the other, so each
pays what a user pays: imports, reading and tokenising the data, building the model, our XLA
compilations (into an empty compilation cache), the training steps, the checkpoint and the
evaluation. Ours then runs a second time over the cache the first one filled, as a second seed,
a tuning trial or a resumed run of the same shapes does. The Trainer is fed our batches in our
order, padded as ours are (experiments/reference.py's Trainer arguments for the config's
recipe: AdamW, linear warm-up/decay, gradient clipping), trains the same steps, saves one
checkpoint at its last step (model, optimizer, scheduler) and then predicts the same evaluation
batches; its predictions are scored by our task kind's metrics (themselves checked against the
official scorers), so the two scores are comparable. Our wall time is split into its parts
(run.json's `wall_seconds`).

A workload whose data is not on this machine (no $RESEARCH_DATA_DIR/<name>/ and no network) is
skipped with one line; the SST-2 workloads read the slice shipped in data/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---- the workloads -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
  """A shipped config, sized for the bench: `train` training examples, `eval` evaluated ones
  (`--quick`: `quick_train` / `quick_eval`)."""
  description: str
  config: Callable[[], Any]
  train: int
  eval: int
  quick_train: int = 64
  quick_eval: int = 32


def _sst2():
  from configs import sst2
  return sst2.get_config()


def _conll():
  from configs import conll2003
  return conll2003.get_config()


def _semeval():
  from configs import semeval2010_task8
  config = semeval2010_task8.get_config()
  config.data.validation_from_train = 0  # its test split is the one evaluated
  config.data.eval_splits = ("test",)
  return config


def _squad_dev5():
  """SQuAD 2.0 at the windows of experiments/question_answering (192 tokens, stride 64), on
  the five dev articles that are the only SQuAD data offline: it trains and is scored on the
  same questions (a timing workload; its score says only that both systems learned)."""
  from configs import squad
  config = squad.get_config("v2")
  config.data.local_name = "squad_v2_dev5"
  config.data.train_split = "validation"
  config.data.max_length = 192
  config.data.length_buckets = (128, 192)
  config.task.doc_stride = 64
  return config


def _mlm_sst2():
  from configs import mlm
  return mlm.get_config("task=sst2")


WORKLOADS: dict[str, Workload] = {
    "classification": Workload("SST-2 (configs/sst2.py)", _sst2, train=4000, eval=872),
    "ner": Workload("CoNLL-2003 (configs/conll2003.py)", _conll, train=2000, eval=1000),
    "relations": Workload("SemEval-2010 Task 8 (configs/semeval2010_task8.py, test)", _semeval,
                          train=2000, eval=1000),
    "qa": Workload("SQuAD 2.0 five dev articles (configs/squad.py:v2, 192-token windows)",
                   _squad_dev5, train=400, eval=200, quick_train=32, quick_eval=16),
    "masked_lm": Workload("masked LM on SST-2 texts (configs/mlm.py:task=sst2)", _mlm_sst2,
                          train=2000, eval=500),
}


def workload_config(name: str, quick: bool, train_examples: int = 0, eval_examples: int = 0):
  """The workload's config: its first training / eval examples, one epoch, one evaluation and
  one checkpoint at the end, one device."""
  workload = WORKLOADS[name]
  config = workload.config()
  config.data.train_examples = train_examples or (workload.quick_train if quick
                                                  else workload.train)
  config.data.eval_examples = eval_examples or (workload.quick_eval if quick else workload.eval)
  config.data.eval_splits = tuple(config.data.eval_splits[:1])
  config.train.num_epochs = 1.0
  config.train.num_steps = 0
  config.eval.every_steps = 0  # at the end of the epoch: once
  config.checkpoint.every_steps = 0  # after that evaluation: once
  config.parallel.num_devices = 1
  return config


def data_missing(config) -> str | None:
  """Why this machine cannot read the config's data (None: it can)."""
  from research.data import sources
  from research.errors import DataError
  try:
    sources.locate(config.data)
  except DataError as e:
    return str(e)
  return None


# ---- the Trainer's side: our batches as torch inputs, its outputs as our logits ------------


class TorchTask:
  """What the Trainer's side needs of a task kind: its transformers model, our batch as that
  model's inputs, and its output as the logits our model gives (for our metrics)."""

  def model(self, config, tokenizer, checkpoint: str):
    raise NotImplementedError

  def labels(self, batch) -> dict[str, Any]:
    import torch
    return {"labels": torch.from_numpy(batch["labels"]).long()}

  def inputs(self, batch, with_labels: bool = True) -> dict[str, Any]:
    import torch
    out = {k: torch.from_numpy(batch[k]).long()
           for k in ("input_ids", "attention_mask", "token_type_ids")}
    return {**out, **(self.labels(batch) if with_labels else {})}

  def logits(self, output, batch) -> np.ndarray:
    return output["logits"].float().numpy()


class LabelTask(TorchTask):
  """A label per sentence or per token: the model the GLUE and NER comparisons use
  (experiments/reference.py). Our token labels are IGNORE (-100, the label transformers ignores
  too) off first pieces."""

  def model(self, config, tokenizer, checkpoint):
    from experiments import reference
    return reference.reference_model(config.task, checkpoint)


class RelationTask(TorchTask):

  def model(self, config, tokenizer, checkpoint):
    from experiments import reference
    assert config.task.representation == "entity_start" and config.task.entity_markers
    return reference.entity_start_classifier(checkpoint, len(tokenizer),
                                             len(config.task.label_names))

  def inputs(self, batch, with_labels=True):
    import torch
    return {**super().inputs(batch, with_labels),
            "entity_spans": torch.from_numpy(batch["entity_spans"]).long()}


class QuestionAnsweringTask(TorchTask):

  def model(self, config, tokenizer, checkpoint):
    import transformers
    return transformers.AutoModelForQuestionAnswering.from_pretrained(checkpoint)

  def labels(self, batch):
    import torch
    labels = torch.from_numpy(batch["labels"]).long()
    return {"start_positions": labels[:, 0], "end_positions": labels[:, 1]}

  def logits(self, output, batch):
    import torch
    return torch.stack([output["start_logits"], output["end_logits"]], -1).float().numpy()


class MaskedLMTask(TorchTask):
  """Our masked rows ([B, slots] positions and targets) as BertForMaskedLM's [B, S] labels;
  its logits at every position gathered back to our slots."""

  def model(self, config, tokenizer, checkpoint):
    import transformers
    return transformers.BertForMaskedLM.from_pretrained(checkpoint)

  def labels(self, batch):
    import torch
    from research.data.encoded import IGNORE
    labels = np.full(batch["input_ids"].shape, IGNORE, np.int64)
    rows, slots = np.nonzero(batch["labels"] != IGNORE)
    labels[rows, batch["masked_positions"][rows, slots]] = batch["labels"][rows, slots]
    return {"labels": torch.from_numpy(labels)}

  def logits(self, output, batch):
    logits = output["logits"].float().numpy()
    return np.take_along_axis(logits, batch["masked_positions"][..., None].astype(np.int64), 1)


TORCH_TASKS: dict[str, TorchTask] = {
    "classification": LabelTask(), "token_classification": LabelTask(),
    "relation_classification": RelationTask(), "question_answering": QuestionAnsweringTask(),
    "masked_lm": MaskedLMTask()}


class _OnTheHost:
  """What evaluation.run_model asks of a DataParallel, for a model that runs outside JAX."""
  sync_each_step = False

  def process_rows(self, batch_size):
    return slice(None)

  def put_eval_batch(self, batch):
    return batch

  def get_metrics(self, out):
    return out


# ---- one system, in its own process -----------------------------------------------------------


def run_ours(config, workdir: pathlib.Path) -> dict[str, Any]:
  from research import train
  summary = train.train_and_evaluate(config, workdir)
  split = config.data.eval_splits[0]
  session = json.loads((workdir / "run.json").read_text())["sessions"][0]
  return {"steps": summary["train"]["steps"], "split": split,
          "metrics": summary["final"]["results"][split],
          "train_seconds": summary["train"]["train_seconds"],
          "wall_split_s": session["wall_seconds"]}


def run_trainer(config, workdir: pathlib.Path) -> dict[str, Any]:
  """transformers' Trainer on our batches (see the module's docstring)."""
  import torch
  import transformers
  from experiments import reference
  from research import evaluation, tasks, train
  from research.data import splits
  from research.models import builder
  start = time.perf_counter()
  setup = builder.build_model(config)  # the tokenizer (with the relation markers); no params
  kind, torch_task = tasks.kind_of(config.task), TORCH_TASKS[config.task.kind]
  data = config.data
  train_split = splits.load_encoded(data, config.task, kind, setup.tokenizer, data.train_split,
                                    data.train_examples)
  batches = train.train_batches(config, train_split)
  if batches.accum_steps != 1:
    raise ValueError("the Trainer's side takes whole batches: train.grad_accum_steps must be 1")

  class OurBatches(torch.utils.data.Dataset):
    """Item i: our batch of step i, built when the Trainer asks for it, as the model's
    inputs; with batch size 1 and the collator below, each Trainer step takes one."""

    def __len__(self):
      return batches.steps_per_epoch

    def __getitem__(self, step):
      return torch_task.inputs({k: v[0] for k, v in batches.batch(step).items()})

  transformers.set_seed(config.seed)
  model = torch_task.model(config, setup.tokenizer, str(setup.checkpoint_dir))
  args = reference.reference_training_args(
      config, config.seed, 1.0, workdir, per_device_train_batch_size=1,
      dataloader_drop_last=False, save_steps=batches.steps_per_epoch,
      remove_unused_columns=False, logging_steps=config.log.every_steps)
  trainer = reference.in_order_trainer()(model=model, args=args, train_dataset=OurBatches(),
                                         data_collator=lambda items: items[0])
  train_start = time.perf_counter()
  trainer.train()
  train_seconds = time.perf_counter() - train_start

  split_name = data.eval_splits[0]
  eval_start = time.perf_counter()
  split = splits.load_encoded(data, config.task, kind, setup.tokenizer, split_name,
                              data.eval_examples)
  model.eval()

  def eval_step(_, batch):
    with torch.no_grad():
      logits = torch_task.logits(model(**torch_task.inputs(batch, with_labels=False)), batch)
    loss, weight = kind.loss_sum(logits, batch["labels"], batch["example_mask"],
                                 batch["attention_mask"])
    return {"logits": np.asarray(kind.eval_outputs(logits, batch)),
            "example_index": batch["example_index"], "loss_sum": float(loss),
            "weight_sum": float(weight)}

  outputs, loss = evaluation.run_model(eval_step, _OnTheHost(), None, split,
                                       batch_size=config.eval.batch_size,
                                       buckets=tuple(data.length_buckets))
  scalars, _ = evaluation.score(config.task, split, outputs, loss)
  eval_seconds = time.perf_counter() - eval_start
  return {"steps": trainer.state.global_step, "split": split_name, "metrics": scalars,
          "train_seconds": train_seconds,
          "wall_split_s": {"prepare": train_start - start, "train_and_checkpoint": train_seconds,
                           "evaluation": eval_seconds}}


SYSTEMS = {"ours": run_ours, "trainer": run_trainer}


def child(argv: list[str]) -> None:
  """One system on one workload, in this process: result.json in the workdir."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
  parser.add_argument("--system", choices=sorted(SYSTEMS), required=True)
  parser.add_argument("--workdir", type=pathlib.Path, required=True)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--train-examples", type=int, default=0)
  parser.add_argument("--eval-examples", type=int, default=0)
  args = parser.parse_args(argv)
  import logging
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  config = workload_config(args.workload, args.quick, args.train_examples, args.eval_examples)
  result = SYSTEMS[args.system](config, args.workdir / args.system)
  (args.workdir / f"{args.system}.json").write_text(json.dumps(result, indent=2) + "\n")


# ---- the bench's part: both systems on each workload -----------------------------------------


def measure(name: str, out: pathlib.Path, quick: bool, train_examples: int = 0,
            eval_examples: int = 0) -> dict[str, Any]:
  """Workload `name`, the Trainer's process and then ours, each timed from its start to its
  exit; raises when either fails (its last lines of output in the message)."""
  config = workload_config(name, quick, train_examples, eval_examples)
  missing = data_missing(config)
  row: dict[str, Any] = {"workload": name, "description": WORKLOADS[name].description,
                         "kind": config.task.kind, "train_examples": config.data.train_examples,
                         "eval_examples": config.data.eval_examples,
                         "batch_size": config.train.batch_size}
  if missing:
    return {**row, "skipped": missing}
  workdir = out / name
  workdir.mkdir(parents=True, exist_ok=False)
  # our compilations paid as on a first run: nothing from the cache of earlier runs
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(workdir / "jax_compilation_cache")}
  sizes = ["--train-examples", str(config.data.train_examples),
           "--eval-examples", str(config.data.eval_examples)]
  # ours twice: the second run finds the first one's programs in the compilation cache, as a
  # second seed, a tuning trial or a resume of the same shapes does
  for key, system, folder in (("trainer", "trainer", workdir), ("ours", "ours", workdir),
                              ("ours_warm", "ours", workdir / "cache_warm")):
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e", "--workload", name, "--system", system,
         "--workdir", str(folder), *sizes], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (workdir / f"{key}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
      tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
      raise RuntimeError(f"{key} exited {done.returncode}: {tail}")
    row[key] = {**json.loads((folder / f"{system}.json").read_text()), "wall_s": wall}
  if row["ours"]["steps"] != row["trainer"]["steps"]:
    raise RuntimeError(f"ours trained {row['ours']['steps']} steps, the Trainer "
                       f"{row['trainer']['steps']}")
  row["wall_ratio"] = row["ours"]["wall_s"] / row["trainer"]["wall_s"]
  row["warm_wall_ratio"] = row["ours_warm"]["wall_s"] / row["trainer"]["wall_s"]
  return row


def main_metric(row: dict[str, Any]) -> str:
  """The task's first metric (`task.metrics`), which both systems report."""
  ours = row["ours"]["metrics"]
  return next(k for k in ours if k != "loss" and k in row["trainer"]["metrics"])


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = [
      "End to end, one epoch of each workload's first training examples and one evaluation, "
      "each system in a fresh process (imports, data, model, compilation, training, one "
      "checkpoint, evaluation); transformers' Trainer fed our batches in our order:", "",
      "| workload | train / eval examples | steps | ours wall s | Trainer wall s | ours/Trainer | "
      "ours again, compilation cache warm: s, /Trainer | "
      "metric: ours, Trainer | ours: prepare, compile, input, train steps, evaluation, "
      "checkpointing, other (s) | Trainer: prepare, train + checkpoint, evaluation (s) |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    if "skipped" in row:
      lines.append(f"| {row['workload']} | — | — | — | — | — | — | skipped: {row['skipped']} "
                   "| — | — |")
      continue
    ours, trainer = row["ours"], row["trainer"]
    metric = main_metric(row)
    split = ", ".join(f"{ours['wall_split_s'][k]:.1f}" for k in (
        "prepare", "compile", "input", "train_steps", "evaluation", "checkpointing", "other"))
    theirs = ", ".join(f"{v:.1f}" for v in trainer["wall_split_s"].values())
    lines.append(
        f"| {row['workload']}: {row['description']} | {row['train_examples']:,} / "
        f"{row['eval_examples']:,} | {ours['steps']} | {ours['wall_s']:.1f} | "
        f"{trainer['wall_s']:.1f} | **{row['wall_ratio']:.2f}** | "
        f"{row['ours_warm']['wall_s']:.1f}, **{row['warm_wall_ratio']:.2f}** | {metric} "
        f"{ours['metrics'][metric]:.4f}, {trainer['metrics'][metric]:.4f} | {split} | "
        f"{theirs} |")
  return "\n".join(lines)


if __name__ == "__main__":
  child(sys.argv[1:])
