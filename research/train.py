"""Fine-tuning a BERT encoder from one config: `train_and_evaluate(config, workdir)`.

Read it top to bottom: model, input, optimizer, parallel steps, checkpoint, then the loop, whose
periodic actions (log, evaluate, keep the best, checkpoint) are the module-level functions of
the `Run` (fixed) and its `RunState` (what changes). The same command runs as one process or as
one of several (`distributed.py`): every process runs this loop in lockstep on its block of each
batch, and process 0 alone writes files (`writers.py`).

Stopping: SIGTERM (a cluster's preemption) or SIGINT (Ctrl-C) lets the current step finish;
every process then stops at the same step boundary, saves a checkpoint there and raises
`Interrupted` (`research.main` exits with `EXIT_INTERRUPTED`); rerunning the same command
resumes. A signal during an evaluation stops the run after it. `checkpoint.every_seconds`
bounds the work a kill -9 loses. `inference.py` evaluates, predicts and exports the best
checkpoint of a workdir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from research import (checkpoints, config_lib, evaluation, metrics, optim, peft, run_record,
                      steps, tasks, writers)
from research.data import input_pipeline
from research.models import bert, hf_io
from research.parallel import CountingStep, DataParallel, compiled_programs_released

EXIT_INTERRUPTED = 75  # stopped by a signal after saving a checkpoint: rerun to resume
PAUSE_ENV = "RESEARCH_TEST_PAUSE"  # tests: '<point>:<step>:<file>' pauses there (see _test_pause)


class RunError(RuntimeError):
  """A run that cannot go on (workdir conflict, divergence); the message says why."""


class Interrupted(RunError):
  """Stopped by a signal at a step boundary, with a checkpoint there to resume from."""


################################################################################
# Model: architecture, tokenizer and initial parameters.                       #
################################################################################


@dataclasses.dataclass
class ModelSetup:
  model: Any                        # a Flax module from TaskKind.build_model
  bert_config: bert.BertConfig
  hf_config: dict[str, Any]         # the source config.json, kept for export
  checkpoint_dir: pathlib.Path | None
  tokenizer_dir: pathlib.Path
  tokenizer: Any                    # the fast tokenizer, with entity markers if the task has them


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
  bert_config = dataclasses.replace(bert_config, **overrides, dropout_impl=mcfg.dropout_impl,
                                    remat=mcfg.remat)
  hf_config.update(overrides)
  if config.data.max_length > bert_config.max_length:
    raise config_lib.ConfigError(
        f"config.data.max_length: {config.data.max_length} exceeds the {bert_config.max_length} "
        f"tokens that the model's max_position_embeddings "
        f"{bert_config.max_position_embeddings} hold")
  tokenizer_dir = (hf_io.resolve_checkpoint(mcfg.tokenizer) if mcfg.tokenizer
                   else checkpoint_dir)
  if tokenizer_dir is None:
    raise config_lib.ConfigError("config.model.tokenizer: a randomly initialised model needs a "
                                 "tokenizer ('embedded', a directory or a hub name)")
  hf_io.require_tokenizer(tokenizer_dir, "config.model.tokenizer" if mcfg.tokenizer
                         else "config.model.checkpoint")
  task = config.task
  kind = tasks.kind_of(task)
  tokenizer = input_pipeline.load_tokenizer(tokenizer_dir)
  markers = kind.entity_markers(task)
  if markers:  # new tokens: the embedding matrix grows to hold them (hf_io.grow_vocabulary)
    ids = input_pipeline.add_entity_markers(tokenizer, markers)
    bert_config = dataclasses.replace(
        bert_config, vocab_size=max(bert_config.vocab_size, max(ids) + 1))
    hf_config["vocab_size"] = bert_config.vocab_size
  model = kind.build_model(bert_config, kind.num_outputs(tuple(task.label_names)),
                           dtype=jnp.dtype(mcfg.dtype), param_dtype=jnp.dtype(mcfg.param_dtype),
                           classifier_dropout=mcfg.classifier_dropout,
                           representation=task.get("representation", "cls"),
                           start_offset=1 if markers else 0)
  return ModelSetup(model, bert_config, hf_config, checkpoint_dir, tokenizer_dir, tokenizer)


def with_checkpoint_architecture(config: ml_collections.ConfigDict
                                 ) -> ml_collections.ConfigDict:
  """A copy of `config` whose `model.architecture` is the checkpoint's (read from its
  config.json), so that the run's config.json shows the model that was trained rather than
  the unused default shapes; random init keeps its own."""
  if not config.model.checkpoint:
    return config
  bert_config, _ = hf_io.load_config(hf_io.resolve_checkpoint(config.model.checkpoint))
  config = config.copy_and_resolve_references()
  config.model.architecture = type(config.model.architecture)(bert_config.to_dict())
  return config


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
      group_by_length=config.data.group_by_length, order=config.data.batch_order)


def streamed_train_batches(config: ml_collections.ConfigDict, tokenizer, source: str
                           ) -> input_pipeline.StreamedTrainBatches:
  """The training batches of a streamed masked-LM corpus (`data.streaming`)."""
  data = config.data
  return input_pipeline.StreamedTrainBatches(
      input_pipeline.load_stream(source, data.subset, data.train_split), tokenizer, config.task,
      data.max_length, batch_size=config.train.batch_size,
      accum_steps=config.train.grad_accum_steps, seed=config.seed,
      buckets=tuple(data.length_buckets), total_steps=config.train.num_steps,
      shuffle_buffer=data.shuffle_buffer, limit=data.train_examples,
      where=f"{source} [{data.train_split}, streamed]")


def init_inputs(model) -> tuple[jax.Array, ...]:
  """A one-row batch of `model`'s positional inputs, to initialise it (shapes only)."""
  dummy = jnp.ones((1, 8), jnp.int32)
  inputs = (dummy, dummy, jnp.zeros_like(dummy))
  if isinstance(model, bert.BertForRelationClassification):
    inputs += (jnp.asarray([[1, 2, 4, 5]], jnp.int32),)
  if isinstance(model, bert.BertForMaskedLM):
    inputs += (jnp.asarray([[1, 2]], jnp.int32),)
  return inputs


def init_params(setup: ModelSetup, rng: jax.Array) -> Any:
  """Fresh parameters from `rng`, then the checkpoint's encoder weights over them (host numpy).

  With a checkpoint, only the leaves it does not overwrite are computed (`hf_io.
  initialised_leaves`): the same values as a whole init, whose encoder would cost seconds of
  compilation to be thrown away. Logged before and after: compiling the init takes a while."""
  logging.info("compiling and running the parameter init ...")
  start = time.perf_counter()
  params = _init_params(setup, rng)
  logging.info("... parameters initialised in %.1f s", time.perf_counter() - start)
  return params


def _init_params(setup: ModelSetup, rng: jax.Array) -> Any:
  inputs = init_inputs(setup.model)

  def init(r):
    return setup.model.init(r, *inputs)["params"]

  if setup.checkpoint_dir is None:
    return jax.tree.map(np.asarray, jax.jit(init)(rng))
  state = hf_io.read_state_dict(setup.checkpoint_dir)
  # A masked LM continues the checkpoint's own LM head when it has one (BertForMaskedLM,
  # BertForPreTraining); a task head always starts fresh.
  lm_head = isinstance(setup.model, bert.BertForMaskedLM) and hf_io.has_lm_head(state)
  if isinstance(setup.model, bert.BertForMaskedLM) and not lm_head:
    logging.info("the checkpoint has no masked-LM head (cls.predictions.*): it starts "
                 "freshly initialised")
  shapes = jax.eval_shape(init, rng)
  used = sorted(hf_io.initialised_leaves(state, shapes, load_head=lm_head))
  shapes = traverse_util.flatten_dict(shapes)
  values = jax.jit(lambda r: [traverse_util.flatten_dict(init(r))[path] for path in used])(rng)
  params = traverse_util.unflatten_dict({**shapes, **{
      path: np.asarray(value) for path, value in zip(used, values)}})
  state = hf_io.grow_vocabulary(state, params)
  return hf_io.params_from_state_dict(state, params, load_head=lm_head)


################################################################################
# Workdir: the resolved config, and the check that a resumed run is the same.  #
################################################################################


def check_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Refuses a workdir that holds a run with another config (before anything is written); a
  token task without tag names takes the run's (`TaskKind.adopt_saved_tags`)."""
  path = workdir / "config.json"
  if path.exists():
    saved = writers.read_json(path)
    tasks.kind_of(config.task).adopt_saved_tags(config.task, saved)
    conflicts = config_lib.resume_conflicts(saved, config)
    if conflicts:
      raise RunError(f"{workdir} holds a run with a different config; use another --workdir "
                     "(nothing was changed). Differences:\n  " + "\n  ".join(conflicts))


################################################################################
# Run state, and the periodic actions of the loop.                            #
################################################################################


_NO_STEPS = {"loss_sum": 0.0, "weight_sum": 0.0, "grad_norm": 0.0, "steps": 0,
             "learning_rate": 0.0}


@dataclasses.dataclass
class RunState:
  """What a run accumulates besides the train state; saved as every checkpoint's meta."""

  best: dict[str, Any] | None = None  # step, metric, value and results of the best evaluation
  evals_since_best: int = 0           # evaluations without a better best (early stopping)
  stopped_early: bool = False
  pruned_at: int | None = None        # the step at which the caller's hook stopped the run
  skipped_steps: list[int] = dataclasses.field(default_factory=list)  # non-finite, not applied
  train_seconds: float = 0.0          # the training loop's time over all sessions
  last_results: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  # Sums of the train metrics since the last log step, so that a resumed run logs the same
  # averages as an uninterrupted one.
  since_log: dict[str, float] = dataclasses.field(default_factory=lambda: dict(_NO_STEPS))

  def add_step(self, metrics: dict[str, np.ndarray]) -> None:
    """Counts one step's host metrics into `since_log`."""
    for name in ("loss_sum", "weight_sum", "grad_norm"):
      self.since_log[name] += float(metrics[name])
    self.since_log["steps"] += 1
    self.since_log["learning_rate"] = float(metrics["learning_rate"])

  def take_log(self) -> dict[str, float]:
    """The train metrics since the last log step (and starts counting anew)."""
    logged, self.since_log = self.since_log, dict(_NO_STEPS)
    return {"loss": logged["loss_sum"] / max(logged["weight_sum"], 1),
            "learning_rate": logged["learning_rate"],
            "grad_norm": logged["grad_norm"] / max(logged["steps"], 1)}

  @classmethod
  def from_meta(cls, meta: dict[str, Any]) -> "RunState":
    return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta})


@dataclasses.dataclass(frozen=True)
class Run:
  """What the loop's actions work with, fixed once training starts."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  dp: DataParallel
  eval_step: CountingStep
  materialize: Any                     # (trainable, frozen) params -> the plain model's params
  eval_splits: dict[str, input_pipeline.EncodedSplit]
  ckpts: checkpoints.Checkpoints
  writer: writers.MetricWriter
  total_steps: int
  throughput: run_record.Throughput  # this session's counts, for run.json
  batches: Any  # the training batches: what a checkpoint keeps of them (`resume_record`)
  # (step, selection metric) -> whether to stop: a tuner's pruner (`research.tune`)
  on_evaluation: Callable[[int, float], bool] | None = None


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
  """Whether a periodic action is due after `step`: every `every` steps (0: never), and after
  the last step unless `last=False` (big_vision's `u.itstime`)."""
  return (every > 0 and step % every == 0) or (last and step == total)


def evaluate(run: Run, device_state: steps.TrainState, step: int
             ) -> tuple[dict[str, dict[str, float]], Any]:
  """Scores every eval split and writes the results; also returns the evaluated (plain,
  LoRA-merged) params, on the devices."""
  config = run.config
  model_params = run.materialize(device_state.params, device_state.frozen)
  results = {}
  for name, split in run.eval_splits.items():
    start = time.perf_counter()
    outputs, loss = evaluation.run_model(run.eval_step, run.dp, model_params, split,
                                         batch_size=config.eval.batch_size,
                                         buckets=tuple(config.data.length_buckets))
    run.throughput.eval_seconds += time.perf_counter() - start
    run.throughput.eval_examples += len(split)
    run.throughput.eval_tokens += int(split.lengths.sum())
    try:
      metrics.check_finite(outputs, loss)  # a NaN model still scores an accuracy
      scalars, report = evaluation.score(config.task, split, outputs, loss)
    except metrics.MetricError as e:
      raise RunError(f"evaluation of {name} at step {step}: {e}; no checkpoint of that step "
                     "was saved") from e
    results[name] = scalars
    run.writer.write(step, name, scalars)
    evaluation.write_eval_file(run.workdir / "eval" / f"{name}_step{step}.json", step, scalars,
                               report, evaluation.per_example(config.task, split, outputs, report))
    logging.info("eval %s at step %d: %s", name, step,
                 ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
  return results, model_params


def track_best(run: Run, state: RunState, step: int, results: dict[str, dict[str, float]],
               model_params: Any) -> None:
  """Saves the best params (a plain BERT tree) and counts evaluations without progress."""
  config = run.config
  first = results[config.data.eval_splits[0]]
  value = first[config.eval.best_metric]
  if run.ckpts.is_better(value, None if state.best is None else state.best["value"]):
    state.best = {"step": step, "metric": config.eval.best_metric, "value": value,
                  "results": results}
    state.evals_since_best = 0
    run.ckpts.save_best(step, run.dp.get_replicated(model_params),
                        {"step": step, "metrics": first, "results": results})
  else:
    state.evals_since_best += 1
  patience = config.eval.early_stopping_patience
  if patience and state.evals_since_best >= patience:
    state.stopped_early = True
    logging.info("early stopping at step %d: no better %s for %d evaluations; the best "
                 "checkpoint (step %d) is the model", step, config.eval.best_metric, patience,
                 state.best["step"])


def consult_on_evaluation(run: Run, state: RunState, step: int) -> None:
  """Gives the caller's `on_evaluation` hook this evaluation's selection metric (the value
  `track_best` ranks by); when it answers True the run is pruned: it stops after this step's
  checkpoint, as early stopping does, and stays stopped on a rerun."""
  if run.on_evaluation is None:
    return
  config = run.config
  value = state.last_results[config.data.eval_splits[0]][config.eval.best_metric]
  if run.on_evaluation(step, value):
    state.pruned_at = step
    logging.info("pruned at step %d: the tuner stops this run (%s %.4f)", step,
                 config.eval.best_metric, value)


def _kept(run: Run, state: RunState) -> str:
  """What a run that stops now leaves behind."""
  return " and ".join([f"the last checkpoint (step {run.ckpts.latest_step()})"
                       if run.ckpts.latest_step() is not None else "no checkpoint yet",
                       f"the best (step {state.best['step']})" if state.best else "no best yet"])


def read_step_metrics(run: Run, state: RunState,
                      pending: list[tuple[int, dict[str, jax.Array]]]) -> np.ndarray:
  """Reads steps' metrics into the run state; returns the sum of their signals.

  A step whose loss or gradient norm is not finite stops the run here, before anything after
  it is saved (the last checkpoint and the best are earlier, finite states), unless
  `train.skip_nonfinite_steps` (the step then changed nothing, and is counted and logged) and
  the skipped steps are at most `train.max_skipped_fraction` of the run's.
  """
  signals = np.zeros(2, np.int64)
  for step, on_device in pending:
    values = run.dp.get_metrics(on_device)
    signals += values["signals"]
    if values["finite"]:
      state.add_step(values)
      continue
    loss = float(values["loss_sum"]) / max(float(values["weight_sum"]), 1.0)
    what = f"loss {loss:.4g}, gradient norm {float(values['grad_norm']):.4g}"
    train_cfg = run.config.train
    if not train_cfg.skip_nonfinite_steps:
      raise RunError(f"training diverged at step {step}: {what}; nothing from that step on was "
                     f"saved ({_kept(run, state)} kept). Lower optimizer.learning_rate, or set "
                     "train.skip_nonfinite_steps=True to skip such updates")
    state.skipped_steps.append(step)
    skipped, bound = len(state.skipped_steps), train_cfg.max_skipped_fraction * run.total_steps
    if skipped > bound:
      listed = state.skipped_steps if skipped <= 10 else state.skipped_steps[:10] + ["..."]
      raise RunError(
          f"training skipped the updates of {skipped} of its {run.total_steps} steps "
          f"({', '.join(map(str, listed))}), more than train.max_skipped_fraction="
          f"{train_cfg.max_skipped_fraction} allows: their loss or gradient norm is not finite "
          f"(step {step}: {what}); nothing from step {step} on was saved "
          f"({_kept(run, state)} kept). Lower optimizer.learning_rate or check the data")
    logging.warning("step %d: %s: the update is skipped (train.skip_nonfinite_steps; %d of at "
                    "most %d)", step, what, skipped, int(bound))
  return signals


def save_checkpoint(run: Run, state: RunState, device_state: steps.TrainState,
                    step: int) -> None:
  """The train state at `step` with the run state as its meta (every process takes part)."""
  meta = dict(dataclasses.asdict(state), step=step, epoch=step / run.batches.steps_per_epoch,
              **run.batches.resume_record(step))
  run.ckpts.save_state(step, run.dp.get_replicated(device_state), meta)


class StopSignals:
  """SIGTERM and SIGINT set `requested` (the signal's name) instead of killing the process.

  The loop finishes the step, and all processes agree on where to stop (see the loop). A second
  Ctrl-C aborts at once, without a checkpoint. Handlers are installed only in the main thread
  (where Python delivers signals), for the duration of the `with` block.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)

  def _handle(self, number: int, frame) -> None:
    if self.requested and number == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C
    self.requested = signal.Signals(number).name
    # The next step to start carries the request; its flags are read with the step after it.
    logging.warning("%s: stopping with a checkpoint within the next two steps (press Ctrl-C "
                    "again to abort without one)", self.requested)


def _test_pause(point: str, step: int, stop: StopSignals) -> None:
  """Tests only: with `RESEARCH_TEST_PAUSE=<point>:<step>:<file>`, touches `<file>.<process>`
  at `point` ('step': after a step's actions; 'eval': as its evaluation starts; 'best': after
  the best checkpoint is saved; 'results': before results.json is written) and waits until
  this process is asked to stop or `<file>.release` exists (or 2 minutes pass), so that a
  signal or a kill -9 lands exactly there."""
  spec = os.environ.get(PAUSE_ENV)
  if not spec:
    return
  where, when, path = spec.split(":", 2)
  if where != point or int(when) != step:
    return
  pathlib.Path(f"{path}.{jax.process_index()}").touch()
  release, deadline = pathlib.Path(f"{path}.release"), time.monotonic() + 120
  while not (stop.requested or release.exists()) and time.monotonic() < deadline:
    time.sleep(0.02)


################################################################################
# Training.                                                                    #
################################################################################


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       on_evaluation: Callable[[int, float], bool] | None = None
                       ) -> dict[str, Any]:
  """Fine-tunes, evaluates and checkpoints; resumes if `workdir` holds a checkpoint.

  Returns the summary also written to `<workdir>/results.json`; raises `Interrupted` after
  saving a checkpoint if a signal stopped it. `on_evaluation(step, value)`, if given, is told
  the selection metric after every periodic evaluation and may prune the run by returning True
  (`consult_on_evaluation`).
  """
  workdir = pathlib.Path(workdir)
  config_lib.validate(config)
  if workdir.exists() and not workdir.is_dir():
    raise RunError(f"--workdir {workdir} is a file, not a directory")
  config = with_checkpoint_architecture(config)
  with (compiled_programs_released(), writers.workdir_lock(workdir),
        writers.RunLog.attached(workdir / "train.log") as log, StopSignals() as stop):
    check_workdir(config, workdir)
    return _train(config, workdir, log, stop, on_evaluation)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, log: writers.RunLog,
           stop: StopSignals, on_evaluation: Callable[[int, float], bool] | None
           ) -> dict[str, Any]:
  run_start = time.time()
  source = input_pipeline.locate(config.data)  # before the model: a data mistake fails fast
  logging.info("data: %s; a registered task looks at data.dataset, $%s, the hub, then the "
               "repository's data/ slice", source.describe(), input_pipeline.DATA_DIR_ENV)

  # A token task without task.label_names takes the tags of its training split; config.json
  # keeps them for the resume, eval, predict and export.
  kind = tasks.kind_of(config.task)
  names = kind.label_names_from_data(config.data, config.task)
  if names is not None:
    config.task.label_names = names
    logging.info("task.label_names from the training split: %s", list(config.task.label_names))

  # ---- Model -------------------------------------------------------------------------------
  setup = build_model(config)
  tokenizer = setup.tokenizer
  init_rng, dropout_rng = seed_keys(config.seed)

  # ---- Input -------------------------------------------------------------------------------
  data = config.data
  if data.streaming:  # a masked-LM corpus read as it is consumed
    batches = streamed_train_batches(config, tokenizer, source.location)
    train_record = {data.train_split: batches.record(source.location, data.train_split)}
  else:
    train_split = input_pipeline.load_encoded(data, config.task, tokenizer, data.train_split,
                                              data.train_examples)
    batches = train_batches(config, train_split)
    train_record = input_pipeline.data_record(data, {data.train_split: train_split})
  eval_splits = {name: input_pipeline.load_encoded(data, config.task, tokenizer, name,
                                                   data.eval_examples)
                 for name in data.eval_splits}
  data_record = {**train_record, **input_pipeline.data_record(data, eval_splits)}
  total_steps = (config.train.num_steps
                 or max(1, round(config.train.num_epochs * batches.steps_per_epoch)))
  if (workdir / "data.json").exists():
    changes = input_pipeline.data_changes(writers.read_json(workdir / "data.json"),
                                          data_record)
    if changes:
      raise RunError(f"{workdir} holds a run trained on other data; use another --workdir "
                     "(nothing was changed). Differences:\n  " + "\n  ".join(changes))

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
      steps.make_train_step(setup.model, tx, schedule, kind, lora_scale,
                            skip_nonfinite=config.train.skip_nonfinite_steps))
  eval_step = dp.compile_eval_step(steps.make_eval_step(setup.model, kind))
  logging.info("%s over %d %s device(s) in %d process(es)", dp.backend, dp.num_devices,
               jax.default_backend(), dp.process_count)

  # ---- Checkpoint: resume or start ---------------------------------------------------------
  ckpts = checkpoints.Checkpoints(workdir, keep=config.checkpoint.keep,
                                  best_metric=config.eval.best_metric,
                                  best_mode=config_lib.best_mode(config))
  run_state = RunState()
  if ckpts.latest_step() is not None:
    state, meta = ckpts.restore_state(state)
    run_state = RunState.from_meta(meta)
    logging.info("resumed from %s at step %d", workdir / "checkpoints", int(state.step))
    if int(state.step) < total_steps:  # a stream re-reads (and checks) the rows it trained on
      batches.check_resume(int(state.step), meta)
  start_step = int(state.step)
  if ((start_step >= total_steps or run_state.stopped_early or run_state.pruned_at is not None)
      and (workdir / "results.json").exists()):
    logging.info("%s holds a finished run; its results.json stands", workdir)
    ckpts.close()
    return writers.read_json(workdir / "results.json")
  # W&B's start can fail (not logged in, refused): before the workdir is claimed, so that a
  # failed start writes nothing.
  try:
    writer = writers.MetricWriter(workdir, resume_step=start_step,
                                  wandb_project=config.log.wandb_project,
                                  wandb_config=config.to_dict())
  except BaseException:
    ckpts.close()
    raise
  # The config, data, model and checkpoint are valid: the workdir now belongs to this run.
  log.start()
  writers.write_text(workdir / "config.json", config_lib.to_json(config))
  writers.write_json(workdir / "data.json", data_record)
  record = run_record.RunRecord(workdir, dp=dp, data_source=source, data=data_record,
                                start_step=start_step)
  train_seconds_before = run_state.train_seconds
  device_state = dp.put_replicated(state)
  del state, params, frozen  # the device copy is the state from here on
  run = Run(config=config, workdir=workdir, dp=dp, eval_step=eval_step, batches=batches,
            materialize=dp.compile_replicated(steps.make_materialize(lora_scale)),
            eval_splits=eval_splits, ckpts=ckpts, writer=writer,
            total_steps=total_steps,
            throughput=run_record.Throughput(), on_evaluation=on_evaluation)

  # ---- Loop --------------------------------------------------------------------------------
  # Each step also sums every process's flags (stop requested, save requested) over all
  # devices. The host reads a step's metrics one step late, while the next step runs, so the
  # loop never waits on the device; every process reads the same flags for the same step and
  # acts at the same step boundary.
  eval_every = config.eval.every_steps or batches.steps_per_epoch
  progress = writers.Progress(total_steps=total_steps, start_step=start_step,
                              steps_per_epoch=batches.steps_per_epoch,
                              examples_per_step=config.train.batch_size)
  loop_start = time.perf_counter()
  last_save, save_requested = time.monotonic(), False
  unread: list[tuple[int, dict[str, jax.Array]]] = []  # (step, device metrics) not yet read
  step = start_step
  # A pruned run killed before its results.json was written trains no further on resume.
  end_step = total_steps if run_state.pruned_at is None else start_step
  prefetched = input_pipeline.prefetch(
      batches(start_step, end_step, dp.process_rows(micro_batch)), dp.put_train_batch)
  try:
    for batch in prefetched:
      save_due = (dp.process_index == 0 and config.checkpoint.every_seconds > 0
                  and not save_requested
                  and time.monotonic() - last_save >= config.checkpoint.every_seconds)
      save_requested = save_requested or save_due
      flags = dp.put_signals(np.array([stop.requested is not None, save_due]))
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        device_state, step_metrics = train_step(device_state, batch, flags)
      step += 1
      if dp.sync_each_step:
        jax.block_until_ready(step_metrics)
      unread.append((step, step_metrics))
      log_now = itstime(step, config.log.every_steps, total_steps)
      evaluated = itstime(step, eval_every, total_steps)
      # Before any action, every step up to this one is read (and checked finite).
      act_now = log_now or evaluated or itstime(step, config.checkpoint.every_steps, total_steps)
      reading, unread = (unread, []) if act_now else (unread[:-1], unread[-1:])
      stop_signal, save_signal = read_step_metrics(run, run_state, reading)
      stop_agreed, save_agreed = stop_signal > 0, save_signal > 0
      if log_now and run_state.since_log["steps"]:  # skipped steps alone: no row (loss 0)
        train_metrics = run_state.take_log()
        train_metrics.update(progress.report(step, train_metrics))
        run.writer.write(step, "train", train_metrics)
      paused = time.perf_counter()
      if evaluated:
        _test_pause("eval", step, stop)
        run_state.last_results, model_params = evaluate(run, device_state, step)
        track_best(run, run_state, step, run_state.last_results, model_params)
        del model_params
        consult_on_evaluation(run, run_state, step)
        _test_pause("best", step, stop)
        # A signal that came during the evaluation stops the run here, after it.
        stop_agreed = stop_agreed or dp.any_process(stop.requested is not None)
      if (evaluated or save_agreed or stop_agreed
          or itstime(step, config.checkpoint.every_steps, total_steps)):
        read_step_metrics(run, run_state, unread)  # this step's belong to the checkpoint
        unread = []
        run_state.train_seconds = train_seconds_before + time.perf_counter() - loop_start
        save_checkpoint(run, run_state, device_state, step)
        last_save, save_requested = time.monotonic(), False
      progress.pause(time.perf_counter() - paused)
      _test_pause("step", step, stop)
      if run_state.stopped_early or run_state.pruned_at is not None:
        break
      if stop_agreed and step < total_steps:
        raise Interrupted(f"stopped by {stop.requested or 'a signal to another process'} at "
                          f"step {step} of {total_steps}, with a checkpoint: rerun the same "
                          "command to resume")
    if not run_state.last_results:  # resumed from a checkpoint saved before this code kept them
      run_state.last_results, _ = evaluate(run, device_state, step)
    outcome = ("finished" if run_state.pruned_at is None
               else f"pruned at step {run_state.pruned_at}")
  except Interrupted:
    outcome = "stopped by a signal"
    raise
  except BaseException as e:
    outcome = f"failed: {type(e).__name__}"
    raise
  finally:
    prefetched.close()
    ckpts.close()
    throughput = run.throughput
    throughput.train_seconds = progress.training_seconds()
    throughput.train_examples = (step - start_step) * config.train.batch_size
    throughput.train_tokens = batches.tokens(start_step, step)
    run_summary = record.finish(step, throughput, outcome)
    run.writer.record(run_summary)
    run.writer.close()
  train_seconds = train_seconds_before + time.perf_counter() - loop_start
  summary = {"final": {"step": step, "results": run_state.last_results}, "best": run_state.best,
             "early_stopping": ({"stopped_at": step, "restored": run_state.best["step"]}
                                if run_state.stopped_early else None),
             "pruned": None if run_state.pruned_at is None else {"step": run_state.pruned_at},
             "params": {"total": total, "trainable": trainable},
             "train": {"steps": step, "epochs": step / batches.steps_per_epoch,
                       "examples": step * config.train.batch_size,
                       "train_seconds": train_seconds,
                       "wall_seconds_this_session": time.time() - run_start},
             "throughput": run_summary["throughput"],
             "processes": dp.process_count, "devices": dp.num_devices,
             "skipped_steps": run_state.skipped_steps,
             # XLA compilations in this session: one per length bucket used is the target.
             "compiles": {"train_step": train_step.compiles, "eval_step": eval_step.compiles}}
  _test_pause("results", step, stop)
  writers.write_json(workdir / "results.json", summary)
  logging.info("done: %s", json.dumps(summary["final"]))
  return summary
