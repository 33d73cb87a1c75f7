r"""Hyper-parameter search on Optuna: a study whose trials are ordinary runs in the study folder.

  python -m research.tune --config configs/glue.py:rte --study runs/rte_tpe --trials 30 \
      --sampler tpe --pruner asha
  python -m research.tune ... --workers 2               # two trials at a time on this machine
  python -m research.tune ... --storage journal         # many workers on a shared filesystem
  python -m research.tune ... --storage postgresql+psycopg2://user@host/db    # many hosts
  python -m research.tune --config configs/glue.py:rte --study runs/rte_tpe --rerun-best 5

The space is the config file's `get_space(space)` (`search_space.py`). Optuna keeps the study
(by default `<study>/study.db`, SQLite); the trial numbered 7 trains in `<study>/trials/0007`,
a normal workdir, as a child process (`--run-trial`): memory is freed between trials, and a
trial that fails, diverges or is killed (out of memory) is recorded as failed with its one-line
reason while the study goes on. The child tells the trial its selection metric
(`eval.best_metric` of the first eval split) at every periodic evaluation, and stops when the
pruner says so (its run.json and results.json say pruned, at which step).

`--trials N` is the study's total: every worker, on this machine (`--workers`) or elsewhere on
the same storage (`experiments/launch/tune_array.sbatch`), takes the next trial until the study
holds N. A worker claims a trial with a lock file in `<study>/claims/` (so the study folder must
be on a filesystem all workers share): a trial left running by a killed tuner has no live claim,
and the next worker resumes it from its own checkpoint. Rerun the same command after kill -9,
SIGTERM or Ctrl-C (the trials save a checkpoint; exit 75): finished trials are kept and none
runs twice. The sampler and pruner are rebuilt from the command each time (Optuna does not store
them), so a rerun with another sampler, pruner, seed, space or config (the file's fields, not
only its name) is refused. A study folder holds one study: a new study in a folder that holds
anything (another study's trials, a run's workdir) is refused.

`--rerun-best N` trains the best trial's config with N new seeds in `<study>/best/seed=<s>/`
and reports mean ± std with a t-interval on every split the config evaluates
(`research.report`). `--keep-checkpoints none` deletes each trial's and rerun's weights once it
has ended (its records stay): a long search of a large model otherwise fills the disk.

`--processes N` makes each trial one run of N processes on this machine (`jax.distributed`):
the worker asks Optuna once and gives every process the trial's parameters, process 0 alone
reports, and the pruner's answer is broadcast so that all stop at one step. `--launcher CMD`
starts each trial's processes with CMD instead, wherever it puts them: in a SLURM job of
several nodes, `--launcher 'srun --nodes=2 --ntasks=2 --kill-on-bad-exit=1'` makes every trial
one job step across two hosts (experiments/launch/tune_multinode.sbatch); each process learns
its place from the launcher's variables, as `research.main` does. A trial is otherwise one
process, on all of its machine's devices.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import importlib
import json
import logging
import math
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from research import config_lib, search_space, sweep
from research.errors import EXIT_INTERRUPTED
from research.search_space import SpaceError

TRIAL_PORTS = (41000, 49000)  # coordinator ports of launched trials, by trial number
LOCK_WAIT_SECONDS = 300  # the longest a worker waits for another to finish asking for a trial
RUN_LOCK_WAIT_SECONDS = 60  # ... for a killed tuner's trial to release its workdir
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_STORED = ("config", "sampler", "pruner", "seed", "space", "budget", "metric")
_PROPOSING = ("sampler", "pruner", "seed")


class TuneError(ValueError):
  """A study that cannot run (no get_space, a storage that does not open, a rerun that differs
  from the stored study); the message names it. `main` prints it in one line and exits 2."""


# ---- Samplers and pruners, by name ----------------------------------------------------------


def parse_named(text: str, table: dict[str, Callable], what: str) -> tuple[Callable, dict]:
  """'tpe' or 'tpe:n_startup_trials=5,multivariate=True' -> (factory, keyword arguments)."""
  name, _, rest = text.partition(":")
  if name not in table:
    raise TuneError(f"--{what} {name!r} is not one of {', '.join(table)}")
  kwargs = {}
  for item in filter(None, rest.split(",")):
    key, equals, value = item.partition("=")
    if not equals:
      raise TuneError(f"--{what} {text!r}: {item!r} is not key=value")
    if key.strip() == "seed":
      raise TuneError(f"--{what} {text!r}: the sampler's seed is --seed")
    try:
      kwargs[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      kwargs[key.strip()] = value.strip()
  return table[name], kwargs


class _GridSampler(optuna.samplers.GridSampler):
  """Optuna's grid without its `study.stop()` once every point was asked, which only
  `study.optimize` allows: here the study's trial count stops the workers."""

  def after_trial(self, study, trial, state, values) -> None:
    pass


def grid_size(space: dict[str, search_space.Dimension]) -> int:
  return math.prod(len(d.values) for d in space.values() if d.sampling == "choice")


def trial_seed(seed: int, number: int) -> int:
  """The sampler's seed when it proposes trial `number`: a sampler is rebuilt for every trial,
  so that a second worker, or the rerun of a killed tuner, does not repeat the first one's
  draws, and one command still proposes the same trials each time it makes the study."""
  return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _grid(space: dict[str, search_space.Dimension], seed: int, number: int, **kwargs):
  searched = {name: d for name, d in space.items() if d.sampling != "fixed"}
  ranged = [name for name, d in searched.items() if d.sampling != "choice"]
  if ranged:
    raise TuneError(f"--sampler grid searches choices only; {ranged[0]} is "
                    f"{space[ranged[0]].sampling} (use space.choice, or another sampler)")
  # The seed shuffles the grid: one order per study (a trial takes a point no other has).
  return _GridSampler({name: list(d.values) for name, d in searched.items()}, seed=seed,
                      **kwargs)


def _cmaes(space, seed, number, **kwargs):
  try:
    import cmaes  # noqa: F401  (Optuna's CmaEsSampler needs it)
  except ImportError:
    raise ImportError("Optuna's CmaEsSampler needs the cmaes package (pip install cmaes)"
                      ) from None
  return optuna.samplers.CmaEsSampler(seed=trial_seed(seed, number), **kwargs)


SAMPLERS: dict[str, Callable] = {
    "grid": _grid,
    # Sobol points (scrambled): the tuning playbook's quasi-random search. One scrambling per
    # study; the point's index is the study's count, kept by Optuna in the storage. Optuna
    # samples the first trial at random, to learn the space.
    "quasi-random": lambda space, seed, number, **kw: optuna.samplers.QMCSampler(
        **{"qmc_type": "sobol", "scramble": True, "seed": seed, **kw}),
    "random": lambda space, seed, number, **kw: optuna.samplers.RandomSampler(
        seed=trial_seed(seed, number), **kw),
    "tpe": lambda space, seed, number, **kw: optuna.samplers.TPESampler(
        seed=trial_seed(seed, number), **kw),
    "gp": lambda space, seed, number, **kw: optuna.samplers.GPSampler(
        seed=trial_seed(seed, number), **kw),
    "cmaes": _cmaes,
}

# Resources are training steps: a trial reports at every `eval.every_steps` step.
PRUNERS: dict[str, Callable] = {
    "none": lambda every, budget, **kw: optuna.pruners.NopPruner(**kw),
    "median": lambda every, budget, **kw: optuna.pruners.MedianPruner(**kw),
    "asha": lambda every, budget, **kw: optuna.pruners.SuccessiveHalvingPruner(
        **{"min_resource": every or "auto", **kw}),
    "hyperband": lambda every, budget, **kw: optuna.pruners.HyperbandPruner(
        **{"min_resource": every or 1, "max_resource": budget or "auto", **kw}),
    "threshold": lambda every, budget, **kw: optuna.pruners.ThresholdPruner(**kw),
}


def _build(text: str, table: dict[str, Callable], what: str, *args):
  factory, kwargs = parse_named(text, table, what)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      return factory(*args, **kwargs)
  except TuneError:
    raise
  except (TypeError, ValueError, ImportError) as e:
    raise TuneError(f"--{what} {text!r}: {e}") from e


def make_sampler(text: str, space: dict[str, search_space.Dimension], seed: int,
                 number: int = 0):
  """The sampler named by `text`, as it proposes the trial numbered `number`."""
  return _build(text, SAMPLERS, "sampler", space, seed, number)


def ask(study: optuna.Study, sampler: str, space: dict[str, search_space.Dimension],
        seed: int) -> optuna.trial.Trial:
  """The study's next trial, its parameters proposed by the command's sampler."""
  study.sampler = make_sampler(sampler, space, seed, len(study.get_trials(deepcopy=False)))
  return study.ask({name: d.distribution() for name, d in space.items() if d.sampling != "fixed"})


def make_pruner(text: str, eval_every: int | None, budget: int | None):
  return _build(text, PRUNERS, "pruner", eval_every, budget)


# ---- Storage ---------------------------------------------------------------------------------


def storage_url(given: str | None, folder: pathlib.Path) -> str:
  """The storage as one string a trial process can reopen: `sqlite:///<study>/study.db` by
  default, `journal:<study>/journal.log` for --storage journal, else the SQLAlchemy URL."""
  if not given or given == "sqlite":
    return f"sqlite:///{(folder / 'study.db').absolute()}"
  if given == "journal":
    return f"journal:{(folder / 'journal.log').absolute()}"
  return given


def own_file(url: str, folder: pathlib.Path) -> str | None:
  """'study.db' or 'journal.log' when `url` is the folder's own storage, else None."""
  return next((file for given, file in (("sqlite", "study.db"), ("journal", "journal.log"))
               if storage_url(given, folder) == url), None)


def shown(url: str) -> str:
  """The URL without its password, for messages."""
  if url.startswith("journal:"):
    return url
  try:
    import sqlalchemy
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except Exception:  # not a URL at all: say it as given
    return url


def open_storage(url: str):
  if url.startswith("journal:"):
    from optuna.storages import journal
    path = url.removeprefix("journal:")
    # An open(O_EXCL) lock file works on NFS, where the default symlink lock may not.
    try:
      return journal.JournalStorage(journal.JournalFileBackend(
          path, lock_obj=journal.JournalFileOpenLock(path)))
    except OSError as e:
      raise TuneError(f"--storage {url} does not open: {e.strerror or e}") from e
  # SQLite: writers of several workers wait for one another instead of failing at once.
  engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite:") else None
  try:
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)
  except Exception as e:  # SQLAlchemy's errors: no such server, no such database, a bad URL
    first = " ".join(str(e).split("\n")[0].split())
    hint = (" (the requirements install psycopg2: postgresql+psycopg2://...)"
            if isinstance(e, ImportError) else "")
    raise TuneError(f"--storage {shown(url)} does not open: {type(e).__name__}: {first}{hint}"
                    ) from e


# ---- The study -------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: pathlib.Path, what: str, seconds: float = LOCK_WAIT_SECONDS):
  """Holds an exclusive lock on `path`, waiting at most `seconds` for another holder (and
  saying so after the first two)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  handle = path.open("a")
  start = time.monotonic()
  told = False
  while True:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
      break
    except BlockingIOError:
      if not told and time.monotonic() > start + 2:
        say(f"waiting for {what} (at most {seconds:.0f} s; {path} is locked)")
        told = True
      if time.monotonic() > start + seconds:
        handle.close()
        raise TuneError(f"waited {seconds:.0f} s for {path} ({what}); is a worker hung?")
      time.sleep(0.05)
  try:
    yield
  finally:
    handle.close()


def try_lock(path: pathlib.Path):
  """An open handle holding the lock on `path`, or None when another process holds it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  handle = path.open("a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    return None
  return handle


@dataclasses.dataclass
class Setup:
  """What the command and the config file declare, checked before any trial runs."""

  config_spec: str
  config_path: pathlib.Path
  folder: pathlib.Path
  space: dict[str, search_space.Dimension]
  metric: str
  direction: str
  budget: int | None      # steps per trial (None: the config trains for epochs, or the steps
                          # are searched)
  eval_every: int | None  # steps between the evaluations a trial reports (None: each epoch)
  base_seed: int
  base: dict[str, Any]    # the config's other fields ({path: value}, as JSON): what each trial
                          # shares, so that a rerun after the file changed is refused

  def fixed(self) -> dict[str, Any]:
    return {name: d.value for name, d in self.space.items() if d.sampling == "fixed"}


def load_setup(config_spec: str, folder: pathlib.Path) -> Setup:
  try:
    module, arg = sweep.load_config_file(config_spec)
    if not hasattr(module, "get_space"):
      raise TuneError(f"{config_spec} declares no search space (def get_space(space): ...; "
                      "see research/search_space.py)")
    config = module.get_config(arg)
    declared = module.get_space(search_space)
  except sweep.SweepError as e:
    raise TuneError(str(e)) from e
  except TuneError:
    raise
  except Exception as e:  # the config file's own mistake: where it is, in one line
    raise TuneError(f"--config {config_spec}: {type(e).__name__}: {e}") from e
  space = search_space.checked(declared, config, config_spec)
  for name, dimension in space.items():
    if dimension.sampling == "fixed":
      search_space.set_field(config, name, dimension.value)
  config_lib.validate(config)
  searched = [name for name, dimension in space.items() if dimension.sampling != "fixed"]
  return Setup(config_spec=config_spec,
               config_path=pathlib.Path(config_spec.partition(":")[0]).absolute(),
               folder=folder, space=space, metric=config.eval.best_metric,
               direction="minimize" if config_lib.best_mode(config) == "min" else "maximize",
               # A searched num_steps is no one budget (Hyperband's maximum is then Optuna's).
               budget=(config.train.num_steps or None) if "train.num_steps" not in searched
               else None,
               eval_every=_smallest(space.get("eval.every_steps"), config.eval.every_steps),
               base_seed=config.seed,
               base=json.loads(json.dumps(
                   {path: value for path, value in config_lib.flatten(config.to_dict()).items()
                    if path not in space or space[path].sampling == "fixed"}, default=str)))


def _smallest(dimension: search_space.Dimension | None, base: int) -> int | None:
  """The fewest steps between evaluations any trial may have (the pruners' minimum resource):
  the base config's, or the least a searched eval.every_steps takes."""
  if dimension is None or dimension.sampling == "fixed":
    value = base if dimension is None else dimension.value
  elif dimension.sampling == "choice":
    value = min(dimension.values)
  else:
    value = dimension.low
  return int(value) or None


def open_study(setup: Setup, args: argparse.Namespace, url: str, sampler, pruner
               ) -> optuna.Study:
  """Creates the study, or loads it and refuses a command that differs from the one that made
  it (the sampler and pruner are the command's: Optuna does not store them)."""
  name = args.study_name or setup.folder.absolute().name
  own = own_file(url, setup.folder)
  if own and not (setup.folder / own).exists():  # before the storage makes its file there
    refuse_used_folder(setup.folder, url, name, [])
  storage = open_storage(url)
  try:
    names = optuna.study.get_all_study_names(storage)
  except Exception as e:  # a damaged file, a server that went away
    raise TuneError(f"--storage {shown(url)} cannot be read: {type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]}") from e
  if name not in names:
    refuse_used_folder(setup.folder, url, name, names)
  stored = {"config": setup.config_spec, "sampler": args.sampler, "pruner": args.pruner,
            "seed": args.seed, "space": search_space.record(setup.space),
            "budget": setup.budget, "metric": setup.metric, "base": setup.base}
  try:
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                pruner=pruner, direction=setup.direction, load_if_exists=True)
  except ValueError as e:  # a study of that name with another direction
    raise TuneError(f"study {name!r} in {shown(url)}: {e}") from e
  if not study.user_attrs:  # a new study
    for key, value in {**stored, "config_path": str(setup.config_path),
                       "direction": setup.direction}.items():
      study.set_user_attr(key, value)
    return study
  saved = study.user_attrs
  if "base" in saved and saved["base"] != setup.base:
    changed = sorted(k for k in {*saved["base"], *setup.base}
                     if saved["base"].get(k, "(none)") != setup.base.get(k, "(none)"))
    raise TuneError(
        f"study {name!r} in {shown(url)} was made from another {setup.config_spec}: "
        + ", ".join(f"{k} {json.dumps(saved['base'].get(k, '(none)'))} there, "
                    f"{json.dumps(setup.base.get(k, '(none)'))} now" for k in changed[:3])
        + (f" (and {len(changed) - 3} more)" if len(changed) > 3 else "")
        + ": put the file back as it was, or use another --study / --study-name")
  # The sampler, pruner and seed only propose and stop trials: a command that runs none (the
  # report, --rerun-best) need not repeat them.
  for key in _STORED if args.trials else [k for k in _STORED if k not in _PROPOSING]:
    if json.dumps(saved.get(key), sort_keys=True) != json.dumps(stored[key], sort_keys=True):
      what = {"config": "--config", "sampler": "--sampler", "pruner": "--pruner",
              "seed": "--seed"}.get(key, f"the {key}")
      raise TuneError(f"study {name!r} in {shown(url)} was made with {what} "
                      f"{json.dumps(saved.get(key))}; this command gives {json.dumps(stored[key])}"
                      ": rerun it as it was made, or use another --study / --study-name")
  # A shared database holds the studies of many folders, named after them by default: the
  # same name from another folder would resume that folder's running trials here.
  finished = [t for t in study.get_trials(deepcopy=False)
              if t.state.is_finished() and "workdir" in t.user_attrs]
  if finished and not any((setup.folder / t.user_attrs["workdir"]).is_dir() for t in finished):
    raise TuneError(f"study {name!r} in {shown(url)} has {len(finished)} finished trial(s), "
                    f"none of them in {setup.folder} (the study of another folder of that "
                    "name?): give another --study-name, or the folder the study trains in")
  return study


def refuse_used_folder(folder: pathlib.Path, url: str, name: str, studies: list[str]) -> None:
  """A new study needs a folder of its own: one that holds another study's trials (made with
  another --storage or --study-name: its trial 0 would take trials/0000), a run's workdir or
  any other file but hidden ones is refused, as is the folder's own study.db or journal.log
  holding another study. `studies`: those the storage holds now."""
  own = own_file(url, folder)
  held = sorted(p.name for p in folder.iterdir()  # not hidden ones: .ask.lock, .DS_Store
                if not p.name.startswith(".") and p.name != own)
  if held:
    raise TuneError(f"--study {folder} holds {', '.join(held[:3])}"
                    f"{', ...' if len(held) > 3 else ''} but no study {name!r} in "
                    f"{shown(url)}: a new study needs an empty or new folder (was the study "
                    "there made with another --storage or --study-name?)")
  if own and studies:
    raise TuneError(f"--study {folder}: {shown(url)} holds the study {studies[0]!r}, not "
                    f"{name!r}: one study per folder (rerun it with --study-name "
                    f"{studies[0]}, or use another --study)")


# ---- Running trials --------------------------------------------------------------------------


_print_lock = threading.Lock()


def say(line: str) -> None:
  with _print_lock:
    print(line, flush=True)


def _value(value: Any) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def short_params(params: dict[str, Any]) -> str:
  """'optimizer.learning_rate' -> 'learning_rate' unless two parameters end alike."""
  leaves = [name.rsplit(".", 1)[-1] for name in params]
  names = [leaf if leaves.count(leaf) == 1 else name for name, leaf in zip(params, leaves)]
  return " ".join(f"{name}={_value(value)}" for name, value in zip(names, params.values()))


def failure_reason(code: int, log: pathlib.Path, start: int = 0) -> str:
  """One line for a trial process that ended with `code`: its last `error: ...` line (in its
  log from byte `start` on: the log keeps the sessions before a resume), the signal that killed
  it, or its exit status."""
  if code < 0:
    name = signal.Signals(-code).name
    return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
  lines = []
  if log.exists():
    with log.open("rb") as file:
      file.seek(start)
      lines = file.read().decode(errors="replace").splitlines()
  errors = [line for line in lines if line.startswith("error: ")]
  if errors:
    return errors[-1].removeprefix("error: ")[:300]
  last = next((line.strip() for line in reversed(lines) if line.strip()), "")
  return f"exit status {code}" + (f": {last[:300]}" if last else "")


@dataclasses.dataclass
class Claim:
  number: int
  trial_id: int
  params: dict[str, Any]
  overrides: dict[str, Any]
  resumed: bool
  handle: Any  # holds the claim lock until the trial is told


class Tuner:
  """The workers of one command on one study: each claims a trial, runs it as a child process
  and tells Optuna how it ended."""

  def __init__(self, setup: Setup, study: optuna.Study, url: str, args: argparse.Namespace):
    self.setup, self.study, self.url, self.args = setup, study, url, args
    self.target = args.trials
    self.stopping = threading.Event()
    self.children: set[subprocess.Popen] = set()
    self.children_lock = threading.Lock()
    self.signal_name: str | None = None
    self.interrupted = False
    self.errors: list[str] = []

  # ---- claiming: under <study>/.ask.lock, one worker at a time

  def claim_next(self, worker: str) -> Claim | None:
    folder = self.setup.folder
    with file_lock(folder / ".ask.lock", "another worker asking Optuna for a trial"):
      if self.stopping.is_set():
        return None
      trials = self.study.get_trials(deepcopy=False)
      for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != TrialState.RUNNING:
          continue
        handle = try_lock(self.claim_path(trial.number))
        if handle is not None:  # left running by a tuner that is gone: resume it here
          # (killed between Optuna's ask and our attributes, it has none yet)
          attrs = {"workdir": self.workdir_name(trial.number),
                   "overrides": {**self.setup.fixed(), **trial.params}, "steps": 0,
                   **trial.user_attrs, "worker": worker}
          for key, value in attrs.items():
            self.study._storage.set_trial_user_attr(trial._trial_id, key, value)
          return Claim(trial.number, trial._trial_id, dict(trial.params), attrs["overrides"],
                       True, handle)
      if len(trials) >= self.target:
        return None
      trial = ask(self.study, self.args.sampler, self.setup.space, self.args.seed)
      handle = try_lock(self.claim_path(trial.number))
      overrides = {**self.setup.fixed(), **trial.params}
      for key, value in {"workdir": self.workdir_name(trial.number), "overrides": overrides,
                         "steps": 0, "worker": worker}.items():
        trial.set_user_attr(key, value)
      return Claim(trial.number, trial._trial_id, dict(trial.params), overrides, False, handle)

  def claim_path(self, number: int) -> pathlib.Path:
    return self.setup.folder / "claims" / f"{number:04d}.lock"

  @staticmethod
  def workdir_name(number: int) -> str:
    return f"trials/{number:04d}"

  # ---- one trial

  def work(self, worker: str) -> None:
    try:
      while not self.stopping.is_set():
        claim = self.claim_next(worker)
        if claim is None:
          return
        try:
          self.run_trial(claim)
        finally:
          claim.handle.close()
    except Exception as e:  # the storage failed under us: stop every worker, say why
      if os.environ.get("RESEARCH_DEBUG") == "1":
        traceback.print_exc()
      self.errors.append(f"{type(e).__name__}: {e}" if not isinstance(e, TuneError) else str(e))
      self.stop()

  def run_trial(self, claim: Claim) -> None:
    self.train_and_tell(claim)
    # As each trial ends: a researcher follows a long search in trials.md and the plots.
    if self.study._storage.get_trial(claim.trial_id).state.is_finished():
      if self.args.keep_checkpoints == "none":
        drop_checkpoints(self.setup.folder / self.workdir_name(claim.number))
      write_outputs(self.study, self.setup.folder, warn=False)

  def train_and_tell(self, claim: Claim) -> None:
    workdir = self.setup.folder / self.workdir_name(claim.number)
    what = "resuming" if claim.resumed else ""
    say(f"[trial {claim.number}, {claim.number + 1} of {max(self.target, claim.number + 1)}] "
        f"{short_params(claim.params) or '(no searched parameter)'}"
        + (f" ({what} {self.workdir_name(claim.number)})" if what else ""))
    start = time.perf_counter()
    code = 0
    log = workdir / "tune.log"
    log_start = log.stat().st_size if log.exists() else 0  # this session's lines follow
    # A run that finished just before its tuner was killed is not run again: only told.
    if not (claim.resumed and (workdir / "results.json").exists()):
      code = self.run_child(claim, workdir)
      if code is None:
        return  # stopping before it started: it stays running, to be resumed
    seconds = time.perf_counter() - start
    # After a signal it was passed, however it ended (a second Ctrl-C aborts it without a
    # checkpoint), the trial stays running: the rerun resumes it from its last checkpoint.
    if code == EXIT_INTERRUPTED or (code and self.signal_name):
      self.interrupted = True
      self.stop()
      say(f"[trial {claim.number}] stopped with a checkpoint after {seconds:.0f} s: rerun the "
          "same command to resume it")
      return
    storage = self.study._storage
    if code == 0:
      results = json.loads((workdir / "results.json").read_text())
      steps = results["train"]["steps"]
      storage.set_trial_user_attr(claim.trial_id, "steps", steps)
      if results.get("pruned"):
        storage.set_trial_user_attr(claim.trial_id, "outcome", "pruned")
        self.study.tell(claim.number, state=TrialState.PRUNED)
        told = storage.get_trial(claim.trial_id)
        value = told.intermediate_values.get(told.last_step)
        say(f"[trial {claim.number}] pruned at step {results['pruned']['step']} "
            f"({self.setup.metric} {_value(value)}) in {seconds:.0f} s")
        return
      value = selection_value(results, self.setup.metric)
      storage.set_trial_user_attr(claim.trial_id, "outcome", "completed")
      self.study.tell(claim.number, value)
      say(f"[trial {claim.number}] {self.setup.metric} {_value(value)} in {seconds:.0f} s")
      return
    reason = failure_reason(code, log, log_start)
    storage.set_trial_user_attr(claim.trial_id, "steps", trained_steps(workdir))
    storage.set_trial_user_attr(claim.trial_id, "outcome", f"failed: {reason}")
    self.study.tell(claim.number, state=TrialState.FAIL)
    say(f"[trial {claim.number}] failed: {reason} ({seconds:.0f} s; see "
        f"{self.workdir_name(claim.number)}/tune.log)")

  def run_child(self, claim: Claim, workdir: pathlib.Path) -> int | None:
    workdir.mkdir(parents=True, exist_ok=True)
    if claim.resumed:  # a killed tuner's trial may take a moment to die (PR_SET_PDEATHSIG)
      with file_lock(workdir / ".lock", "the killed tuner's trial to end",
                     RUN_LOCK_WAIT_SECONDS):
        pass
    spec = {"parent": os.getpid(), "storage": self.url, "study_name": self.study.study_name,
            "trial_id": claim.trial_id, "config": self.setup.config_spec,
            "workdir": str(workdir.absolute()), "overrides": claim.overrides,
            "pruner": self.args.pruner, "eval_every": self.setup.eval_every,
            "budget": self.setup.budget}
    processes, launcher, env = self.args.processes, self.args.launcher, None
    if launcher:  # one launch: the launcher starts the run's processes, wherever it puts them
      commands = [[*shlex.split(launcher), sys.executable, "-m", "research.tune", "--run-trial",
                   json.dumps({**spec, "launched": True})]]
      # Trials running at once under one launcher need coordinators on distinct ports: the
      # launcher's first host is unknown here, so the port follows the trial's number.
      env = {**os.environ, "JAX_COORDINATOR_PORT": str(trial_port(claim.number))}
    else:  # one run of `processes` processes here, each given the same trial
      if processes > 1:
        spec["coordinator"] = f"127.0.0.1:{free_port()}"
      commands = [[sys.executable, "-m", "research.tune", "--run-trial",
                   json.dumps({**spec, "processes": processes, "process_id": i})]
                  for i in range(processes)]
    children = []
    with self.children_lock:
      if self.stopping.is_set():
        return None
      for i, command in enumerate(commands):
        log_name = "tune.log" if i == 0 else f"tune.p{i}.log"
        with (workdir / log_name).open("a") as log:
          # Its own process group: a terminal's Ctrl-C reaches it once, through `on_signal`.
          children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                           process_group=0, env=env))
      self.children.update(children)
    try:
      codes = [child.wait() for child in children]
    finally:
      with self.children_lock:
        self.children.difference_update(children)
    # The first failure, else process 0's ending (75 when all stopped at a signal).
    return next((c for c in codes if c not in (0, EXIT_INTERRUPTED)), codes[0])

  # ---- signals and the whole search

  def stop(self) -> None:
    self.stopping.set()

  def on_signal(self, number: int, frame) -> None:
    first = self.signal_name is None
    self.signal_name = signal.Signals(number).name
    self.stop()
    with self.children_lock:
      children = list(self.children)
    # Each trial saves a checkpoint and exits 75. A launcher is sent SIGTERM, whatever the
    # signal: srun passes that one to its tasks (a first SIGINT only makes it print status).
    for child in children:
      with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM if self.args.launcher else number)
    if first:
      say(f"{self.signal_name}: the running trials save a checkpoint and stop; rerun the same "
          "command to resume")

  def search(self, workers: int) -> int:
    previous = {number: signal.signal(number, self.on_signal) for number in FORWARDED}
    try:
      host = f"{socket.gethostname()}:{os.getpid()}"
      threads = [threading.Thread(target=self.work, args=(f"{host}:{i}",), daemon=True)
                 for i in range(max(1, workers))]
      for thread in threads:
        thread.start()
      for thread in threads:
        while thread.is_alive():
          thread.join(0.2)
    finally:
      for number, handler in previous.items():
        signal.signal(number, handler)
    if self.errors:
      print(f"error: {self.errors[0]}", file=sys.stderr)
      return 2
    if self.interrupted or self.signal_name:
      print(f"error: stopped by {self.signal_name or 'a signal to a trial'}: rerun the same "
            "command to resume", file=sys.stderr)
      return EXIT_INTERRUPTED
    return 0


def drop_checkpoints(workdir: pathlib.Path) -> None:
  """Deletes a finished run's saved weights (`checkpoints/`, `best/`), keeping its records: a
  study of many trials of a large model would otherwise fill the disk with weights no one
  reads once the trial is told (a running trial keeps them, to resume)."""
  for name in ("checkpoints", "best"):
    shutil.rmtree(workdir / name, ignore_errors=True)


def selection_value(results: dict[str, Any], metric: str) -> float:
  """The value a completed trial is ranked by: its best evaluation's selection metric (as the
  run's best checkpoint), else its final one."""
  if results.get("best"):
    return results["best"]["value"]
  return next(iter(results["final"]["results"].values()))[metric]


def trained_steps(workdir: pathlib.Path) -> int:
  """The steps a failed run reached (its run.json's last session), 0 without one."""
  try:
    sessions = json.loads((workdir / "run.json").read_text())["sessions"]
  except (OSError, ValueError, KeyError):
    return 0
  return max([s.get("last_step") or s.get("first_step") or 0 for s in sessions] or [0])


def summary(study: optuna.Study, metric: str) -> str:
  trials = study.get_trials(deepcopy=False)
  counts = {state: sum(t.state == state for t in trials) for state in TrialState}
  line = (f"{len(trials)} trials: {counts[TrialState.COMPLETE]} completed, "
          f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed, "
          f"{counts[TrialState.RUNNING]} running or to resume")
  if counts[TrialState.COMPLETE]:
    best = study.best_trial
    line += (f"; best trial {best.number}: {metric} {_value(best.value)} "
             f"({short_params(best.params)})")
  return line


# ---- The best trial, retrained with new seeds -----------------------------------------------


def rerun_best(setup: Setup, study: optuna.Study, seeds: int, workers: int,
               keep_checkpoints: str = "all") -> int:
  """The best trial's overrides with `seeds` new seeds in `<study>/best/seed=<s>/`, run and
  reported as `research.sweep` runs its points; returns the exit status."""
  if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
    raise TuneError("--rerun-best: the study has no completed trial yet")
  best = study.best_trial
  overrides = {f"config.{name}": value
               for name, value in best.user_attrs.get("overrides", best.params).items()}
  first = overrides.pop("config.seed", setup.base_seed) + 1
  folder = setup.folder / "best"
  record = folder / "sweep.json"
  if record.exists() and json.loads(record.read_text()).get("trial") != best.number:
    raise TuneError(f"{folder} holds the reruns of trial {json.loads(record.read_text())['trial']}"
                    f", but the best is now trial {best.number}: move {folder} away first")
  points = []
  for seed in range(first, first + seeds):
    name, point = f"seed={seed}", {**overrides, "config.seed": seed}
    points.append({"name": name, "overrides": point, "workdir": str(folder / name),
                   "command": sweep.command(setup.config_spec, folder / name, point)})
  folder.mkdir(parents=True, exist_ok=True)
  record.write_text(json.dumps({"config": setup.config_spec, "trial": best.number, "points": [
      {k: p[k] for k in ("name", "overrides")} for p in points]}, indent=2, default=str) + "\n")
  say(f"rerunning the best trial {best.number} ({short_params(best.params)}) with seeds "
      f"{first}..{first + seeds - 1} in {folder}")
  todo = [p for p in points if sweep.status(p) != "done"]
  failed = []
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    positions = [f"[best {i}/{len(todo)}]" for i in range(1, len(todo) + 1)]
    for position, (point, code, seconds) in zip(positions,
                                                pool.map(sweep.run_point, todo, positions)):
      say(f"{position} {point['name']}: "
          f"{'done' if code == 0 else f'FAILED (exit {code}, see main.log)'} in {seconds:.0f} s")
      if code == 0 and keep_checkpoints == "none":
        drop_checkpoints(pathlib.Path(point["workdir"]))
      if code:
        failed.append(point["name"])
  if failed:
    print(f"error: {len(failed)} rerun(s) of the best trial failed: {', '.join(failed)}",
          file=sys.stderr)
    return 1
  from research import report
  print(report.write_report(folder))
  return 0


def write_outputs(study: optuna.Study, folder: pathlib.Path, warn: bool = True) -> None:
  """The trials table, plots and best_config.py (`research.tune_report`, where it exists); its
  warnings on stderr when `warn`. A folder that cannot take them is a warning: the study goes
  on."""
  try:
    module = importlib.import_module("research.tune_report")
  except ModuleNotFoundError as e:
    if e.name != "research.tune_report":
      raise
    return
  with _outputs_lock:  # workers' threads end trials at once; one writer at a time
    try:
      warnings = module.write(study, folder)
    except OSError as e:
      warnings, warn = [f"cannot write the study's tables and plots into {folder}: {e}"], True
  for warning in warnings if warn else []:
    print(f"warning: {warning}", file=sys.stderr)


_outputs_lock = threading.Lock()


# ---- One trial, in its own process -----------------------------------------------------------


def trial_port(number: int) -> int:
  """The coordinator port of trial `number` when a launcher starts its processes."""
  return TRIAL_PORTS[0] + number % (TRIAL_PORTS[1] - TRIAL_PORTS[0])


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def run_trial_process(spec: dict[str, Any]) -> int:
  """The child of a worker: the trial's config (the file's, with the trial's overrides) trained
  in its workdir, each periodic evaluation reported to the trial, stopped when the pruner says
  so. Ends with the run's own one-line errors (exit 2) or 75 after a signal.

  With `processes` > 1 it is process `process_id` of one run on `jax.distributed`: every
  process was given the trial's parameters by the worker, which asked Optuna once (processes
  that each ask would each train another config: transformers #18609); process 0 alone
  reports to the trial, and its pruner's answer is broadcast, so that all stop at one step."""
  # Killed with its worker, as a kill -9 of the tuner would otherwise leave it training. Set
  # here rather than between fork and exec, which is unsafe in a process with threads.
  from research import supervisor
  launched = spec.get("launched", False)  # started by --launcher's command, not the worker
  supervisor.die_with_parent()
  if not launched and os.getppid() != spec["parent"]:  # the worker died before that took effect
    return EXIT_INTERRUPTED
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                      stream=sys.stderr)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  try:
    module, arg = sweep.load_config_file(spec["config"])
    config = module.get_config(arg)
    for name, value in spec["overrides"].items():
      search_space.set_field(config, name, value)
    config_lib.validate(config)  # before JAX starts: a bad combination fails in a second
  except (sweep.SweepError, SpaceError, config_lib.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # the config file's own mistake
    traceback.print_exc()
    print(f"error: --config {spec['config']}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  from research import distributed, errors, runtime, train
  processes = spec.get("processes", 1)
  try:  # several processes: one run on jax.distributed (a launcher's: as its variables say)
    if launched:
      runtime.start("auto")
    else:
      runtime.start("on" if processes > 1 else "off", coordinator_address=spec.get("coordinator"),
                    num_processes=processes, process_id=spec.get("process_id"))
  except distributed.DistributedError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  import jax
  logging.info("trial %d's overrides: %s", spec["trial_id"],
               json.dumps(spec["overrides"], sort_keys=True))
  study = optuna.load_study(study_name=spec["study_name"], storage=open_storage(spec["storage"]),
                            sampler=optuna.samplers.RandomSampler(),
                            pruner=make_pruner(spec["pruner"], spec["eval_every"], spec["budget"]))
  trial = optuna.trial.Trial(study, spec["trial_id"])

  def on_evaluation(step: int, value: float) -> bool:
    prune = False
    if jax.process_index() == 0:
      trial.report(value, step)
      prune = trial.should_prune()
    if jax.process_count() > 1:  # every process evaluates at this step: one answer for all
      from jax.experimental import multihost_utils
      prune = bool(multihost_utils.broadcast_one_to_all(np.array(prune)))
    return prune

  try:
    train.train_and_evaluate(config, spec["workdir"], on_evaluation=on_evaluation)
  except errors.Interrupted as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_INTERRUPTED
  except Exception as e:  # the log keeps the traceback; the worker shows the last line
    traceback.print_exc()
    message = " ".join(str(e).split("\n")[0].split())
    distributed.fail(message or type(e).__name__, 2)  # ends the others at once too
    print(f"error: {message if message else type(e).__name__}", file=sys.stderr)
    return 2
  return 0


# ---- Command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--run-trial"]:
    return run_trial_process(json.loads(argv[1]))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file[:arg] with get_space")
  parser.add_argument("--study", required=True, type=pathlib.Path,
                      help="the study folder: trials/, and study.db by default")
  parser.add_argument("--trials", type=int, default=0,
                      help="the study's total number of trials (0: run none)")
  parser.add_argument("--sampler", default="tpe",
                      help=f"one of {', '.join(SAMPLERS)}, optionally :key=value,... for it")
  parser.add_argument("--pruner", default="none",
                      help=f"one of {', '.join(PRUNERS)}, optionally :key=value,... for it")
  parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
  parser.add_argument("--storage", default=None,
                      help="sqlite (default: <study>/study.db), journal (<study>/journal.log) "
                      "or an SQLAlchemy URL (postgresql+psycopg2://user@host/db)")
  parser.add_argument("--study-name", default=None, help="default: the study folder's name")
  parser.add_argument("--workers", type=int, default=1, help="trials run at once here")
  parser.add_argument("--processes", type=int, default=1,
                      help="each trial one run of this many processes on this machine "
                      "(jax.distributed; the trial's parameters asked once)")
  parser.add_argument("--rerun-best", type=int, default=0, metavar="N",
                      help="retrain the best trial's config with N new seeds")
  parser.add_argument("--keep-checkpoints", choices=("all", "none"), default="all",
                      help="none: delete a trial's (and a rerun's) weights once it has ended, "
                      "keeping its records")
  parser.add_argument("--launcher", default="",
                      help="a command that starts each trial's processes, e.g. 'srun --nodes=2 "
                      "--ntasks=2 --kill-on-bad-exit=1' in a SLURM job: a trial across hosts, "
                      "one job step each")
  args = parser.parse_args(argv)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  try:
    if args.trials < 0 or args.workers < 1 or args.rerun_best < 0 or args.processes < 1:
      raise TuneError("--trials and --rerun-best take a number >= 0, --workers and "
                      "--processes >= 1")
    if args.launcher and args.processes > 1:
      raise TuneError("--launcher and --processes: the launcher's own options say how many "
                      "processes a trial has (srun --ntasks=N)")
    try:
      launcher = shlex.split(args.launcher)
    except ValueError as e:  # an unclosed quote
      raise TuneError(f"--launcher {args.launcher!r}: {e}") from e
    if launcher and not shutil.which(launcher[0]):
      raise TuneError(f"--launcher {args.launcher!r}: no command {launcher[0]!r} here")
    args.launcher = args.launcher if launcher else ""
    setup = load_setup(args.config, args.study)
    # The sampler and pruner before anything is written: a mistake in them leaves no study.
    sampler = make_sampler(args.sampler, setup.space, args.seed)
    pruner = make_pruner(args.pruner, setup.eval_every, setup.budget)
    if (not isinstance(pruner, optuna.pruners.NopPruner) and setup.budget
        and setup.eval_every and setup.eval_every >= setup.budget):
      print(f"warning: --pruner {args.pruner} stops no trial: a trial evaluates at its last step "
            f"only (eval.every_steps {setup.eval_every}, train.num_steps {setup.budget})",
            file=sys.stderr)
    if isinstance(sampler, _GridSampler) and args.trials > grid_size(setup.space):
      raise TuneError(f"--trials {args.trials}: the grid of {args.config} has "
                      f"{grid_size(setup.space)} points")
    try:
      args.study.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise TuneError(f"--study {args.study}: cannot make the study folder: "
                      f"{e.strerror or e}") from e
    url = storage_url(args.storage, args.study)
    # Under the workers' lock: tuners started at once agree on who made the study.
    with file_lock(args.study / ".ask.lock", "another worker opening the study"):
      study = open_study(setup, args, url, sampler, pruner)
    code = 0
    if args.trials:
      tuner = Tuner(setup, study, url, args)
      code = tuner.search(args.workers)
      say(summary(study, setup.metric))
    if study.get_trials(deepcopy=False):
      write_outputs(study, args.study)
    if code == 0 and args.rerun_best:
      code = rerun_best(setup, study, args.rerun_best, args.workers,
                        args.keep_checkpoints)
    return code
  except (TuneError, SpaceError, config_lib.ConfigError) as e:
    if os.environ.get("RESEARCH_DEBUG") == "1":
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
