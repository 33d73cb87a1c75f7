"""Inference on a workdir's best checkpoint: evaluate, predict, export.

Each reads the run's `config.json` to check that the given config describes the same model, and
restores the best params (`best/`), which are a plain BERT tree whatever the fine-tuning method.
With several processes, each process evaluates its block of every batch and process 0 writes.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np

from research import checkpoints, config_lib, evaluation, metrics, steps, tasks, writers
from research.data import sources, splits
from research.errors import DataError, RunError
from research.models import hf_io
from research.parallel import DataParallel, compiled_programs_released
from research.models.builder import (ModelSetup, build_model, init_inputs,
                                     with_checkpoint_architecture)

# Fields that must match the run in the workdir for its checkpoint to mean the same thing.
_MODEL_FIELDS = ("model.", "task.", "data.max_length", "data.length_buckets")


def load_best(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
              ) -> tuple[ModelSetup, Any, dict[str, Any]]:
  """The model and best params of a workdir's run (host arrays), and the best's meta."""
  workdir = pathlib.Path(workdir)
  config_lib.validate(config)
  path = workdir / "config.json"
  if not path.exists():
    raise RunError(f"{workdir} holds no run (no config.json)")
  saved = writers.read_json(path)
  tasks.kind_of(config.task).adopt_saved_tags(config.task, saved)  # a token task's tags
  conflicts = [c for c in config_lib.resume_conflicts(saved, with_checkpoint_architecture(config))
               if c.startswith(_MODEL_FIELDS)]
  if conflicts:
    raise RunError(f"the config does not describe the model trained in {workdir}:\n  "
                   + "\n  ".join(conflicts))
  setup = build_model(config)
  shapes = jax.eval_shape(lambda: setup.model.init(jax.random.PRNGKey(0),
                                                   *init_inputs(setup.model)))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])
  ckpts = checkpoints.Checkpoints(workdir, keep=config.checkpoint.keep,
                                  best_metric=config.eval.best_metric,
                                  best_mode=config_lib.best_mode(config))
  try:
    if ckpts.best_step() is None:
      raise RunError(f"{workdir} has no best checkpoint yet (none is saved before the first "
                     "evaluation)")
    params, meta = ckpts.restore_best(template)
  finally:
    ckpts.close()
  return setup, params, meta


def _placed_eval(config, setup: ModelSetup, params: Any):
  dp = DataParallel(config.parallel.backend, config.parallel.num_devices)
  eval_step = dp.compile_eval_step(steps.make_eval_step(setup.model,
                                                        tasks.kind_of(config.task)))
  return dp, eval_step, dp.put_replicated(params)


@compiled_programs_released()
def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
             ) -> dict[str, dict[str, float]]:
  """Re-evaluates the best checkpoint on `data.eval_splits`; writes eval/<split>_best.json and
  its per-example predictions (`research.compare --checkpoint best` reads them)."""
  workdir = pathlib.Path(workdir)
  writers.check_writable(workdir / "eval")  # before the work whose results it keeps
  setup, params, meta = load_best(config, workdir)
  tokenizer = setup.tokenizer
  dp, eval_step, placed = _placed_eval(config, setup, params)
  results = {}
  for name in config.data.eval_splits:
    split = splits.load_encoded(config.data, config.task, tasks.kind_of(config.task), tokenizer,
                                name, config.data.eval_examples)
    outputs, loss = evaluation.run_model(eval_step, dp, placed, split,
                                         batch_size=config.eval.batch_size,
                                         buckets=tuple(config.data.length_buckets))
    try:
      metrics.check_finite(outputs, loss)  # a NaN model still scores an accuracy
    except metrics.MetricError as e:
      raise RunError(f"evaluation of {name} by the best checkpoint (step {meta['step']}): "
                     f"{e}; its results were not written") from e
    scalars, report = evaluation.score(config.task, split, outputs, loss)
    results[name] = scalars
    evaluation.write_eval_file(workdir / "eval" / f"{name}_best.json", meta["step"], scalars,
                               report, evaluation.per_example(config.task, split, outputs, report))
    text = evaluation.report_text(report) or json.dumps(report.get("scores", report), indent=1)
    logging.info("best checkpoint (step %d) on %s: %s\n%s", meta["step"], name,
                 ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()), text)
  return results


def read_inputs(path: pathlib.Path, text_fields: tuple[str, ...], token_task: bool):
  """A .jsonl file with the task's text fields, or a .txt file with one example per line
  (the two sentences of a pair separated by a tab; the words of a token task by spaces).
  Lines end at \n (or \r\n) only: U+2028, U+0085 and the like are characters of a text."""
  import datasets
  if path.suffix == ".txt":
    rows = []
    lines = sources.check_utf8(path).split("\n")
    if lines[-1] == "":  # the newline that ends the last line
      lines.pop()
    for number, line in enumerate((line.removesuffix("\r") for line in lines), 1):
      parts = line.split("\t")
      if len(parts) != len(text_fields):
        raise DataError(
            f"{path}:{number}: {len(parts)} tab-separated texts, the task needs "
            f"{len(text_fields)}")
      rows.append({f: (p.split() if token_task else p) for f, p in zip(text_fields, parts)})
    if not rows:
      raise DataError(f"{path} has no lines to predict")
    return datasets.Dataset.from_list(rows)
  if path.suffix in (".jsonl", ".json"):
    return sources.read_file(path)
  raise DataError(f"{path}: --input must be a .txt or .jsonl file")


@compiled_programs_released()
def predict(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            input_path: str | pathlib.Path, output_path: str | pathlib.Path) -> int:
  """Writes one JSON line of predictions per input example; returns how many."""
  input_path, output_path = pathlib.Path(input_path), pathlib.Path(output_path)
  task = config.task
  kind = tasks.kind_of(task)
  if kind.predict_refusal:
    raise RunError(kind.predict_refusal)
  if not input_path.is_file():
    raise DataError(f"--input {input_path} does not exist")
  if output_path.exists():
    raise RunError(f"--output {output_path} exists; it is not overwritten")
  setup, params, meta = load_best(config, workdir)
  tokenizer = setup.tokenizer
  dataset = read_inputs(input_path, tuple(task.text_fields), kind.reads_words)
  split = kind.encode(dataset, tokenizer, task, config.data.max_length, str(input_path),
                      labelled=False)
  dp, eval_step, placed = _placed_eval(config, setup, params)
  outputs, _ = evaluation.run_model(eval_step, dp, placed, split,
                                    batch_size=config.eval.batch_size,
                                    buckets=tuple(config.data.length_buckets))
  bad = metrics.nonfinite_rows(outputs)  # NaN probabilities are not predictions
  if len(bad):
    first = int(kind.example_of_output(split, bad[0]))
    where = f"line {first + 1}" if input_path.suffix == ".txt" else f"example {first + 1}"
    raise RunError(f"--input {input_path} {where}: the outputs of the best checkpoint (step "
                   f"{meta['step']}) are NaN or infinite ({len(bad)} of {len(outputs)}); "
                   "nothing was written")
  lines = []
  for row, predicted in zip(dataset, kind.prediction_records(task, split, outputs,
                                                              len(dataset))):
    record = {field: row[field] for field in task.text_fields}
    record.update(predicted)
    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
  writers.write_text(output_path, "".join(lines))
  logging.info("wrote %d predictions of the best checkpoint (step %d) to %s", len(dataset),
               meta["step"], output_path)
  return len(dataset)


def export(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
           output_dir: str | pathlib.Path) -> pathlib.Path:
  """Saves the best checkpoint as a Hugging Face model directory (safetensors + config +
  tokenizer) that `transformers.AutoModelFor*.from_pretrained` loads."""
  output_dir = pathlib.Path(output_dir)
  if output_dir.exists() and any(output_dir.iterdir()):
    raise RunError(f"--output {output_dir} is not empty; nothing is overwritten")
  writers.check_writable(output_dir)
  setup, params, meta = load_best(config, workdir)
  task = config.task
  kind = tasks.kind_of(task)
  architecture = kind.hf_architecture(task, setup.bert_config.model_type)
  extra = kind.export_extra(task)  # a head transformers has no class of
  params = kind.export_params(params, setup.checkpoint_dir)
  if writers.is_writer():
    # Written beside --output and renamed to it when complete: an export that fails (a full
    # disk) leaves no directory that looks like a model.
    partial = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
      hf_io.export(params, partial, base_config=setup.hf_config, architecture=architecture,
                   label_names=tuple(task.label_names),
                   num_labels=kind.num_outputs(tuple(task.label_names)),
                   tokenizer_dir=setup.tokenizer_dir,
                   tokenizer=setup.tokenizer if kind.entity_markers(task) else None,
                   extra_config=extra, source=str(pathlib.Path(workdir).absolute()))
      if output_dir.exists():
        output_dir.rmdir()  # empty (checked above)
      partial.rename(output_dir)
    except Exception as e:  # OSError; safetensors raises its own on a full disk
      shutil.rmtree(partial, ignore_errors=True)
      if isinstance(e, OSError):
        raise writers.write_error(output_dir, e) from e
      if "No space left" in str(e) or "os error 28" in str(e):
        raise writers.write_error(output_dir, OSError(28, "No space left on device")) from e
      raise
  logging.info("exported the best checkpoint (step %d) to %s", meta["step"], output_dir)
  return output_dir
