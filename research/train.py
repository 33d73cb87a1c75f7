"""Fine-tuning a BERT encoder from one config: `train_and_evaluate(config, workdir)`.

Read `_train` top to bottom: `prepare` (data, model, optimizer, compiled steps, the checkpoint
to resume from), `train_loop` (a step, then `after_step`'s periodic actions: log, evaluate,
keep the best, checkpoint), `end_session` and `finish`. They work with the `Run` (fixed once
training starts) and the `Loop` (what changes: the device state, the `RunState` a checkpoint
keeps, the loop's position). The model itself is built by `models/builder.py`. The same
command runs as one process or as one of several (`distributed.py`): every process runs this
loop in lockstep on its block of each batch, and process 0 alone writes files (`writers.py`).

Stopping: SIGTERM (a cluster's preemption) or SIGINT (Ctrl-C) lets the current step finish;
every process then stops at the same step boundary, saves a checkpoint there and raises
`Interrupted` (`research.main` exits with `EXIT_INTERRUPTED`); rerunning the same command
resumes. A signal during an evaluation stops the run after it. `checkpoint.every_seconds`
bounds the work a kill -9 loses. `inference.py` evaluates, predicts and exports the best
checkpoint of a workdir.
"""

from __future__ import annotations

import contextlib
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
import ml_collections
import numpy as np

from research import (checkpoints, config_lib, distill, evaluation, metrics, optim, peft,
                      run_record, steps, tasks, writers)
from research.data import sources, splits
from research.data.batches import TrainBatches, prefetch
from research.data.encoded import EncodedSplit
from research.data.streaming import StreamedTrainBatches
from research.errors import Interrupted, RunError
from research.models import builder
from research.parallel import CountingStep, DataParallel, compiled_programs_released

PAUSE_ENV = "RESEARCH_TEST_PAUSE"  # tests: '<point>:<step>:<file>' pauses there (see _test_pause)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, dropout key) of a run with this seed: tests rebuild a run's initial params."""
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, dropout_rng


def train_batches(config: ml_collections.ConfigDict,
                  split: EncodedSplit) -> TrainBatches:
  """The training batches of a run: their order is a function of `config.seed` alone."""
  return TrainBatches(
      split, batch_size=config.train.batch_size, accum_steps=config.train.grad_accum_steps,
      seed=config.seed, buckets=tuple(config.data.length_buckets),
      group_by_length=config.data.group_by_length, order=config.data.batch_order)


def streamed_train_batches(config: ml_collections.ConfigDict, tokenizer, source: str
                           ) -> StreamedTrainBatches:
  """The training batches of a streamed masked-LM corpus (`data.streaming`), each chunk of
  texts encoded by the task's kind (`TaskKind.encode_chunk`)."""
  data = config.data
  kind = tasks.kind_of(config.task)

  def encode(chunk, where: str) -> EncodedSplit:
    return kind.encode_chunk(chunk, tokenizer, config.task, data.max_length, where)

  return StreamedTrainBatches(
      sources.load_stream(source, data.subset, data.train_split), encode,
      batch_size=config.train.batch_size,
      accum_steps=config.train.grad_accum_steps, seed=config.seed,
      buckets=tuple(data.length_buckets), total_steps=config.train.num_steps,
      shuffle_buffer=data.shuffle_buffer, limit=data.train_examples,
      where=f"{source} [{data.train_split}, streamed]")


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
  train_step: steps.TrainStep          # of two CountingSteps (parallel.compile_train_step)
  eval_step: CountingStep
  materialize: Any                     # (trainable, frozen) params -> the plain model's params
  eval_splits: dict[str, EncodedSplit]
  ckpts: checkpoints.Checkpoints
  writer: writers.MetricWriter
  total_steps: int
  throughput: run_record.Throughput  # this session's counts, for run.json
  batches: Any  # the training batches: what a checkpoint keeps of them (`resume_record`)
  record: run_record.RunRecord       # run.json
  start_step: int                    # where this session starts (a resume: its checkpoint's)
  run_start: float                   # this session's start (time.time())
  param_counts: dict[str, int]       # total and trainable
  # (step, selection metric) -> whether to stop: a tuner's pruner (`research.tune`)
  on_evaluation: Callable[[int, float], bool] | None = None

  @property
  def eval_every(self) -> int:
    return self.config.eval.every_steps or self.batches.steps_per_epoch


@dataclasses.dataclass
class Loop:
  """The mutable state of this session's loop: the train state on the devices, the run state
  a checkpoint keeps, where the loop is, and what it has yet to read or save."""

  device_state: steps.TrainState
  run_state: RunState
  step: int
  progress: writers.Progress
  loop_start: float                  # time.perf_counter() as the loop started
  train_seconds_before: float        # the training time of the sessions before this one
  last_save: float                   # time.monotonic() of the last checkpoint
  save_requested: bool = False       # checkpoint.every_seconds is due, not yet agreed on
  stop_agreed: bool = False          # every process has seen a stop signal
  # (step, device metrics) not yet read: the host reads a step's metrics one step late.
  unread: list[tuple[int, dict[str, jax.Array]]] = dataclasses.field(default_factory=list)
  run_summary: dict[str, Any] | None = None  # run.json's record of this session, at its end
  wall: run_record.WallTime = dataclasses.field(default_factory=run_record.WallTime)

  @classmethod
  def start(cls, run: Run, device_state: steps.TrainState, run_state: RunState) -> "Loop":
    progress = writers.Progress(total_steps=run.total_steps, start_step=run.start_step,
                                steps_per_epoch=run.batches.steps_per_epoch,
                                examples_per_step=run.config.train.batch_size)
    return cls(device_state=device_state, run_state=run_state, step=run.start_step,
               progress=progress, loop_start=time.perf_counter(),
               train_seconds_before=run_state.train_seconds, last_save=time.monotonic(),
               wall=run_record.WallTime(prepare=time.time() - run.run_start))

  def train_seconds(self) -> float:
    """The run's training time over all sessions, up to now."""
    return self.train_seconds_before + time.perf_counter() - self.loop_start

  @contextlib.contextmanager
  def timed(self, part: str):
    """Adds the block's wall time to `wall.<part>`."""
    start = time.perf_counter()
    try:
      yield
    finally:
      setattr(self.wall, part, getattr(self.wall, part) + time.perf_counter() - start)


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
  config = builder.with_checkpoint_architecture(config)
  with (compiled_programs_released(), writers.workdir_lock(workdir),
        writers.RunLog.attached(workdir / "train.log") as log, StopSignals() as stop):
    check_workdir(config, workdir)
    return _train(config, workdir, log, stop, on_evaluation)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, log: writers.RunLog,
           stop: StopSignals, on_evaluation: Callable[[int, float], bool] | None
           ) -> dict[str, Any]:
  prepared = prepare(config, workdir, log, on_evaluation)
  if isinstance(prepared, dict):  # the workdir holds a finished run: its results
    return prepared
  run, loop = prepared
  try:
    outcome = train_loop(run, loop, stop)
  except Interrupted:
    outcome = "stopped by a signal"
    raise
  except BaseException as e:
    outcome = f"failed: {type(e).__name__}"
    raise
  finally:
    end_session(run, loop, outcome)
  return finish(run, loop, stop)


# ---- Prepare: data, model, optimizer, steps, checkpoint -----------------------------------------


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path, log: writers.RunLog,
            on_evaluation: Callable[[int, float], bool] | None
            ) -> tuple[Run, Loop] | dict[str, Any]:
  """What the loop works with, and the loop's state at its start (the train state resumed from
  the workdir's checkpoint if it holds one); or the results of a finished run there. Writes
  nothing until all of it is valid: then the workdir belongs to this run (config.json,
  data.json, the run log)."""
  run_start = time.time()
  source = sources.locate(config.data)  # before the model: a data mistake fails fast
  logging.info("data: %s; a registered task looks at data.dataset, $%s, the hub, then the "
               "repository's data/ slice", source.describe(), sources.DATA_DIR_ENV)

  # A token task without task.label_names takes the tags of its training split; config.json
  # keeps them for the resume, eval, predict and export.
  kind = tasks.kind_of(config.task)
  names = kind.label_names_from_data(config.data, config.task)
  if names is not None:
    config.task.label_names = names
    logging.info("task.label_names from the training split: %s", list(config.task.label_names))
  setup = builder.build_model(config)
  init_rng, dropout_rng = seed_keys(config.seed)
  batches, eval_splits, data_record = load_data(config, setup.tokenizer, source.location)
  total_steps = (config.train.num_steps
                 or max(1, round(config.train.num_epochs * batches.steps_per_epoch)))
  if (workdir / "data.json").exists():
    changes = splits.data_changes(writers.read_json(workdir / "data.json"),
                                  data_record)
    if changes:
      raise RunError(f"{workdir} holds a run trained on other data; use another --workdir "
                     "(nothing was changed). Differences:\n  " + "\n  ".join(changes))
  state, tx, schedule, counts = initial_state(config, setup, init_rng, dropout_rng, total_steps,
                                              batches.steps_per_epoch)
  dp, train_step, eval_step = compile_steps(config, setup.model, tx, schedule)

  ckpts, state, run_state = restore(config, workdir, state, batches, total_steps)
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
  run = Run(config=config, workdir=workdir, dp=dp, train_step=train_step, eval_step=eval_step,
             batches=batches,
             materialize=dp.compile_replicated(steps.make_materialize(
                 peft.lora_scale(config.peft))),
             eval_splits=eval_splits, ckpts=ckpts, writer=writer, total_steps=total_steps,
             throughput=run_record.Throughput(), on_evaluation=on_evaluation,
             record=run_record.RunRecord(workdir, dp=dp, data_source=source, data=data_record,
                                         start_step=start_step, compute=setup.compute),
             start_step=start_step, run_start=run_start, param_counts=counts)
  # The device copy is the train state from here on.
  return run, Loop.start(run, dp.put_replicated(state), run_state)


def restore(config: ml_collections.ConfigDict, workdir: pathlib.Path, state: steps.TrainState,
            batches: Any, total_steps: int
            ) -> tuple[checkpoints.Checkpoints, steps.TrainState, RunState]:
  """The workdir's checkpoints, and the train and run state of its latest checkpoint (`state`
  and a new run state when it has none)."""
  ckpts = checkpoints.Checkpoints(workdir, keep=config.checkpoint.keep,
                                  best_metric=config.eval.best_metric,
                                  best_mode=config_lib.best_mode(config))
  if ckpts.latest_step() is None:
    return ckpts, state, RunState()
  state, meta = ckpts.restore_state(state)
  logging.info("resumed from %s at step %d", workdir / "checkpoints", int(state.step))
  if int(state.step) < total_steps:  # a stream re-reads (and checks) the rows it trained on
    batches.check_resume(int(state.step), meta)
  return ckpts, state, RunState.from_meta(meta)


def load_data(config: ml_collections.ConfigDict, tokenizer, source: str
              ) -> tuple[Any, dict[str, EncodedSplit], dict[str, Any]]:
  """(the training batches, the encoded eval splits, the record of both for data.json)."""
  data, kind = config.data, tasks.kind_of(config.task)
  if data.streaming:  # a masked-LM corpus read as it is consumed
    batches = streamed_train_batches(config, tokenizer, source)
    train_record = {data.train_split: batches.record(source, data.train_split)}
  else:
    train_split = splits.load_encoded(data, config.task, kind, tokenizer, data.train_split,
                                      data.train_examples)
    if config.distill.teacher:  # its outputs ride along with each row (`distill`)
      train_split = dataclasses.replace(
          train_split, teacher_logits=distill.teacher_outputs(config, train_split, tokenizer))
    batches = train_batches(config, train_split)
    train_record = splits.data_record(data, {data.train_split: train_split})
  eval_splits = {name: splits.load_encoded(data, config.task, kind, tokenizer, name,
                                           data.eval_examples)
                 for name in data.eval_splits}
  return batches, eval_splits, {**train_record, **splits.data_record(data, eval_splits)}


def initial_state(config: ml_collections.ConfigDict, setup: builder.ModelSetup,
                  init_rng: jax.Array, dropout_rng: jax.Array, total_steps: int,
                  steps_per_epoch: int) -> tuple[steps.TrainState, Any, Any, dict[str, int]]:
  """(the train state at step 0 on the host, the optimizer, its schedule, the parameter
  counts). Trainable and frozen parameters live apart (peft.py); full fine-tuning freezes
  nothing."""
  params, frozen = peft.split(config.peft, builder.init_params(setup, init_rng),
                              jax.random.fold_in(init_rng, 1))
  tx, schedule = optim.make_optimizer(config.optimizer, params, total_steps,
                                      setup.bert_config.num_hidden_layers)
  state = steps.TrainState(step=np.int32(0), params=params, frozen=frozen,
                           opt_state=tx.init(params), rng=np.asarray(dropout_rng))
  state = jax.tree.map(np.asarray, state)
  trainable, total = peft.count(params), peft.count(params) + peft.count(frozen)
  logging.info("model: %s parameters, %s trainable (%.2f%%, peft.method=%s); %d steps (%d per "
               "epoch) of %d examples", f"{total:,}", f"{trainable:,}", 100 * trainable / total,
               config.peft.method, total_steps, steps_per_epoch, config.train.batch_size)
  return state, tx, schedule, {"total": total, "trainable": trainable}


def compile_steps(config: ml_collections.ConfigDict, model: Any, tx: Any, schedule: Any
                  ) -> tuple[DataParallel, steps.TrainStep, CountingStep]:
  """The devices, and the train and eval steps compiled over them (`steps.py`)."""
  dp = DataParallel(config.parallel.backend, config.parallel.num_devices)
  micro_batch = config.train.batch_size // config.train.grad_accum_steps
  if micro_batch % dp.num_devices or config.eval.batch_size % dp.num_devices:
    raise config_lib.ConfigError(
        f"config.train.batch_size / grad_accum_steps ({micro_batch}) and config.eval.batch_size "
        f"({config.eval.batch_size}) must be multiples of the {dp.num_devices} devices")
  kind = tasks.kind_of(config.task)
  train_step = dp.compile_train_step(
      steps.make_train_step(
          model, tx, schedule, kind, peft.lora_scale(config.peft),
          skip_nonfinite=config.train.skip_nonfinite_steps,
          distill=((config.distill.temperature, config.distill.alpha)
                   if config.distill.teacher else None)))
  eval_step = dp.compile_eval_step(steps.make_eval_step(model, kind))
  logging.info("%s over %d %s device(s) in %d process(es)", dp.backend, dp.num_devices,
               jax.default_backend(), dp.process_count)
  return dp, train_step, eval_step


# ---- The loop --------------------------------------------------------------------------------


def train_loop(run: Run, loop: Loop, stop: StopSignals) -> str:
  """Trains from `loop.step` to the run's last step (or until early stopping, pruning or a
  signal), with the periodic actions after each step; returns the outcome for run.json.

  Each step also sums every process's flags (stop requested, save requested) over all
  devices. The host reads a step's metrics one step late, while the next step runs, so the
  loop never waits on the device; every process reads the same flags for the same step and
  acts at the same step boundary."""
  config, dp, state = run.config, run.dp, loop.run_state
  # A pruned run killed before its results.json was written trains no further on resume.
  end_step = run.total_steps if state.pruned_at is None else run.start_step
  micro_batch = config.train.batch_size // config.train.grad_accum_steps
  prefetched = prefetch(
      run.batches(run.start_step, end_step, dp.process_rows(micro_batch)), dp.put_train_batch)
  try:
    while True:
      with loop.timed("input"):
        batch = next(prefetched, None)
      if batch is None:
        break
      save_due = (dp.process_index == 0 and config.checkpoint.every_seconds > 0
                  and not loop.save_requested
                  and time.monotonic() - loop.last_save >= config.checkpoint.every_seconds)
      loop.save_requested = loop.save_requested or save_due
      flags = dp.put_signals(np.array([stop.requested is not None, save_due]))
      with jax.profiler.StepTraceAnnotation("train", step_num=loop.step):
        loop.device_state, step_metrics = run.train_step(loop.device_state, batch, flags)
      loop.step += 1
      if dp.sync_each_step:
        jax.block_until_ready(step_metrics)
      loop.unread.append((loop.step, step_metrics))
      after_step(run, loop, stop)
      if state.stopped_early or state.pruned_at is not None:
        break
      if loop.stop_agreed and loop.step < run.total_steps:
        raise Interrupted(f"stopped by {stop.requested or 'a signal to another process'} at "
                          f"step {loop.step} of {run.total_steps}, with a checkpoint: rerun "
                          "the same command to resume")
    if not state.last_results:  # resumed from a checkpoint saved before this code kept them
      with loop.timed("evaluation"):
        state.last_results, _ = evaluate(run, loop.device_state, loop.step)
  finally:
    prefetched.close()
  return "finished" if state.pruned_at is None else f"pruned at step {state.pruned_at}"


def after_step(run: Run, loop: Loop, stop: StopSignals) -> None:
  """The periodic actions after a step: read its metrics (one step late unless an action is
  due), log, evaluate and keep the best, checkpoint. Sets `loop.stop_agreed`."""
  config, dp, state, step = run.config, run.dp, loop.run_state, loop.step
  log_now = itstime(step, config.log.every_steps, run.total_steps)
  evaluated = itstime(step, run.eval_every, run.total_steps)
  # Before any action, every step up to this one is read (and checked finite).
  act_now = (log_now or evaluated
             or itstime(step, config.checkpoint.every_steps, run.total_steps))
  reading, loop.unread = (loop.unread, []) if act_now else (loop.unread[:-1], loop.unread[-1:])
  stop_signal, save_signal = read_step_metrics(run, state, reading)
  loop.stop_agreed, save_agreed = stop_signal > 0, save_signal > 0
  if log_now and state.since_log["steps"]:  # skipped steps alone: no row (loss 0)
    train_metrics = state.take_log()
    train_metrics.update(loop.progress.report(step, train_metrics))
    run.writer.write(step, "train", train_metrics)
  paused = time.perf_counter()
  if evaluated:
    _test_pause("eval", step, stop)
    with loop.timed("evaluation"):
      state.last_results, model_params = evaluate(run, loop.device_state, step)
      track_best(run, state, step, state.last_results, model_params)
      del model_params
      consult_on_evaluation(run, state, step)
    _test_pause("best", step, stop)
    # A signal that came during the evaluation stops the run here, after it.
    loop.stop_agreed = loop.stop_agreed or dp.any_process(stop.requested is not None)
  if (evaluated or save_agreed or loop.stop_agreed
      or itstime(step, config.checkpoint.every_steps, run.total_steps)):
    read_step_metrics(run, state, loop.unread)  # this step's belong to the checkpoint
    loop.unread = []
    state.train_seconds = loop.train_seconds()
    with loop.timed("checkpointing"):
      save_checkpoint(run, state, loop.device_state, step)
    loop.last_save, loop.save_requested = time.monotonic(), False
  loop.progress.pause(time.perf_counter() - paused)
  _test_pause("step", step, stop)


# ---- Finish ----------------------------------------------------------------------------------


def end_session(run: Run, loop: Loop, outcome: str) -> None:
  """However the loop ended: the checkpoints closed, this session's throughput and outcome in
  run.json and the metric writer closed."""
  wall, looped = loop.wall, time.perf_counter() - loop.loop_start
  wall.compile = sum(step.compile_seconds for step in (run.train_step.gradients,
                                                       run.train_step.update, run.eval_step))
  wall.evaluation -= run.eval_step.compile_seconds
  wall.train_steps = max(0.0, looped - wall.input - wall.evaluation - wall.checkpointing
                         - wall.compile)
  with loop.timed("checkpointing"):  # waits for the last save to be written
    run.ckpts.close()
  throughput = run.throughput
  throughput.train_seconds = loop.progress.training_seconds()
  throughput.train_examples = (loop.step - run.start_step) * run.config.train.batch_size
  throughput.train_tokens = run.batches.tokens(run.start_step, loop.step)
  wall.other = max(0.0, time.time() - run.run_start - sum(dataclasses.asdict(wall).values()))
  logging.info("wall time: %s", wall.describe())
  loop.run_summary = run.record.finish(loop.step, throughput, outcome, wall)
  run.writer.record(loop.run_summary)
  run.writer.close()


def finish(run: Run, loop: Loop, stop: StopSignals) -> dict[str, Any]:
  """results.json of a run that trained to its end (or stopped early, or was pruned)."""
  config, state, step = run.config, loop.run_state, loop.step
  batches = run.batches
  summary = {"final": {"step": step, "results": state.last_results}, "best": state.best,
             "early_stopping": ({"stopped_at": step, "restored": state.best["step"]}
                                if state.stopped_early else None),
             "pruned": None if state.pruned_at is None else {"step": state.pruned_at},
             "params": run.param_counts,
             "train": {"steps": step, "epochs": step / batches.steps_per_epoch,
                       "examples": step * config.train.batch_size,
                       "train_seconds": loop.train_seconds(),
                       "wall_seconds_this_session": time.time() - run.run_start},
             "throughput": loop.run_summary["throughput"],
             "processes": run.dp.process_count, "devices": run.dp.num_devices,
             "skipped_steps": state.skipped_steps,
             # XLA compilations in this session: one per length bucket used is the target
             # (the optimizer update: one in all).
             "compiles": {"train_step": run.train_step.gradients.compiles,
                          "update_step": run.train_step.update.compiles,
                          "eval_step": run.eval_step.compiles}}
  _test_pause("results", step, stop)
  writers.write_json(run.workdir / "results.json", summary)
  logging.info("done: %s", json.dumps(summary["final"]))
  return summary
