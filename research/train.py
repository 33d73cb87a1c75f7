"""Fine-tuning, evaluation, prediction and export of a BERT classifier from one config.

`train_and_evaluate(config, workdir)` is the whole training run; read it top to bottom: set-up,
model, input, optimizer, parallel steps, checkpoint, eval, loop. `evaluate`, `predict` and
`export` reuse the same pieces on the best checkpoint of a finished (or running) workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import checkpoints, config_lib, evaluation, metrics, optim, peft, steps, tasks
from research.data import input_pipeline
from research.models import bert, hf_io
from research.parallel import DataParallel
from research.writers import MetricWriter, Progress


class RunError(RuntimeError):
  """A run that cannot go on (workdir conflict, divergence); the message says why."""


################################################################################
# Model: architecture, tokenizer and initial parameters.                       #
################################################################################


@dataclasses.dataclass
class ModelSetup:
  model: Any                        # a Flax module from tasks.build_model
  bert_config: bert.BertConfig
  hf_config: dict[str, Any]         # the source config.json, kept for export
  checkpoint_dir: pathlib.Path | None
  tokenizer_dir: pathlib.Path


def build_model(config: ml_collections.ConfigDict) -> ModelSetup:
  """The model of `config.model`: a Hugging Face checkpoint, or random init when it is ''."""
  mcfg = config.model
  if mcfg.checkpoint:
    checkpoint_dir = hf_io.resolve_checkpoint(mcfg.checkpoint)
    bert_config, hf_config = hf_io.load_config(checkpoint_dir)
  else:
    checkpoint_dir = None
    bert_config = bert.BertConfig(**mcfg.architecture.to_dict())
    hf_config = {"model_type": "bert", **bert_config.to_dict()}
  overrides = {k: mcfg[k] for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")
               if mcfg[k] is not None}
  bert_config = dataclasses.replace(bert_config, **overrides)
  hf_config.update(overrides)
  if config.data.max_length > bert_config.max_position_embeddings:
    raise config_lib.ConfigError(
        f"config.data.max_length: {config.data.max_length} exceeds the model's "
        f"max_position_embeddings {bert_config.max_position_embeddings}")
  tokenizer_dir = (hf_io.resolve_checkpoint(mcfg.tokenizer) if mcfg.tokenizer
                   else checkpoint_dir)
  if tokenizer_dir is None:
    raise config_lib.ConfigError("config.model.tokenizer: a randomly initialised model needs a "
                                 "tokenizer ('embedded', a directory or a hub name)")
  task = config.task
  model = tasks.build_model(task.kind, bert_config,
                            tasks.num_outputs(task.kind, tuple(task.label_names)),
                            dtype=jnp.dtype(mcfg.dtype), param_dtype=jnp.dtype(mcfg.param_dtype),
                            classifier_dropout=mcfg.classifier_dropout)
  return ModelSetup(model, bert_config, hf_config, checkpoint_dir, tokenizer_dir)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, dropout key) of a run with this seed: tests rebuild a run's initial params."""
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, dropout_rng


def train_batches(config: ml_collections.ConfigDict,
                  split: input_pipeline.EncodedSplit) -> input_pipeline.TrainBatches:
  """The training batches of a run: their order is a function of `config.seed` alone."""
  return input_pipeline.TrainBatches(
      split, batch_size=config.train.batch_size, accum_steps=config.train.grad_accum_steps,
      seed=config.seed, buckets=tuple(config.data.length_buckets),
      group_by_length=config.data.group_by_length)


def init_params(setup: ModelSetup, rng: jax.Array) -> Any:
  """Fresh parameters from `rng`, then the checkpoint's encoder weights over them (host numpy)."""
  dummy = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda r: setup.model.init(r, dummy, dummy)["params"])(rng)
  params = jax.tree.map(np.asarray, params)
  if setup.checkpoint_dir is not None:
    params = hf_io.params_from_state_dict(hf_io.read_state_dict(setup.checkpoint_dir), params)
  return params


################################################################################
# Workdir: the resolved config, and the check that a resumed run is the same.  #
################################################################################


def prepare_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Saves config.json, or refuses a workdir that holds a run with another config."""
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / "config.json"
  if path.exists():
    conflicts = config_lib.resume_conflicts(json.loads(path.read_text()), config)
    if conflicts:
      raise RunError(f"{workdir} holds a run with a different config; use another --workdir "
                     "(nothing was changed). Differences:\n  " + "\n  ".join(conflicts))
  if jax.process_index() == 0:
    path.write_text(config_lib.to_json(config))


@contextlib.contextmanager
def log_file(path: pathlib.Path):
  """Also writes the log to `path` while the block runs."""
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  logging.getLogger().addHandler(handler)
  try:
    yield
  finally:
    logging.getLogger().removeHandler(handler)
    handler.close()


################################################################################
# Training.                                                                    #
################################################################################


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, Any]:
  """Fine-tunes, evaluates and checkpoints; resumes if `workdir` holds a checkpoint.

  Returns the summary also written to `<workdir>/results.json`.
  """
  workdir = pathlib.Path(workdir)
  config_lib.validate(config)
  prepare_workdir(config, workdir)
  with log_file(workdir / "train.log"):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
  run_start = time.time()

  # ---- Model -------------------------------------------------------------------------------
  setup = build_model(config)
  tokenizer = input_pipeline.load_tokenizer(setup.tokenizer_dir)
  init_rng, dropout_rng = seed_keys(config.seed)

  # ---- Input -------------------------------------------------------------------------------
  data = config.data
  buckets = tuple(data.length_buckets)
  train_split = input_pipeline.load_encoded(data, config.task, tokenizer, data.train_split,
                                            data.train_examples)
  eval_splits = {name: input_pipeline.load_encoded(data, config.task, tokenizer, name,
                                                   data.eval_examples)
                 for name in data.eval_splits}
  batches = train_batches(config, train_split)
  total_steps = max(1, round(config.train.num_epochs * batches.steps_per_epoch))

  # ---- Optimizer and train state ------------------------------------------------------------
  # Trainable and frozen parameters live apart (peft.py); full fine-tuning freezes nothing.
  params, frozen = peft.split(config.peft, init_params(setup, init_rng),
                              jax.random.fold_in(init_rng, 1))
  lora_scale = peft.lora_scale(config.peft)
  tx, schedule = optim.make_optimizer(config.optimizer, params, total_steps,
                                      setup.bert_config.num_hidden_layers)
  state = steps.TrainState(step=np.int32(0), params=params, frozen=frozen,
                           opt_state=tx.init(params), rng=np.asarray(dropout_rng))
  state = jax.tree.map(np.asarray, state)
  trainable, total = peft.count(params), peft.count(params) + peft.count(frozen)
  logging.info("model: %s parameters, %s trainable (%.2f%%, peft.method=%s); %d steps (%d per "
               "epoch) of %d examples", f"{total:,}", f"{trainable:,}", 100 * trainable / total,
               config.peft.method, total_steps, batches.steps_per_epoch,
               config.train.batch_size)

  # ---- Parallel steps ----------------------------------------------------------------------
  dp = DataParallel(config.parallel.backend, config.parallel.num_devices)
  micro_batch = config.train.batch_size // config.train.grad_accum_steps
  if micro_batch % dp.num_devices or config.eval.batch_size % dp.num_devices:
    raise config_lib.ConfigError(
        f"config.train.batch_size / grad_accum_steps ({micro_batch}) and config.eval.batch_size "
        f"({config.eval.batch_size}) must be multiples of the {dp.num_devices} devices")
  train_step = dp.compile_train_step(
      steps.make_train_step(setup.model, tx, schedule, config.task.kind, lora_scale))
  eval_step = dp.compile_eval_step(steps.make_eval_step(setup.model, config.task.kind))
  materialize = dp.compile_replicated(steps.make_materialize(lora_scale))
  logging.info("%s over %d %s device(s)", dp.backend, dp.num_devices, jax.default_backend())

  # ---- Checkpoint: resume or start ---------------------------------------------------------
  ckpts = checkpoints.Checkpoints(workdir, keep=config.checkpoint.keep,
                                  best_metric=config.eval.best_metric,
                                  best_mode=config_lib.best_mode(config))
  meta = {"best": None, "train_seconds": 0.0, "evals_since_best": 0, "stopped_early": False}
  if ckpts.latest_step() is not None:
    state, meta = ckpts.restore_state(state)
    logging.info("resumed from %s at step %d", workdir / "checkpoints", int(state.step))
  start_step = int(state.step)
  if ((start_step >= total_steps or meta["stopped_early"])
      and (workdir / "results.json").exists()):
    logging.info("%s holds a finished run; its results.json stands", workdir)
    ckpts.close()
    return json.loads((workdir / "results.json").read_text())
  train_seconds_before = meta["train_seconds"]
  device_state = dp.put_replicated(state)
  del state, params, frozen  # the device copy is the state from here on
  writer = MetricWriter(workdir, resume_step=start_step)

  # ---- Evaluation --------------------------------------------------------------------------
  def evaluate_all(step: int) -> tuple[dict[str, dict[str, float]], Any]:
    """Every eval split; also returns the evaluated (plain, LoRA-merged) params."""
    model_params = materialize(device_state.params, device_state.frozen)
    results = {}
    for name, split in eval_splits.items():
      outputs, loss = evaluation.run_model(eval_step, dp, model_params, split,
                                           batch_size=config.eval.batch_size, buckets=buckets)
      scalars, report = evaluation.score(config.task, split, outputs, loss)
      results[name] = scalars
      writer.write(step, name, scalars)
      write_eval_file(workdir / "eval" / f"{name}_step{step}.json", step, scalars, report)
      logging.info("eval %s at step %d: %s", name, step,
                   ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
    return results, model_params

  def track_best(step: int, results: dict[str, dict[str, float]], model_params: Any) -> None:
    """Saves the best params (a plain BERT tree) and counts evaluations without progress."""
    first = results[data.eval_splits[0]]
    value = first[config.eval.best_metric]
    best = meta["best"]
    if ckpts.is_better(value, None if best is None else best["value"]):
      meta["best"] = {"step": step, "metric": config.eval.best_metric, "value": value,
                      "results": results}
      meta["evals_since_best"] = 0
      ckpts.save_best(step, dp.get_replicated(model_params),
                      {"step": step, "metrics": first, "results": results})
    else:
      meta["evals_since_best"] += 1

  def save_state(step: int, train_seconds: float) -> None:
    meta["train_seconds"] = train_seconds
    ckpts.save_state(step, dp.get_replicated(device_state),
                     dict(meta, step=step, epoch=step / batches.steps_per_epoch))

  # ---- Loop --------------------------------------------------------------------------------
  eval_every = config.eval.every_steps or batches.steps_per_epoch
  patience = config.eval.early_stopping_patience
  progress = Progress(total_steps=total_steps, start_step=start_step,
                      steps_per_epoch=batches.steps_per_epoch,
                      examples_per_step=config.train.batch_size)
  loop_start = time.perf_counter()
  pending: list[dict[str, jax.Array]] = []
  results: dict[str, dict[str, float]] = {}
  step = start_step
  try:
    for batch in input_pipeline.prefetch(batches(start_step, total_steps), dp.put_train_batch):
      device_state, step_metrics = train_step(device_state, batch)
      step += 1
      pending.append(step_metrics)  # stays on device until the next report
      if dp.sync_each_step:
        jax.block_until_ready(step_metrics)
      if step % config.log.every_steps == 0 or step == total_steps:
        fetched = [dp.get_metrics(m) for m in pending]
        pending = []
        loss = sum(m["loss_sum"] for m in fetched) / max(sum(m["weight_sum"] for m in fetched), 1)
        if not np.isfinite(loss):
          raise RunError(f"training diverged at step {step}: loss {loss}; the last checkpoint "
                         f"in {workdir / 'checkpoints'} is kept")
        train_metrics = {"loss": loss, "learning_rate": float(fetched[-1]["learning_rate"]),
                         "grad_norm": float(np.mean([m["grad_norm"] for m in fetched]))}
        train_metrics.update(progress.report(step, train_metrics))
        writer.write(step, "train", train_metrics)
      paused = time.perf_counter()
      if step % eval_every == 0 or step == total_steps:
        results, model_params = evaluate_all(step)
        track_best(step, results, model_params)
        del model_params
        if patience and meta["evals_since_best"] >= patience:
          meta["stopped_early"] = True
          logging.info("early stopping at step %d: no better %s for %d evaluations; the best "
                       "checkpoint (step %d) is the model", step, config.eval.best_metric,
                       patience, meta["best"]["step"])
      if (step % config.checkpoint.every_steps == 0 or step % eval_every == 0
          or step == total_steps):
        save_state(step, train_seconds_before + time.perf_counter() - loop_start)
      progress.pause(time.perf_counter() - paused)
      if meta["stopped_early"]:
        break
    if not results:  # killed after its last checkpoint, before results.json was written
      results, _ = evaluate_all(step)
  except KeyboardInterrupt:
    logging.warning("interrupted at step %d: saving a checkpoint to resume from", step)
    save_state(step, train_seconds_before + time.perf_counter() - loop_start)
    raise
  finally:
    ckpts.close()
    writer.close()
  train_seconds = train_seconds_before + time.perf_counter() - loop_start
  summary = {"final": {"step": step, "results": results}, "best": meta["best"],
             "early_stopping": ({"stopped_at": step, "restored": meta["best"]["step"]}
                                if meta["stopped_early"] else None),
             "params": {"total": total, "trainable": trainable},
             "train": {"steps": step, "epochs": step / batches.steps_per_epoch,
                       "examples": step * config.train.batch_size,
                       "train_seconds": train_seconds,
                       "wall_seconds_this_session": time.time() - run_start},
             # XLA compilations in this session: one per length bucket used is the target.
             "compiles": {"train_step": train_step.compiles, "eval_step": eval_step.compiles}}
  (workdir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  logging.info("done: %s", json.dumps(summary["final"]))
  return summary


def write_eval_file(path: pathlib.Path, step: int, scalars: dict[str, float],
                    report: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  record = {"step": step, "metrics": scalars, "report": report}
  if report and "overall" not in report:
    record["report_text"] = metrics.format_report(report)
  path.write_text(json.dumps(record, indent=2) + "\n")


################################################################################
# Evaluation, prediction and export from the best checkpoint.                  #
################################################################################

# Fields that must match the run in the workdir for its checkpoint to mean the same thing.
_MODEL_FIELDS = ("model.", "task.", "data.max_length", "data.length_buckets")


def load_best(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
              ) -> tuple[ModelSetup, Any, dict[str, Any]]:
  """The model and best params of a workdir's run (host arrays), and the best's meta."""
  workdir = pathlib.Path(workdir)
  config_lib.validate(config)
  saved = workdir / "config.json"
  if not saved.exists():
    raise RunError(f"{workdir} holds no run (no config.json)")
  conflicts = [c for c in config_lib.resume_conflicts(json.loads(saved.read_text()), config)
               if c.startswith(_MODEL_FIELDS)]
  if conflicts:
    raise RunError(f"the config does not describe the model trained in {workdir}:\n  "
                   + "\n  ".join(conflicts))
  setup = build_model(config)
  dummy = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: setup.model.init(jax.random.PRNGKey(0), dummy, dummy))
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
  eval_step = dp.compile_eval_step(steps.make_eval_step(setup.model, config.task.kind))
  return dp, eval_step, dp.put_replicated(params)


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
             ) -> dict[str, dict[str, float]]:
  """Re-evaluates the best checkpoint on `data.eval_splits`; writes eval/<split>_best.json."""
  workdir = pathlib.Path(workdir)
  setup, params, meta = load_best(config, workdir)
  tokenizer = input_pipeline.load_tokenizer(setup.tokenizer_dir)
  dp, eval_step, placed = _placed_eval(config, setup, params)
  results = {}
  for name in config.data.eval_splits:
    split = input_pipeline.load_encoded(config.data, config.task, tokenizer, name,
                                        config.data.eval_examples)
    outputs, loss = evaluation.run_model(eval_step, dp, placed, split,
                                         batch_size=config.eval.batch_size,
                                         buckets=tuple(config.data.length_buckets))
    scalars, report = evaluation.score(config.task, split, outputs, loss)
    results[name] = scalars
    write_eval_file(workdir / "eval" / f"{name}_best.json", meta["step"], scalars, report)
    text = (metrics.format_report(report) if report and "overall" not in report
            else json.dumps(report, indent=1))
    logging.info("best checkpoint (step %d) on %s: %s\n%s", meta["step"], name,
                 ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()), text)
  return results


def read_inputs(path: pathlib.Path, text_fields: tuple[str, ...], token_task: bool):
  """A .jsonl file with the task's text fields, or a .txt file with one example per line
  (the two sentences of a pair separated by a tab; the words of a token task by spaces)."""
  import datasets
  if path.suffix == ".txt":
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
      parts = line.split("\t")
      if len(parts) != len(text_fields):
        raise input_pipeline.DataError(
            f"{path}:{number}: {len(parts)} tab-separated texts, the task needs "
            f"{len(text_fields)}")
      rows.append({f: (p.split() if token_task else p) for f, p in zip(text_fields, parts)})
    return datasets.Dataset.from_list(rows)
  if path.suffix in (".jsonl", ".json"):
    return datasets.load_dataset("json", data_files=str(path), split="train")
  raise input_pipeline.DataError(f"{path}: --input must be a .txt or .jsonl file")


def predict(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            input_path: str | pathlib.Path, output_path: str | pathlib.Path) -> int:
  """Writes one JSON line of predictions per input example; returns how many."""
  input_path, output_path = pathlib.Path(input_path), pathlib.Path(output_path)
  if not input_path.is_file():
    raise input_pipeline.DataError(f"--input {input_path} does not exist")
  if output_path.exists():
    raise RunError(f"--output {output_path} exists; it is not overwritten")
  task = config.task
  token_task = task.kind == "token_classification"
  setup, params, meta = load_best(config, workdir)
  tokenizer = input_pipeline.load_tokenizer(setup.tokenizer_dir)
  dataset = read_inputs(input_path, tuple(task.text_fields), token_task)
  split = input_pipeline.encode(dataset, tokenizer, task, config.data.max_length,
                                str(input_path), labelled=False)
  dp, eval_step, placed = _placed_eval(config, setup, params)
  outputs, _ = evaluation.run_model(eval_step, dp, placed, split,
                                    batch_size=config.eval.batch_size,
                                    buckets=tuple(config.data.length_buckets))
  predicted = evaluation.predictions(task.kind, split, outputs)
  names = tuple(task.label_names)
  output_path.parent.mkdir(parents=True, exist_ok=True)
  with output_path.open("w") as f:
    for i, row in enumerate(dataset):
      record = {field: row[field] for field in task.text_fields}
      if task.kind == "classification":
        probabilities = np.exp(outputs[i] - outputs[i].max())
        probabilities /= probabilities.sum()
        record.update(label=names[predicted[i]],
                      probabilities=dict(zip(names, probabilities.round(6).tolist())))
      elif task.kind == "regression":
        record["score"] = float(predicted[i])
      else:
        record["tags"] = [names[t] for t in predicted[i]]
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
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
  setup, params, meta = load_best(config, workdir)
  task = config.task
  hf_io.export(params, output_dir, base_config=setup.hf_config,
               architecture=tasks.hf_architecture(task.kind),
               label_names=tuple(task.label_names),
               num_labels=tasks.num_outputs(task.kind, tuple(task.label_names)),
               tokenizer_dir=setup.tokenizer_dir)
  logging.info("exported the best checkpoint (step %d) to %s", meta["step"], output_dir)
  return output_dir
