r"""Summarises a sweep: one row per setting, metrics as mean ± std over seeds, plots.

  python -m research.report runs/rte_lr [--out experiments/<name>/]

Reads every sub-workdir of the sweep (its config.json, results.json and metrics.jsonl) and
writes into the sweep folder:
  results.csv / results.md   per setting (the overrides other than the seed): n seeds, each
                             task metric of the first eval split at the last step as mean ± std
                             with a 95% t-interval, the best checkpoint's metric and step, the
                             training time; the best setting by `eval.best_metric` is marked ★;
                             below it, the pooled seed std against the std of the setting means
                             and a one-way ANOVA (is the spread more than seed noise?); then
                             the task metrics of every other split the runs evaluated (test);
                             then every setting against the best on the main metric, seed by
                             seed, over the same examples (research.compare: the difference,
                             its paired bootstrap interval, permutation and Welch p-values,
                             Holm-corrected)
  metric_vs_<key>.png        the main metric against each swept value, ± one std
  learning_curves.png        train loss and dev metric against the step, mean over seeds

Below the table: the code (git commit) and package versions the runs were made with, from
each run's run.json; a warning (also on stderr) when the runs of one table differ in either.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib
import statistics
import sys
from typing import Any

from research.hyper import SEED


def _load_runs(sweep_dir: pathlib.Path) -> list[dict[str, Any]]:
  sweep_file = sweep_dir / "sweep.json"
  if sweep_file.exists():
    points = json.loads(sweep_file.read_text())["points"]
  else:  # a folder of runs made by hand: no overrides known
    points = [{"name": p.parent.name, "overrides": {}}
              for p in sorted(sweep_dir.glob("*/results.json"))]
  runs = []
  for point in points:
    workdir = sweep_dir / point["name"]
    if not (workdir / "results.json").exists():
      continue
    metrics_path = workdir / "metrics.jsonl"
    record_path = workdir / "run.json"
    runs.append({
        "record": json.loads(record_path.read_text()) if record_path.exists() else None,
        "name": point["name"], "overrides": point["overrides"],
        "config": json.loads((workdir / "config.json").read_text()),
        "results": json.loads((workdir / "results.json").read_text()),
        "curve": [json.loads(line) for line in metrics_path.read_text().splitlines()]
                 if metrics_path.exists() else []})
  return runs


def t_quantile_975(dof: int) -> float:
  from scipy import stats
  return float(stats.t.ppf(0.975, dof))


def summarize(values: list[float]) -> dict[str, float]:
  """Mean, sample std, n and the 95% t confidence interval of the mean."""
  n = len(values)
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if n > 1 else 0.0
  half = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
  return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def setting_of(run: dict[str, Any]) -> str:
  """The overrides other than the seed; for runs made by hand (no sweep.json), the folder name
  without its `seed=K` part, so that `lr=0.01,seed=0` and `lr=0.01,seed=1` are one setting."""
  if run["overrides"]:
    setting = ",".join(f"{k.removeprefix('config.')}={v}" for k, v in run["overrides"].items()
                       if k != SEED)
  else:
    setting = ",".join(part for part in run["name"].split(",") if not part.startswith("seed="))
  return setting or "(single setting)"


def final_value(run: dict[str, Any], split: str, metric: str) -> float:
  return run["results"]["final"]["results"][split][metric]


def aggregate(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Rows per setting, and facts about the whole sweep (metrics, best row, variance split)."""
  if not runs:
    raise SystemExit("error: no finished run in this folder (no */results.json)")
  config = runs[0]["config"]
  split = config["data"]["eval_splits"][0]
  metrics = list(config["task"]["metrics"])
  main = config["eval"]["best_metric"]
  other_splits = [s for s in dict.fromkeys(s for run in runs
                                           for s in run["results"]["final"]["results"])
                  if s != split]
  groups: dict[str, list] = collections.defaultdict(list)
  for run in runs:
    groups[setting_of(run)].append(run)
  rows = []
  for setting, members in groups.items():
    row = {"setting": setting, "overrides": {k: v for k, v in members[0]["overrides"].items()
                                             if k != SEED}, "n": len(members)}
    for metric in dict.fromkeys(metrics + [main]):
      row[metric] = summarize([final_value(r, split, metric) for r in members])
    row["other_splits"] = {}  # {split: {metric: summary, or None where no run evaluated it}}
    for other in other_splits:
      evaluated = [r for r in members if other in r["results"]["final"]["results"]]
      row["other_splits"][other] = {
          m: summarize([final_value(r, other, m) for r in evaluated]) if evaluated else None
          for m in metrics}
    bests = [r["results"]["best"] for r in members if r["results"].get("best")]
    row["best_checkpoint"] = summarize([b["value"] for b in bests]) if bests else None
    row["best_step"] = statistics.fmean(b["step"] for b in bests) if bests else float("nan")
    row["train_minutes"] = statistics.fmean(r["results"]["train"]["train_seconds"] / 60
                                            for r in members)
    row["examples_per_s"] = statistics.fmean(
        r["results"]["train"]["examples"] / r["results"]["train"]["train_seconds"]
        for r in members)
    row["trainable"] = members[0]["results"].get("params", {}).get("trainable")
    row["runs"] = members
    rows.append(row)
  sign = -1 if main == "loss" else 1
  best = max(rows, key=lambda r: sign * r[main]["mean"])
  # How much of the spread is seeds: pooled within-setting std vs the std of setting means, and
  # a one-way ANOVA (are the settings' differences larger than seed noise explains?).
  seeded = [[final_value(run, split, main) for run in r["runs"]] for r in rows if r["n"] > 1]
  within = [statistics.variance(values) for values in seeded]
  code_lines, code_warnings = provenance(runs)
  facts = {"split": split, "other_splits": other_splits, "metrics": metrics, "main": main,
           "best": best["setting"],
           "code": code_lines, "warnings": code_warnings,
           "seed_std": math.sqrt(statistics.fmean(within)) if within else float("nan"),
           "setting_std": statistics.stdev([r[main]["mean"] for r in rows])
           if len(rows) > 1 else float("nan"),
           "anova": one_way_anova(seeded) if len(seeded) > 1 else None}
  return rows, facts


def _code_of(session: dict[str, Any]) -> str:
  code = session.get("code") or {}
  if not code.get("commit"):
    return "no git commit"
  text = code["commit"][:12]
  if code.get("dirty"):
    text += f" + uncommitted changes ({code.get('diff_sha256') or 'untracked files'})"
  return text


def provenance(runs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
  """Lines naming the code and package versions behind the runs (every session of each,
  resumed ones included), and warnings where the runs differ."""
  records = [r["record"] for r in runs if r.get("record")]
  lines, warnings = [], []
  if len(records) < len(runs):
    warnings.append(f"{len(runs) - len(records)} of {len(runs)} runs have no run.json: their "
                    "code and versions are unknown")
  if not records:
    return lines, warnings
  codes = collections.Counter(_code_of(s) for rec in records for s in rec["sessions"])
  versions: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for rec in records:
    for session in rec["sessions"]:
      for name, version in session["packages"].items():
        versions[name][version] += 1
  lines.append("Code: " + "; ".join(f"{c} ({n} sessions)" if len(codes) > 1 else c
                                    for c, n in codes.most_common()))
  lines.append("Versions: " + ", ".join(
      f"{name} {'/'.join(str(v) for v in counts)}" for name, counts in versions.items()))
  if len(codes) > 1:
    warnings.append(f"the runs were made with {len(codes)} different code versions: "
                    + "; ".join(codes))
  differing = [f"{name} {sorted(map(str, counts))}" for name, counts in versions.items()
               if len(counts) > 1]
  if differing:
    warnings.append("the runs were made with different package versions: "
                    + ", ".join(differing))
  return lines, warnings


def one_way_anova(groups: list[list[float]]) -> dict[str, float]:
  """F statistic and p-value of 'all settings have the same mean' (seeds as replicates)."""
  from scipy import stats
  result = stats.f_oneway(*groups)
  return {"F": float(result.statistic), "p": float(result.pvalue),
          "df_between": len(groups) - 1, "df_within": sum(len(g) for g in groups) - len(groups)}


def _fmt(s: dict[str, float] | None, scale: float = 100.0) -> str:
  if s is None:
    return "—"
  if s["n"] == 1:  # one seed: no spread to show
    return f"{scale * s['mean']:.2f}"
  return f"{scale * s['mean']:.2f} ± {scale * s['std']:.2f}"


def write_tables(sweep_dir: pathlib.Path, rows, facts) -> str:
  metrics, main = facts["metrics"], facts["main"]
  scale = lambda m: 1.0 if m == "loss" else 100.0  # noqa: E731
  others = [(split, m) for split in facts["other_splits"] for m in metrics]
  header = (["setting", "n"] + [f"{m} (mean ± std)" for m in metrics]
            + [f"{main} 95% CI", f"best-checkpoint {main}", "best step", "trainable params",
               "train examples/s", "train min"] + [f"{split} {m}" for split, m in others])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  csv = ["setting,n," + ",".join(f"{m}_mean,{m}_std,{m}_ci_low,{m}_ci_high" for m in metrics)
         + ",best_checkpoint_mean,best_step,trainable,examples_per_s,train_minutes"
         + "".join(f",{split}_{m}_mean,{split}_{m}_std" for split, m in others)]
  for row in sorted(rows, key=lambda r: r["setting"]):
    mark = " ★" if row["setting"] == facts["best"] else ""
    s = row[main]
    lines.append("| " + " | ".join(
        [f"{row['setting']}{mark}", str(row["n"])]
        + [_fmt(row[m], scale(m)) for m in metrics]
        + [f"[{scale(main) * s['ci_low']:.2f}, {scale(main) * s['ci_high']:.2f}]"
           if s["n"] > 1 else "—",
           _fmt(row["best_checkpoint"], scale(main)), f"{row['best_step']:.0f}",
           f"{row['trainable']:,}" if row["trainable"] else "—",
           f"{row['examples_per_s']:.1f}", f"{row['train_minutes']:.1f}"]
        + [_fmt(row["other_splits"][split][m], scale(m)) for split, m in others]) + " |")
    csv.append(f"\"{row['setting']}\",{row['n']},"
               + ",".join(f"{row[m]['mean']},{row[m]['std']},{row[m]['ci_low']},"
                          f"{row[m]['ci_high']}" for m in metrics)
               + f",{row['best_checkpoint']['mean'] if row['best_checkpoint'] else ''},"
                 f"{row['best_step']},{row['trainable'] or ''},{row['examples_per_s']},"
                 f"{row['train_minutes']}"
               + "".join(f",{s['mean']},{s['std']}" if s else ",,"
                         for s in (row["other_splits"][split][m] for split, m in others)))
  text = "\n".join(lines) + "\n"
  summary = (f"\nMetrics ×100 at the last step, on `{facts['split']}` unless a column names "
             f"another split; ★ = best mean {main}. "
             f"Spread of {main}: seed std within a setting (pooled) "
             f"{_hundred(facts['seed_std'])}, std of the setting means "
             f"{_hundred(facts['setting_std'])}")
  anova = facts["anova"]
  if anova:
    summary += (f"; one-way ANOVA over the settings with ≥ 2 seeds: "
                f"F({anova['df_between']}, {anova['df_within']}) = {anova['F']:.2f}, "
                f"p = {anova['p']:.3g}")
  summary += ".\n"
  summary += paired_text(facts.get("paired"), main)
  if facts["code"]:
    summary += "\n" + "\n".join(f"{line}  " for line in facts["code"]) + "\n"
  for warning in facts["warnings"]:
    summary += f"\n**Warning:** {warning}.\n"
  (sweep_dir / "results.md").write_text("# Sweep results\n\n" + text + summary)
  (sweep_dir / "results.csv").write_text("\n".join(csv) + "\n")
  return text + summary


PAIRED_SAMPLES = 2000  # resamples of the report's paired tests (research.compare: 10000)


def paired_tests(sweep_dir: pathlib.Path, rows, facts) -> dict[str, Any] | str | None:
  """research.compare's record of every setting against the best on the main metric of the
  first eval split, or why it could not be made (runs without per-example predictions); None
  for a single setting."""
  from research import compare, metrics
  if len(rows) < 2:
    return None
  best = next(r for r in rows if r["setting"] == facts["best"])
  systems = [compare.System(r["setting"], [
      sweep_dir / run["name"] for run in sorted(r["runs"],
                                                key=lambda run: run["config"].get("seed", 0))])
      for r in [best] + [r for r in rows if r is not best]]
  try:
    return compare.compare_systems(systems, split=facts["split"], metric=facts["main"],
                                   samples=PAIRED_SAMPLES, aso_iterations=0,
                                   progress=lambda line: None)
  except (compare.CompareError, metrics.MetricError) as e:
    return str(e)


def paired_text(record: dict[str, Any] | str | None, main: str) -> str:
  if record is None:
    return ""
  if isinstance(record, str):
    return f"\nPaired tests against the best setting: not computed: {record}.\n"
  lines = [f"\nPaired tests against the best setting ★ on `{record['split']}` ({main} ×100; "
           f"per seed pair over the same {record['n']} {record['units']}: the difference, its "
           f"95% paired bootstrap interval and permutation p, {record['samples']} resamples; "
           "Welch's t-test over seeds; p Holm-corrected over the settings; "
           "`python -m research.compare` for every metric and ASO). The best setting was "
           "chosen on this same split, so these tests favour it (Holm corrects for the number "
           "of comparisons, not for that choice): confirm a difference on a split the choice "
           "did not see:", "",
           "| setting | seeds | difference | 95% CI | p | p Holm | Welch p | Welch p Holm |",
           "|---|---|---|---|---|---|---|---|"]
  for c in record["comparisons"]:
    seeds = c["seeds"]
    for i, row in enumerate(c["pairs"]):
      welch = (" | ".join("—" if p is None else f"{p:.3g}"
                          for p in (seeds["welch_p"], seeds["welch_p_holm"]))
               if seeds and i == 0 else " | ")
      lines.append(f"| {c['system']} | {row['system_seed']} vs {row['baseline_seed']} | "
                   f"{100 * row['difference']:.2f} | [{100 * row['ci'][0]:.2f}, "
                   f"{100 * row['ci'][1]:.2f}] | {row['p']:.3g} | {row['p_holm']:.3g} | "
                   f"{welch} |")
  if record["notes"]:  # e.g. the seeds without a pair
    lines += [""] + [f"Note: {note}." for note in record["notes"]]
  return "\n".join(lines) + "\n"


def _hundred(value: float) -> str:
  return "—" if math.isnan(value) else f"{100 * value:.2f}"


def _tied(rows, key: str, other: str) -> bool:
  """Whether `other` takes one value per value of `key` in these rows (zipped sweeps)."""
  seen: dict[str, set] = collections.defaultdict(set)
  for row in rows:
    seen[repr(row["overrides"][key])].add(repr(row["overrides"].get(other)))
  return all(len(values) == 1 for values in seen.values())


def write_plots(sweep_dir: pathlib.Path, rows, facts) -> list[pathlib.Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  main, split = facts["main"], facts["split"]
  written = []
  keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
  for key in keys:
    # One line per combination of the other swept values, leaving out those zipped with `key`
    # (one value per value of `key`) and rows of a chained sweep that do not sweep `key`.
    swept = [r for r in rows if key in r["overrides"]]
    others = [k for k in keys if k != key and not _tied(swept, key, k)]
    lines: dict[str, list] = collections.defaultdict(list)
    for row in swept:
      label = ",".join(f"{k.split('.')[-1]}={row['overrides'][k]}" for k in others
                       if k in row["overrides"])
      lines[label or main].append((row["overrides"][key], row[main]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(lines.items()):
      points.sort(key=lambda p: p[0])
      numeric = all(isinstance(p[0], (int, float)) for p in points)
      ax.errorbar([str(p[0]) for p in points], [p[1]["mean"] for p in points],
                  yerr=[p[1]["std"] for p in points], marker="o", capsize=3, label=label,
                  linestyle="-" if numeric else "none")  # no lines between categories
    ax.set_xlabel(key.removeprefix("config."))
    ax.set_ylabel(f"{main} ({split}), mean ± std over seeds")
    if len(lines) > 1:
      ax.legend(fontsize="small")
    fig.tight_layout()
    path = sweep_dir / f"metric_vs_{key.removeprefix('config.').replace('.', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
  fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for row in sorted(rows, key=lambda r: r["setting"]):
    for ax, split_name, field in ((loss_ax, "train", "loss"), (metric_ax, split, main)):
      by_step: dict[int, list] = collections.defaultdict(list)
      for run in row["runs"]:
        for entry in run["curve"]:
          if entry["split"] == split_name and field in entry:
            by_step[entry["step"]].append(entry[field])
      xs = sorted(by_step)
      ax.plot(xs, [statistics.fmean(by_step[x]) for x in xs], label=row["setting"],
              # a line alone draws nothing for a run that logged one point
              marker="o" if split_name != "train" or len(xs) == 1 else None, markersize=3)
  loss_ax.set(xlabel="step", ylabel="train loss (mean over seeds)")
  metric_ax.set(xlabel="step", ylabel=f"{main} on {split} (mean over seeds)")
  metric_ax.legend(fontsize="x-small")
  fig.tight_layout()
  path = sweep_dir / "learning_curves.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return written + [path]


def write_report(sweep_dir: pathlib.Path, out_dir: pathlib.Path | None = None) -> str:
  """Tables and plots of the sweep in `sweep_dir`, written to `out_dir` (default: the same)."""
  out_dir = out_dir or sweep_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  rows, facts = aggregate(_load_runs(sweep_dir))
  facts["paired"] = paired_tests(sweep_dir, rows, facts)
  for warning in facts["warnings"]:
    print(f"warning: {warning}", file=sys.stderr)
  text = write_tables(out_dir, rows, facts)
  write_plots(out_dir, rows, facts)
  return text


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("sweep_dir", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="write the tables and plots here instead (e.g. experiments/<name>/)")
  args = parser.parse_args(argv)
  print(write_report(args.sweep_dir, args.out))


if __name__ == "__main__":
  main()
