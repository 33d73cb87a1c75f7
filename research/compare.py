r"""Is the difference between systems real? Paired tests over the examples of one split.

  python -m research.compare runs/baseline runs/ablation [--split test] [--metric accuracy]
  python -m research.compare runs/rte_lr      # a sweep folder: one system per setting

A system is a run's workdir, or the runs of a sweep folder (research.sweep's) that differ only
in their seed (grouped as research.report groups them); a sweep of several settings is one
system per setting. The first system is the baseline: every other one is compared with it
(k - 1 comparisons, not all pairs). For each metric of the task, on one split, from the
per-example predictions every evaluation saves (`eval/<split>_step<N>_per_example.json`):

  difference     system minus baseline, each recomputed from the predictions with the
                 project's metric functions (checked equal to what the run reported)
  confidence     paired bootstrap over the examples (sentences for entity F1, questions for
                 QA): both systems scored on the same resample; the percentile interval
  p              paired permutation test (approximate randomisation): each example's two
                 predictions swapped at random; two-sided, as scipy.stats.permutation_test
  p Holm         Holm-Bonferroni over the k - 1 comparisons with the baseline (per metric,
                 seed pair and test); equal to p when two systems are compared

The bootstrap is scipy.stats.bootstrap on example indices; the permutation test follows
scipy.stats.permutation_test's p-value, vectorised (both checked against scipy in the tests). A
resample's confusion matrices, or its counts of each example (times per-example counts), come
from one bincount. A system with several seeds is compared seed by seed (each run with the
baseline's run of the same seed, the others in seed order: the per-example tests never pool
seeds), and over seeds with Welch's t-test and almost stochastic order (deepsig's `aso`:
epsilon_min < 0.5 says the system is better). The evaluation compared is the run's last
(`--checkpoint final`, the numbers research.report shows) or its best checkpoint's
(`--checkpoint best`; for a run made before per-example predictions were saved, `--mode=eval`
writes them). Prints a table; writes compare.md and compare.json into --output (default: the
current directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import warnings
from typing import Any

import numpy as np

from research import metrics, report, tasks
from research.resampling import ROWS_PER_BATCH, Scorer

CONFIDENCE = 0.95
MIN_SAMPLES = 100  # resamples: fewer leave the interval's tails to one or two draws


class CompareError(ValueError):
  """Input that cannot be compared (not a run, other examples, no predictions); `main` prints
  it in one line and exits with 2."""


################################################################################
# Loading: systems, their runs, and each run's predictions on the split.       #
################################################################################


@dataclasses.dataclass
class Evaluation:
  """One run's evaluation of the split: its reported metrics and per-example predictions."""
  workdir: pathlib.Path
  seed: int
  step: int
  task: dict[str, Any]          # config.json's task
  reported: dict[str, float]    # the metrics the run wrote for this evaluation
  examples: dict[str, Any]      # evaluation.per_example's record
  pruned_at: int | None = None  # the step a tuner's pruner stopped the run at
  source: str | None = None     # the file the split was read from (data.json), where known


@dataclasses.dataclass
class System:
  name: str
  runs: list[pathlib.Path]      # finished run workdirs, by seed
  evaluations: list[Evaluation] = dataclasses.field(default_factory=list)


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise CompareError(f"{path} cannot be read: {e}") from e


def _seed(workdir: pathlib.Path) -> int:
  return int(_read_json(workdir / "config.json").get("seed", 0))


def systems_of(path: pathlib.Path) -> list[System]:
  """A run workdir (config.json) is one system; a sweep folder is one per setting."""
  if (path / "config.json").is_file():
    if not (path / "results.json").is_file():
      raise CompareError(f"{path} holds no finished run (no results.json): finish it first")
    return [System(str(path), [path])]
  if not path.is_dir():
    raise CompareError(f"{path} does not exist" if not path.exists()
                       else f"{path} is a file, not a run's workdir or a sweep folder")
  if (path / "sweep.json").is_file():
    sweep = _read_json(path / "sweep.json")
    points = sweep.get("points") if isinstance(sweep, dict) else None
    if not (isinstance(points, list) and all(isinstance(p, dict) and {"name", "overrides"} <= set(p)
                                              for p in points)):
      raise CompareError(f"{path / 'sweep.json'} is damaged: not a list of points, each with "
                         "its name and overrides (research.sweep writes it)")
  else:
    points = [{"name": p.parent.name, "overrides": {}}
              for p in sorted(path.glob("*/config.json"))]
  finished = [p for p in points if (path / p["name"] / "results.json").is_file()]
  if not finished:
    raise CompareError(f"{path} is neither a run's workdir (no config.json) nor a sweep folder "
                       "with a finished run (no */results.json)")
  if len(finished) < len(points):
    print(f"warning: {path}: {len(points) - len(finished)} of {len(points)} runs are not "
          "finished (no results.json) and are left out", file=sys.stderr)
  groups: dict[str, list[pathlib.Path]] = {}
  for point in finished:
    groups.setdefault(report.setting_of(point), []).append(path / point["name"])
  return [System(str(path) if len(groups) == 1 else f"{path}:{setting}",
                 sorted(runs, key=_seed)) for setting, runs in groups.items()]


def load_evaluation(workdir: pathlib.Path, split: str, checkpoint: str) -> Evaluation:
  """The run's evaluation of `split` at its last step ('final') or best checkpoint ('best';
  also the re-evaluation `--mode=eval` writes, eval/<split>_best*.json, when of the best
  step results.json names)."""
  config = _read_json(workdir / "config.json")
  results = _read_json(workdir / "results.json")
  final = results.get("final") if isinstance(results, dict) else None
  if not (isinstance(final, dict) and isinstance(final.get("results"), dict)):
    raise CompareError(f"{workdir}/results.json is not a finished run's (no final results)")
  evaluated = list(final["results"])
  if split not in evaluated:
    raise CompareError(f"{workdir} did not evaluate the split {split!r} (it evaluated: "
                       f"{', '.join(evaluated)})")
  best = results.get("best") or {}
  if checkpoint == "final":
    if "step" not in final:
      raise CompareError(f"{workdir}/results.json names no final step")
    candidates = [f"{split}_step{final['step']}"]
  else:  # the best checkpoint re-evaluated by --mode=eval, else its evaluation in training
    candidates = [f"{split}_best"] + ([f"{split}_step{best['step']}"] if "step" in best else [])
  for stem in candidates:
    path = workdir / "eval" / f"{stem}_per_example.json"
    if path.is_file():
      record = _read_json(workdir / "eval" / f"{stem}.json")
      if stem == f"{split}_best" and record.get("step") != best.get("step", record.get("step")):
        continue  # re-evaluated before training went on and saved a later best checkpoint
      return Evaluation(workdir, int(config.get("seed", 0)), int(record["step"]),
                        config["task"], record["metrics"], _per_example(path),
                        (results.get("pruned") or {}).get("step"), _source(workdir, split))
  kind = _kind(config["task"])
  if kind is not None and kind.compare_refusal:
    raise CompareError(f"{workdir} {kind.compare_refusal}")
  advice = ("rerun `python -m research.main --config <its config> --workdir "
            f"{workdir} --mode=eval` and compare with --checkpoint best")
  raise CompareError(f"{workdir} has no per-example predictions of {split} "
                     f"(eval/{candidates[-1]}_per_example.json; a run made before they were "
                     f"saved): {advice}")


def _kind(task: dict[str, Any]) -> tasks.TaskKind | None:
  """The kind of a run's saved task; None for a kind this code does not know."""
  return tasks.get(task["kind"]) if task.get("kind") in tasks.KINDS else None


def _source(workdir: pathlib.Path, split: str) -> str | None:
  """Where the run read `split` from (its data.json; a run made before it: None)."""
  path = workdir / "data.json"
  record = _read_json(path) if path.is_file() else None
  return ((record.get(split) or {}).get("file") if isinstance(record, dict) else None)


def _per_example(path: pathlib.Path) -> dict[str, Any]:
  """A per-example file, checked whole: a gold and a prediction for every example."""
  record = _read_json(path)
  lengths = [len(record[key]) if isinstance(record, dict) and isinstance(record.get(key), list)
             else None for key in ("gold", "prediction")]
  if None in lengths:
    raise CompareError(f"{path} is damaged: no list of gold and of predicted labels")
  if lengths[0] != lengths[1]:
    raise CompareError(f"{path} is damaged: {lengths[0]} gold labels, {lengths[1]} predictions")
  return record


def check_same_examples(evaluations: list[Evaluation], split: str) -> None:
  """Every evaluation scored the same task on the same examples (gold and ids agree)."""
  first = evaluations[0]
  for other in evaluations[1:]:
    where = f"{first.workdir} and {other.workdir}"
    if (other.task["kind"], list(other.task["label_names"])) != (
        first.task["kind"], list(first.task["label_names"])):
      raise CompareError(f"{where} are different tasks ({first.task['kind']} "
                         f"{list(first.task['label_names'])} vs {other.task['kind']} "
                         f"{list(other.task['label_names'])})")
    a, b = first.examples["gold"], other.examples["gold"]
    if len(a) != len(b):
      raise CompareError(f"{where} evaluated different examples of {split}: {len(a)} vs "
                         f"{len(b)} examples")
    for key in ("id", "gold"):
      if first.examples.get(key) != other.examples.get(key):
        i = next(i for i, (x, y) in enumerate(zip(first.examples[key], other.examples[key]))
                 if x != y)
        raise CompareError(f"{where} evaluated different examples of {split}: example {i + 1}'s "
                           f"{key} is {first.examples[key][i]!r} vs {other.examples[key][i]!r}")


################################################################################
# Scoring resamples: each kind's scorers (research/resampling.py).             #
################################################################################

def scorers(a: Evaluation, b: Evaluation) -> dict[str, Scorer]:
  """The scorers of every metric over the stacked predictions of `a` then `b` (their task
  kind's, `TaskKind.scorers`)."""
  predictions = [e.examples["prediction"] for e in (a, b)]
  return tasks.kind_of(a.task).scorers([a.task, b.task], a.examples["gold"], predictions,
                                       [a.examples, b.examples])


################################################################################
# The tests.                                                                   #
################################################################################


def paired_tests(score: Scorer, n: int, *, samples: int, seed: int) -> dict[str, Any]:
  """Difference (first minus second of the stacked systems), its paired bootstrap percentile
  interval (scipy.stats.bootstrap on example indices) and the paired permutation test's
  two-sided p-value (`permutation_p`), `samples` resamples each."""
  from scipy import stats
  index = np.arange(n)
  first, second = float(score(index)), float(score(index + n))
  batch = max(1, ROWS_PER_BATCH // n)
  rng = np.random.default_rng(seed)
  boot = stats.bootstrap((index,), lambda i, axis=-1: score(i) - score(i + n), vectorized=True,
                         n_resamples=samples, batch=batch, method="percentile",
                         confidence_level=CONFIDENCE, rng=rng)
  low, high = boot.confidence_interval
  return {"system": first, "baseline": second, "difference": first - second,
          "ci": [float(low), float(high)],
          "p": permutation_p(score, n, first - second, samples=samples, rng=rng)}


def permutation_p(score: Scorer, n: int, observed: float, *, samples: int,
                  rng: np.random.Generator) -> float:
  """Approximate randomisation: each resample swaps each example's two predictions with
  probability 1/2; the two-sided p-value as scipy.stats.permutation_test(permutation_type=
  'samples') gives it for a randomised test (twice the smaller tail, each counting the
  observed, with its tolerance for equal values). Its own loop: scipy's visits every example
  in Python for each batch."""
  index = np.arange(n)
  batch = max(1, ROWS_PER_BATCH // n)
  null = []
  for start in range(0, samples, batch):
    swap = rng.random((min(batch, samples - start), n)) < 0.5
    null.append(score(index + n * swap) - score(index + n * ~swap))
  null = np.concatenate(null)
  tolerance = abs(100 * np.finfo(np.float64).eps * observed)
  less = (np.count_nonzero(null <= observed + tolerance) + 1) / (samples + 1)
  greater = (np.count_nonzero(null >= observed - tolerance) + 1) / (samples + 1)
  return float(min(1.0, 2 * min(less, greater)))


def holm(p_values: list[float | None]) -> list[float | None]:
  """Holm-Bonferroni adjusted p-values (the i-th smallest times m - i + 1, kept monotone);
  an undefined p (None) stays None and is not counted."""
  defined = [i for i, p in enumerate(p_values) if p is not None]
  adjusted = _holm([p_values[i] for i in defined])
  out: list[float | None] = [None] * len(p_values)
  for i, p in zip(defined, adjusted):
    out[i] = p
  return out


def _holm(p_values: list[float]) -> list[float]:
  p = np.asarray(p_values, np.float64)
  order = np.argsort(p, kind="stable")
  adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
  out = np.empty_like(p)
  out[order] = adjusted
  return out.tolist()


def seed_tests(system: list[float], baseline: list[float], *, seed: int,
               aso_iterations: int = 1000) -> dict[str, Any]:
  """Over seeds: Welch's t-test, and almost stochastic order's epsilon_min of 'the system is
  better than the baseline' (deepsig; `aso_iterations` bootstrap iterations, its default; 0:
  not computed)."""
  from scipy import stats
  out = {"system": system, "baseline": baseline,
         "difference": float(np.mean(system) - np.mean(baseline)), "welch_t": None,
         "welch_p": None}  # None: undefined, both without spread over their seeds
  if np.std(system) > 0 or np.std(baseline) > 0:
    with warnings.catch_warnings():  # one side without spread: scipy warns, the test holds
      warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
      welch = stats.ttest_ind(system, baseline, equal_var=False)
    out.update(welch_t=float(welch.statistic), welch_p=float(welch.pvalue))
  if aso_iterations <= 0:
    return out
  try:
    from deepsig import aso
  except Exception as e:  # noqa: BLE001  not installed, or its torch does not load
    out["aso_error"] = f"deepsig does not import ({type(e).__name__}: {e})"
    return out
  out["aso_epsilon_min"] = float(aso(system, baseline, seed=seed, show_progress=False,
                                     num_bootstrap_iterations=aso_iterations))
  return out


################################################################################
# The comparison, its table and files.                                         #
################################################################################


def seed_pairs(system: list[Evaluation], baseline: list[Evaluation]
               ) -> list[tuple[Evaluation, Evaluation]]:
  """The runs compared example by example: those of equal seed value, then the others of each
  side in seed order (seeds 0, 1, 2 vs 1, 2: 1 vs 1 and 2 vs 2; 0, 1 vs 2, 3: 0 vs 2, 1 vs 3)."""
  unpaired_baseline = list(baseline)
  pairs, unpaired = [], []
  for evaluation in system:
    same = next((b for b in unpaired_baseline if b.seed == evaluation.seed), None)
    if same is None:
      unpaired.append(evaluation)
    else:
      unpaired_baseline.remove(same)
      pairs.append((evaluation, same))
  return sorted(pairs + list(zip(unpaired, unpaired_baseline)), key=lambda pair: pair[0].seed)


def _check_reported(evaluation: Evaluation, metric: str, value: float) -> None:
  reported = evaluation.reported[metric]
  if not math.isclose(value, reported, rel_tol=1e-6, abs_tol=1e-9):
    raise CompareError(f"{evaluation.workdir}: {metric} recomputed from its per-example "
                       f"predictions is {value!r}, the run reported {reported!r}")


def compare(paths: list[pathlib.Path], **options) -> dict[str, Any]:
  """Every system of `paths` (run workdirs, sweep folders) against the first; returns
  compare.json's record (`compare_systems`)."""
  return compare_systems([s for path in paths for s in systems_of(pathlib.Path(path))],
                         **options)


def compare_systems(systems: list[System], *, split: str | None = None,
                    metric: str | None = None, samples: int = 10_000, seed: int = 0,
                    checkpoint: str = "final", aso_iterations: int = 1000,
                    progress=print) -> dict[str, Any]:
  """Every system against the first on `split` (default: the first's first eval split), for
  `metric` or every metric of the task; returns compare.json's record."""
  if len(systems) < 2:
    raise CompareError(f"{len(systems)} system given: a comparison needs at least two (two "
                       "runs, or a sweep of two settings)")
  if samples < MIN_SAMPLES:
    raise CompareError(f"--samples {samples}: at least {MIN_SAMPLES} (a 95% interval's 2.5% "
                       "tails need 40; a permutation p is never below 2/(samples + 1))")
  first_run = systems[0].runs[0]
  config = _read_json(first_run / "config.json")
  split = split or config["data"]["eval_splits"][0]
  for system in systems:
    system.evaluations = [load_evaluation(w, split, checkpoint) for w in system.runs]
  everything = [e for s in systems for e in s.evaluations]
  check_same_examples(everything, split)
  task = everything[0].task
  kind = _kind(task)
  if kind is None or kind.compare_units is None:
    raise CompareError(f"{first_run}: runs of kind {task['kind']} cannot be compared")
  units = kind.compare_units
  notes = [f"{e.workdir} was pruned by its tuner at step {e.pruned_at}: its training did not "
           "finish" for e in everything if e.pruned_at is not None]
  sources: dict[str, Evaluation] = {}  # each file, and the first run that read it
  for e in everything:
    if e.source is not None:
      sources.setdefault(e.source, e)
  if len(sources) > 1:  # copies of one file, or other texts with the same gold labels
    notes.append(f"the runs read {split} from different files ("
                 + "; ".join(f"{e.workdir}: {source}" for source, e in sources.items())
                 + "): compared as the same examples, since their gold labels agree")
  if metric:
    names = [metric]
  else:
    names = [m for m in task["metrics"] if m not in kind.uncomparable]
    notes += [f"{m} is not compared: {kind.uncomparable[m]}" for m in task["metrics"]
              if m in kind.uncomparable]
  baseline = systems[0]
  n = len(baseline.evaluations[0].examples["gold"])
  available = scorers(baseline.evaluations[0], baseline.evaluations[0])
  for name in names:
    if name not in available:
      why = kind.uncomparable.get(name, f"not a metric of {task['kind']} runs (they have: "
                            f"{', '.join(available)})")
      raise CompareError(f"--metric {name}: cannot be compared: {why}")
    missing = [e.workdir for e in everything if name not in e.reported]
    if missing:
      raise CompareError(f"{missing[0]} did not report {name} on {split} (it reports: "
                         f"{', '.join(e for e in everything[0].reported if e != 'loss')})")
  comparisons = []
  total = (len(systems) - 1) * len(names)
  done = 0
  for system in systems[1:]:
    pairs = seed_pairs(system.evaluations, baseline.evaluations)
    if (len(pairs) < max(len(system.evaluations), len(baseline.evaluations))
        or any(a.seed != b.seed for a, b in pairs)):
      notes.append(f"{system.name} has seeds {', '.join(str(e.seed) for e in system.evaluations)}"
                   f", the baseline {', '.join(str(e.seed) for e in baseline.evaluations)}: "
                   f"{len(pairs)} pair(s) compared example by example "
                   f"({', '.join(f'{a.seed} vs {b.seed}' for a, b in pairs)})")
    by_pair = [scorers(a, b) for a, b in pairs]
    for name in names:
      done += 1
      progress(f"[{done}/{total}] {system.name} vs {baseline.name}: {name} on {split}, "
               f"{len(pairs)} seed pair(s), {n} {units}, {samples} resamples")
      rows = []
      for (a, b), scores in zip(pairs, by_pair):
        result = paired_tests(scores[name], n, samples=samples, seed=seed)
        _check_reported(a, name, result["system"])
        _check_reported(b, name, result["baseline"])
        rows.append({"system_seed": a.seed, "baseline_seed": b.seed, **result})
      over_seeds = None
      if len(system.evaluations) > 1 and len(baseline.evaluations) > 1:
        over_seeds = seed_tests([e.reported[name] for e in system.evaluations],
                                [e.reported[name] for e in baseline.evaluations], seed=seed,
                                aso_iterations=aso_iterations)
      comparisons.append({"system": system.name, "baseline": baseline.name, "metric": name,
                          "pairs": rows, "seeds": over_seeds})
  # Holm over the comparisons with the baseline: per metric, seed pair and test.
  for name in names:
    group = [c for c in comparisons if c["metric"] == name]
    for i in range(max(len(c["pairs"]) for c in group)):
      tested = [c["pairs"][i] for c in group if i < len(c["pairs"])]
      for row, adjusted in zip(tested, holm([r["p"] for r in tested])):
        row["p_holm"] = adjusted
    seeded = [c["seeds"] for c in group if c["seeds"]]
    for row, adjusted in zip(seeded, holm([s["welch_p"] for s in seeded])):
      row["welch_p_holm"] = adjusted
  for c in comparisons:
    if c["seeds"] and "aso_error" in c["seeds"]:
      notes.append(f"almost stochastic order not computed: {c['seeds']['aso_error']}")
      break
  return {"split": split, "checkpoint": checkpoint, "units": units, "n": n,
          "samples": samples, "seed": seed, "confidence": CONFIDENCE,
          "baseline": baseline.name,
          "systems": [{"name": s.name, "runs": [{"workdir": str(e.workdir), "seed": e.seed,
                                                 "step": e.step} for e in s.evaluations]}
                      for s in systems],
          "comparisons": comparisons, "notes": notes}


def _pct(value: float) -> str:
  return f"{100 * value:.2f}"


def _p(value: float | None) -> str:
  if value is None:
    return "—"
  return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def render(record: dict[str, Any]) -> str:
  """The markdown tables of a comparison (metrics x 100)."""
  lines = [f"# Comparison on {record['split']} ({record['checkpoint']} evaluation)", "",
           f"Baseline: {record['baseline']}. Metrics ×100; difference = system − baseline; "
           f"{100 * record['confidence']:.0f}% paired bootstrap percentile interval and paired "
           f"permutation p over {record['n']} {record['units']}, {record['samples']} resamples "
           f"each, seed {record['seed']}; Holm over the {len(record['systems']) - 1} "
           "comparison(s) with the baseline.", "",
           "| system | metric | seeds | system | baseline | difference | 95% CI | p | p Holm |",
           "|---|---|---|---|---|---|---|---|---|"]
  for c in record["comparisons"]:
    for row in c["pairs"]:
      lines.append(f"| {c['system']} | {c['metric']} | {row['system_seed']} vs "
                   f"{row['baseline_seed']} | {_pct(row['system'])} | {_pct(row['baseline'])} "
                   f"| {_pct(row['difference'])} | [{_pct(row['ci'][0])}, {_pct(row['ci'][1])}]"
                   f" | {_p(row['p'])} | {_p(row['p_holm'])} |")
  seeded = [c for c in record["comparisons"] if c["seeds"]]
  if seeded:
    lines += ["", "Over seeds (each run's reported score): Welch's t-test; almost stochastic "
              "order's ε_min of 'the system is better' (< 0.5: it is; deepsig).", "",
              "| system | metric | seeds | system mean | baseline mean | difference | Welch t "
              "| p | p Holm | ASO ε_min |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in seeded:
      s = c["seeds"]
      aso = f"{s['aso_epsilon_min']:.3f}" if "aso_epsilon_min" in s else "—"
      lines.append(f"| {c['system']} | {c['metric']} | {len(s['system'])} vs "
                   f"{len(s['baseline'])} | {_pct(np.mean(s['system']))} | "
                   f"{_pct(np.mean(s['baseline']))} | {_pct(s['difference'])} | "
                   f"{'—' if s['welch_t'] is None else format(s['welch_t'], '.2f')} | "
                   f"{_p(s['welch_p'])} | {_p(s['welch_p_holm'])} | "
                   f"{aso} |")
  if record["notes"]:
    lines += [""] + [f"Note: {note}." for note in record["notes"]]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("paths", nargs="+", type=pathlib.Path,
                      help="run workdirs or sweep folders; the first system is the baseline")
  parser.add_argument("--split", help="the split to compare on (default: the runs' first "
                      "eval split)")
  parser.add_argument("--metric", help="one metric (default: every metric of the task)")
  parser.add_argument("--samples", type=int, default=10_000,
                      help="bootstrap and permutation resamples (default 10000)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the resampling (and of ASO)")
  parser.add_argument("--aso-iterations", type=int, default=1000,
                      help="bootstrap iterations of almost stochastic order (deepsig's default)")
  parser.add_argument("--checkpoint", choices=("final", "best"), default="final",
                      help="the runs' last evaluation (default) or their best checkpoint's")
  parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("."),
                      help="folder of compare.md and compare.json (default: here)")
  parser.add_argument("--debug", action="store_true",
                      default=os.environ.get("RESEARCH_DEBUG") == "1",
                      help="errors end with their traceback (also RESEARCH_DEBUG=1)")
  args = parser.parse_args(argv)
  from research import writers
  try:
    record = compare(args.paths, split=args.split, metric=args.metric, samples=args.samples,
                     seed=args.seed, checkpoint=args.checkpoint,
                     aso_iterations=args.aso_iterations,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    text = render(record)
    writers.write_text(args.output / "compare.json", json.dumps(record, indent=1) + "\n")
    writers.write_text(args.output / "compare.md", text)
  except (CompareError, metrics.MetricError, writers.WorkdirError) as e:
    if args.debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
