r"""What a study of `research.tune` leaves a researcher: its trials as a table, plots, warnings,
and a config file that reproduces the best trial.

  python -m research.tune_report runs/rte_tpe            # rewrites the outputs of a study folder

The tuner calls `write(study, folder)` as trials end; the command above does the same for a
study folder (its study.db or journal.log, or `--storage URL` for a PostgreSQL study). Written
into the folder:
  trials.csv / trials.md   one row per trial: outcome, selection metric, steps trained, each
                           searched hyperparameter, seconds, workdir; the best trial marked ★;
                           above the table the search space, the warnings and the expected best
                           score with n trials
  plots/history.png        each trial's score by trial number (pruned trials at their last
                           evaluation, failed ones as ticks at the bottom) and the running best
  plots/isolation_<field>.png  each trial's score against one hyperparameter, the best trial of
                           each value (or of each bin of a continuous range) joined by a line:
                           where the best scores lie once the other hyperparameters are tuned
  plots/expected_best.png  the expected best score of n trials drawn from the completed ones,
                           ± its standard deviation, for n = 1 .. all ("Show your work", Dodge
                           et al. 2019): how much a smaller search would have found
  best_config.py           the base config file and the best trial's overrides, as a config
                           file for `python -m research.main --config <folder>/best_config.py`

Warnings: the best trial's value of a hyperparameter in the outer tenth of its search range (in
log space for a log-uniform one; the first or last of three or more ordered numeric choices),
where a wider range may hold better values; failed trials; no completed trial yet. The edge
warning needs two completed trials: the best of one trial is only where it happened to be drawn.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import pathlib
import re
import shlex
import sys
import threading
from typing import Any

import numpy as np
import optuna

from research import config_lib, sweep

EDGE = 0.1  # the outer fraction of a range (at each end) where a best value draws a warning
MIN_COMPLETED_FOR_EDGES = 2
NUMERIC_KINDS = ("log_uniform", "uniform", "int")
STATE_NAMES = {optuna.trial.TrialState.COMPLETE: "completed",
               optuna.trial.TrialState.PRUNED: "pruned",
               optuna.trial.TrialState.FAIL: "failed",
               optuna.trial.TrialState.RUNNING: "running",
               optuna.trial.TrialState.WAITING: "waiting"}


class TuneReportError(ValueError):
  """A study folder that cannot be read; `main` prints it in one line and exits with 2."""


# ---- the expected best score of n trials -------------------------------------------------------


def expected_max(values, n: int) -> tuple[float, float]:
  """Mean and standard deviation of the maximum of `n` draws (with replacement) from the
  empirical distribution of `values` (Dodge et al. 2019, eq. 1): with v_(1) <= ... <= v_(N),
  P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n."""
  ordered = np.sort(np.asarray(values, dtype=float))
  if ordered.size == 0 or n < 1:
    raise ValueError(f"expected_max needs values and n >= 1, got {ordered.size} values, n={n}")
  rank = np.arange(1, ordered.size + 1) / ordered.size
  probability = rank ** n - (rank - 1 / ordered.size) ** n
  mean = float(probability @ ordered)
  variance = float(probability @ (ordered - mean) ** 2)
  return mean, math.sqrt(variance)


def expected_best(values, n: int, direction: str) -> tuple[float, float]:
  """`expected_max`, or the expected minimum for a study that minimizes."""
  if direction == "minimize":
    mean, std = expected_max(-np.asarray(values, dtype=float), n)
    return -mean, std
  return expected_max(values, n)


# ---- reading the study ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
  """A numpy scalar as the Python number it holds (its repr is Python's)."""
  return value.item() if isinstance(value, np.generic) else value


def hyperparameter(trial: optuna.trial.FrozenTrial, field: str) -> Any:
  """The value the trial trained with: its overrides (what the run got), else its params."""
  overrides = trial.user_attrs.get("overrides", {})
  for key in (field, f"config.{field}"):
    if key in overrides:
      return _plain(overrides[key])
  return _plain(trial.params.get(field))


def score(trial: optuna.trial.FrozenTrial) -> float | None:
  """The selection metric: a completed trial's value, a pruned one's last evaluation."""
  if trial.state == optuna.trial.TrialState.COMPLETE:
    return trial.value
  if trial.state == optuna.trial.TrialState.PRUNED:
    if trial.value is not None:
      return trial.value
    if trial.intermediate_values:
      return trial.intermediate_values[max(trial.intermediate_values)]
  return None


def outcome(trial: optuna.trial.FrozenTrial) -> str:
  return trial.user_attrs.get("outcome") or STATE_NAMES.get(trial.state, trial.state.name.lower())


def seconds(trial: optuna.trial.FrozenTrial) -> float | None:
  if trial.datetime_start is None or trial.datetime_complete is None:
    return None
  return (trial.datetime_complete - trial.datetime_start).total_seconds()


def searched(space: dict[str, dict[str, Any]]) -> list[str]:
  """The fields the search varies (a 'fixed' entry is a constant of every trial)."""
  return [field for field, spec in space.items() if spec["kind"] != "fixed"]


def is_log(spec: dict[str, Any]) -> bool:
  return spec["kind"] == "log_uniform" or bool(spec.get("log"))


# ---- formatting -------------------------------------------------------------------------------


def format_number(value: Any, log: bool = False) -> str:
  """3.2e-05 for a learning rate (or any log-scale or tiny float), 0.1 for a dropout."""
  if isinstance(value, float) and math.isfinite(value) and value != 0 and (
      log or abs(value) < 1e-3 or abs(value) >= 1e6):
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def format_space(field: str, spec: dict[str, Any]) -> str:
  log = is_log(spec)
  if spec["kind"] in NUMERIC_KINDS:
    kind = {"log_uniform": "log-uniform", "uniform": "uniform", "int": "integer"}[spec["kind"]]
    return (f"`{field}` {kind}{' (log)' if log and spec['kind'] == 'int' else ''} "
            f"[{format_number(spec['low'], log)}, {format_number(spec['high'], log)}]")
  if spec["kind"] == "choice":
    return f"`{field}` one of {_choices(spec)}"
  return f"`{field}` = {format_number(spec['value'])}"


def _choices(spec: dict[str, Any]) -> str:
  return "{" + ", ".join(format_number(v) for v in spec["values"]) + "}"


def _cell(text: str, width: int = 80) -> str:
  text = text.replace("|", "\\|").replace("\n", " ")
  return text if len(text) <= width else text[:width - 1] + "…"


# ---- warnings ---------------------------------------------------------------------------------


def edge_warning(field: str, spec: dict[str, Any], value: Any) -> str | None:
  """A line when `value` (the best trial's) lies in the outer EDGE of `field`'s range."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  log = is_log(spec)
  if spec["kind"] in NUMERIC_KINDS:
    low, high = spec["low"], spec["high"]
    scale = math.log if log else float
    if high <= low or (log and min(low, value) <= 0):
      return None
    position = (scale(value) - scale(low)) / (scale(high) - scale(low))
    where = f"[{format_number(low, log)}, {format_number(high, log)}]"
    advice = "widen the range"
  elif spec["kind"] == "choice":
    numbers = sorted({v for v in spec["values"]
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if len(numbers) < 3 or len(numbers) != len(spec["values"]) or value not in numbers:
      return None  # of two choices, the best is always at an edge
    position = numbers.index(value) / (len(numbers) - 1)
    where = f"the choices {_choices(spec)}"
    advice = "add choices beyond it"
  else:
    return None
  if EDGE < position < 1 - EDGE:
    return None
  side = "lower" if position <= EDGE else "upper"
  return (f"{field}: the best trial's {format_number(value, log)} is at the {side} edge of "
          f"{where}: {advice}")


def warnings_of(study: optuna.Study, best: optuna.trial.FrozenTrial | None) -> list[str]:
  """The lines `write` returns: the best trial's edge values, failed trials, no best yet."""
  trials = study.get_trials(deepcopy=False)
  completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  lines = []
  if best is None:
    lines.append(f"no completed trial yet ({len(trials)} trial(s) in all): no best_config.py, "
                 "no expected-best plot")
  elif len(completed) >= MIN_COMPLETED_FOR_EDGES:
    space = study.user_attrs.get("space", {})
    for field in searched(space):
      line = edge_warning(field, space[field], hyperparameter(best, field))
      if line:
        lines.append(line)
  failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
  if failed:
    first = failed[0]
    lines.append(f"{len(failed)} of {len(trials)} trials failed (the first: trial {first.number}"
                 f" in {first.user_attrs.get('workdir', '?')}, {outcome(first)}): see trials.md")
  return lines


# ---- tables -----------------------------------------------------------------------------------


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
  try:
    return study.best_trial
  except ValueError:  # no completed trial
    return None


def write_tables(study: optuna.Study, folder: pathlib.Path, best, warnings: list[str]) -> None:
  attrs = study.user_attrs
  space = attrs.get("space", {})
  fields = searched(space)
  metric = attrs.get("metric", "value")
  trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
  rows = io.StringIO()
  writer = csv.writer(rows, lineterminator="\n")
  writer.writerow(["number", "state", "outcome", metric, "steps", *fields, "workdir", "seconds",
                   "best"])
  for t in trials:
    writer.writerow([t.number, STATE_NAMES.get(t.state, t.state.name.lower()), outcome(t),
                     _blank(score(t)), _blank(t.user_attrs.get("steps")),
                     *(_blank(hyperparameter(t, f)) for f in fields),
                     t.user_attrs.get("workdir", ""), _blank(seconds(t)),
                     int(best is not None and t.number == best.number)])
  _write_text(folder / "trials.csv", rows.getvalue())
  header = ["trial", "outcome", f"{metric}", "steps", *fields, "seconds", "workdir"]
  table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for t in trials:
    value, steps, took = score(t), t.user_attrs.get("steps"), seconds(t)
    mark = " ★" if best is not None and t.number == best.number else ""
    table.append("| " + " | ".join(
        [f"{t.number}{mark}", _cell(outcome(t)), "—" if value is None else f"{value:.4f}",
         "—" if steps is None else str(steps),
         *(_hyperparameter_cell(hyperparameter(t, f), space[f]) for f in fields),
         "—" if took is None else f"{took:.0f}", f"`{t.user_attrs.get('workdir', '')}`"])
         + " |")
  counts = {name: sum(STATE_NAMES.get(t.state) == name for t in trials)
            for name in ("completed", "pruned", "failed", "running")}
  budget = (f"{attrs['budget']} steps per trial" if attrs.get("budget")
            else "steps per trial searched" if "train.num_steps" in fields
            else "each trial as long as its config's epochs")
  text = [f"# Study {study.study_name}", "",
          f"`--config {attrs.get('config', '?')}`; selection metric `{metric}` "
          f"({study.direction.name.lower()}); sampler {attrs.get('sampler', '?')}, pruner "
          f"{attrs.get('pruner', '?')}, {budget}.  ",
          "Trials: " + ", ".join(f"{n} {name}" for name, n in counts.items()) + ".  ",
          "Search space: " + ("; ".join(format_space(f, s) for f, s in space.items()) or "—")
          + "."]
  if best is not None:
    reproduced = "; `best_config.py` reproduces it" if "config_path" in attrs else ""
    text += ["", f"Best: trial {best.number} ★, {metric} {best.value:.4f} "
                 f"(`{best.user_attrs.get('workdir', '')}`{reproduced})."]
    values = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    cells = [f"{n}: {m:.4f} ± {s:.4f}" for n in _some_counts(len(values))
             for m, s in [expected_best(values, n, study.direction.name.lower())]]
    text += ["", f"Expected best {metric} of n trials drawn from the {len(values)} completed "
                 f"(Dodge et al. 2019; plots/expected_best.png): " + ", ".join(cells) + "."]
  text += [f"\n**Warning:** {line}." for line in warnings]
  plots = sorted(p.name for p in (folder / "plots").glob("*.png"))
  text += ["", *table, "", f"A pruned trial's {metric} is its last evaluation's, before "
           "its budget; seconds from its start to its end.", "",
           *(f"![{name}](plots/{name})" for name in plots)]
  _write_text(folder / "trials.md", "\n".join(text) + "\n")


def _hyperparameter_cell(value: Any, spec: dict[str, Any]) -> str:
  return "—" if value is None else format_number(value, is_log(spec))


def _blank(value: Any) -> Any:
  return "" if value is None else value


def _some_counts(total: int) -> list[int]:
  """1, 2, 5, 10, 20, 50, ... below `total`, and `total`."""
  counts = [c * 10 ** e for e in range(6) for c in (1, 2, 5)]
  return [c for c in counts if c < total] + [total]


# ---- plots ------------------------------------------------------------------------------------


def write_plots(study: optuna.Study, folder: pathlib.Path, best) -> list[pathlib.Path]:
  # Figures of their own, not pyplot's: no global state or backend switched under a tuner
  # whose workers may write at once; savefig renders PNG with Agg.
  from matplotlib.figure import Figure
  from matplotlib.ticker import NullFormatter
  plots = folder / "plots"
  plots.mkdir(exist_ok=True)
  trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
  direction = study.direction.name.lower()
  metric = study.user_attrs.get("metric", "value")
  space = study.user_attrs.get("space", {})
  completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and score(t) is not None]
  written = []

  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  ax.plot([t.number for t in completed], [t.value for t in completed], "o", color="C0",
          label="completed")
  ax.plot([t.number for t in pruned], [score(t) for t in pruned], "x", color="0.6",
          label="pruned (last evaluation)")
  failed = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL]
  if failed:
    ax.plot(failed, [0.02] * len(failed), "v", color="C3", label="failed",
            transform=ax.get_xaxis_transform())
  if completed:
    running = (np.maximum if direction == "maximize" else np.minimum).accumulate(
        [t.value for t in completed])
    ax.step([t.number for t in completed], running, where="post", color="C1",
            label=f"best so far ({direction})")
  ax.set(xlabel="trial", ylabel=metric, title=f"{study.study_name}: optimisation history")
  ax.legend(fontsize="small")
  written.append(_save(fig, plots / "history.png"))

  for field in searched(space):
    spec, log = space[field], is_log(space[field])
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    categorical = spec["kind"] == "choice"
    position = ((lambda v: _index(spec["values"], v)) if categorical else (lambda v: v))
    # Trials without the field (a conditional one, such as a LoRA rank) are left out.
    with_field = [t for t in pruned if hyperparameter(t, field) is not None]
    ax.plot([position(hyperparameter(t, field)) for t in with_field],
            [score(t) for t in with_field], "x", color="0.6", label="pruned (last evaluation)")
    with_field = [t for t in completed if hyperparameter(t, field) is not None]
    ax.plot([position(hyperparameter(t, field)) for t in with_field],
            [t.value for t in with_field], "o", color="C0", alpha=0.6, label="completed")
    winners = best_per_bin(with_field, field, spec, direction)
    ax.plot([position(hyperparameter(t, field)) for t in winners],
            [t.value for t in winners], "o-", color="C3", markersize=8,
            label="best per value" if categorical or _by_value(spec) else "best per bin")
    if best is not None and hyperparameter(best, field) is not None:
      ax.plot([position(hyperparameter(best, field))], [best.value], "*", color="gold",
              markeredgecolor="k", markersize=16, label=f"best trial ({best.number})")
    if categorical:
      ax.set_xticks(range(len(spec["values"])), [format_number(v) for v in spec["values"]])
    else:  # the whole search range, its ends marked: how near the edges the best trials lie
      if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels overlap
      low, high = spec["low"], spec["high"]
      pad = (high / low) ** 0.05 if log else 0.05 * (high - low)
      # The axis first: with no point yet, one line alone would make an empty range.
      ax.set_xlim(*((low / pad, high * pad) if log else (low - pad, high + pad)))
      for end in (low, high):
        ax.axvline(end, color="0.5", linestyle="--", linewidth=0.8)
    ax.set(xlabel=field, ylabel=metric, title=f"{metric} against {field}")
    ax.legend(fontsize="small")
    written.append(_save(fig, plots / f"isolation_{field.replace('.', '_')}.png"))

  if completed:
    values = [t.value for t in completed]
    counts = np.arange(1, len(values) + 1)
    mean, std = np.array([expected_best(values, n, direction) for n in counts]).T
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(counts, mean, "o-", color="C0", markersize=3, label="expected best")
    ax.fill_between(counts, mean - std, mean + std, color="C0", alpha=0.2, label="± 1 std")
    ax.set(xlabel="trials (n)", ylabel=f"expected best {metric} ({direction})",
           title=f"expected best of n of the {len(values)} completed trials")
    ax.legend(fontsize="small")
    written.append(_save(fig, plots / "expected_best.png"))
  return written


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  fig.tight_layout()
  part = _part(path)
  fig.savefig(part, dpi=110, format="png")
  os.replace(part, path)
  return path


def _write_text(path: pathlib.Path, text: str) -> None:
  """Whole or not at all: workers of one study may rewrite the outputs at once, and a reader
  (research.main loading best_config.py) never sees half a file."""
  part = _part(path)
  part.write_text(text)
  os.replace(part, path)


def _part(path: pathlib.Path) -> pathlib.Path:
  """Where a writer (process and thread) writes `path` before renaming it."""
  return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")


def _index(values: list[Any], value: Any) -> int:
  """A choice's place among the choices (a value from JSON may be a list for a tuple)."""
  for i, choice in enumerate(values):
    if choice == value or (isinstance(choice, (list, tuple)) and list(choice) == value):
      return i
  return -1


def _by_value(spec: dict[str, Any], most: int = 12) -> bool:
  """Whether each value is its own group: choices, and integer ranges of few values."""
  return spec["kind"] == "choice" or (
      spec["kind"] == "int" and not is_log(spec) and spec["high"] - spec["low"] < most)


def best_per_bin(completed, field: str, spec: dict[str, Any], direction: str):
  """The best completed trial of each value of `field` (choices, small integer ranges) or of
  each of about sqrt(n) equal bins of its range (in log space for a log-scale one), ordered
  along the axis."""
  groups: dict[Any, list] = {}
  if _by_value(spec):
    for t in completed:
      groups.setdefault(repr(hyperparameter(t, field)), []).append(t)
  else:
    scale = np.log if is_log(spec) else float
    low, high = scale(spec["low"]), scale(spec["high"])
    bins = max(1, min(10, round(math.sqrt(len(completed)))))
    for t in completed:
      place = (scale(hyperparameter(t, field)) - low) / (high - low) if high > low else 0.0
      groups.setdefault(min(bins - 1, max(0, int(place * bins))), []).append(t)
  pick = max if direction == "maximize" else min
  winners = [pick(group, key=lambda t: t.value) for group in groups.values()]
  if spec["kind"] == "choice":
    return sorted(winners, key=lambda t: _index(spec["values"], hyperparameter(t, field)))
  return sorted(winners, key=lambda t: hyperparameter(t, field))


# ---- best_config.py ---------------------------------------------------------------------------


BEST_CONFIG = '''\
"""The best trial so far of the study {name} (`--config {config}`, in {folder}):
trial {number}, {metric} {value} ({direction}) of {completed} completed trial(s).

The base config {base}{with_arg} with the trial's overrides:

  python -m research.main --config {path} --workdir runs/best

Written by research.tune_report; rewritten as the study finds better trials.
"""

BASE = {base!r}
BASE_ARG = {arg!r}
OVERRIDES = {{
{overrides}}}


def get_config(arg=None):
  from research import tune_report
  return tune_report.trial_config(BASE, BASE_ARG, OVERRIDES, arg=arg, source=__file__)
'''


def trial_config(base: str, base_arg: str | None, overrides: dict[str, Any], *, arg=None,
                 source: str = "best_config.py"):
  """The config of a trial: the base config file (with its argument) and the overrides. What
  best_config.py's get_config returns."""
  if arg is not None:
    fixed = f" (the study fixed its base's: {base_arg!r})" if base_arg is not None else ""
    raise config_lib.ConfigError(f"{source} takes no argument{fixed}, got {arg!r}")
  if not pathlib.Path(base).is_file():
    raise config_lib.ConfigError(f"{source}: its base config {base} is gone (moved or "
                                 "deleted): put it back, or set BASE to where it is now")
  module, _ = sweep.load_config_file(base)
  config = module.get_config() if base_arg is None else module.get_config(base_arg)
  try:
    sweep.apply_overrides(config, {f"config.{key}": value for key, value in overrides.items()})
  except sweep.SweepError as e:
    raise config_lib.ConfigError(f"{source}: the base config {base} changed since the study: "
                                 f"{e}") from e
  return config


def write_best_config(study: optuna.Study, folder: pathlib.Path, best) -> pathlib.Path:
  attrs = study.user_attrs
  arg = attrs.get("config", "").partition(":")[2] or None
  overrides = {key.removeprefix("config."): _plain(value)
               for key, value in best.user_attrs.get("overrides", {}).items()}
  path = folder / "best_config.py"
  completed = sum(t.state == optuna.trial.TrialState.COMPLETE
                  for t in study.get_trials(deepcopy=False))
  _write_text(path, BEST_CONFIG.format(
      name=study.study_name, config=attrs.get("config", "?"), folder=folder.resolve(),
      number=best.number, metric=attrs.get("metric", "value"), value=f"{best.value:.4f}",
      direction=study.direction.name.lower(), completed=completed,
      base=str(pathlib.Path(attrs["config_path"]).absolute()),
      with_arg=f" (argument {arg!r})" if arg else "", path=shlex.quote(str(path.resolve())),
      arg=arg,
      overrides="".join(f"    {key!r}: {value!r},\n" for key, value in overrides.items())))
  return path


# ---- the whole -------------------------------------------------------------------------------


def write(study: optuna.Study, folder: pathlib.Path) -> list[str]:
  """Writes the study's tables, plots and best_config.py into `folder`; returns the warnings
  (also in trials.md)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  best = best_trial(study)
  warnings = warnings_of(study, best)
  write_plots(study, folder, best)
  if best is not None and "config_path" in study.user_attrs:
    write_best_config(study, folder, best)
  elif best is not None:
    warnings.append("the study records no config_path (not made by research.tune?): "
                    "no best_config.py")
  write_tables(study, folder, best, warnings)
  return warnings


def open_study(folder: pathlib.Path, storage: str | None = None,
               name: str | None = None) -> optuna.Study:
  """The study `name` (by default the folder's name, as the tuner names it) in `storage`, or
  in the folder's study.db (SQLite) or journal.log; the one study there when it holds one."""
  where = re.sub(r"(://[^:/@]*:).*@", r"\1***@", storage or "")  # no password in messages
  if storage is None:
    if (folder / "study.db").is_file() and (folder / "journal.log").is_file():
      raise TuneReportError(f"{folder} holds both study.db and journal.log: two studies of "
                            "one folder (rerun with another --storage); move one away, or give "
                            "--storage")
    if (folder / "study.db").is_file():
      storage = where = f"sqlite:///{(folder / 'study.db').resolve()}"
    elif (folder / "journal.log").is_file():
      from optuna.storages import journal
      where = str(folder / "journal.log")
      storage = journal.JournalStorage(journal.JournalFileBackend(str(folder / "journal.log")))
    else:
      raise TuneReportError(f"{folder} holds no study.db or journal.log (not a study folder of "
                            "research.tune?); give --storage URL for a study elsewhere")
  try:
    names = optuna.study.get_all_study_names(storage)
  except Exception as e:  # a URL that does not answer, a damaged file: say which
    raise TuneReportError(f"cannot read the study storage {where}: "
                          f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
  # A shared database (PostgreSQL) holds the studies of many folders.
  name = name or (folder.absolute().name if len(names) != 1 else names[0])
  if name not in names:
    raise TuneReportError(f"the storage {where} holds no study {name!r} (it holds "
                          f"{', '.join(map(repr, names[:5])) or 'none'}"
                          f"{', ...' if len(names) > 5 else ''}): give --study-name")
  return optuna.load_study(study_name=name, storage=storage)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folder", type=pathlib.Path, help="the study folder (--study of the tuner)")
  parser.add_argument("--storage", default=None,
                      help="the study's storage URL when it is not in the folder (PostgreSQL)")
  parser.add_argument("--study-name", default=None,
                      help="the study in a storage that holds several (default: the folder's "
                      "name, as research.tune names it)")
  args = parser.parse_args(argv)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  try:
    study = open_study(args.folder, args.storage, args.study_name)
  except TuneReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    warnings = write(study, args.folder)
  except OSError as e:  # a folder that cannot be written: full disk, no permission
    print(f"error: cannot write the outputs of the study into {args.folder}: {e}",
          file=sys.stderr)
    return 2
  for line in warnings:
    print(f"warning: {line}", file=sys.stderr)
  print(f"wrote {args.folder / 'trials.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
