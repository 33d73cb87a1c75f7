"""The tables and plot of experiments/tuning/results.md, from what run.sh left in studies/.

  python experiments/tuning/summarize.py      # after run.sh; prints the tables, writes the plot

Per search: the trials' outcomes, the training compute they spent (examples trained = steps x
batch size, summed over trials; pruned trials count the steps they trained), the best
validation accuracy it found and when. Per search's best config rerun with 5 new seeds: each
run's best checkpoint (picked on validation) scored on validation and on test, mean, std and
a 95% t-interval over the seeds. The paired tests over test examples are research.compare's
(compare/compare.md).
"""

import csv
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from experiments import seed_stats  # noqa: E402

SEARCHES = {"grid": "grid (BERT's lr × batch)", "quasi_random": "quasi-random",
            "tpe_asha": "TPE + ASHA"}


def trials(name: str) -> list[dict]:
  with (HERE / "studies" / name / "trials.csv").open() as file:
    rows = list(csv.DictReader(file))
  for row in rows:
    row["number"] = int(row["number"])
    row["examples"] = int(row["steps"] or 0) * int(row["train.batch_size"])
  return sorted(rows, key=lambda r: r["number"])


def progress(rows: list[dict]) -> tuple[list[float], list[float]]:
  """Best validation accuracy found so far after each trial (in the order they were asked),
  against the examples trained so far."""
  spent, best, xs, ys = 0, float("nan"), [], []
  for row in rows:
    spent += row["examples"]
    if row["state"] == "completed" and not (float(row["accuracy"]) <= best):
      best = float(row["accuracy"])
    xs.append(spent / 1e3)
    ys.append(best)
  return xs, ys


def interval(values: list[float]) -> str:
  """'mean ± std [95% interval]' of accuracies `values`, in percent."""
  percent = [100 * v for v in values]
  return f"{seed_stats.mean_std(percent)} {seed_stats.interval(percent)}"


def rerun_scores(name: str) -> dict[str, list[float]]:
  """{split: accuracy of each rerun's best checkpoint}."""
  scores = {"validation": [], "test": [], "test_final": []}
  for run in sorted((HERE / "studies" / name / "best").glob("seed=*")):
    results = json.loads((run / "results.json").read_text())
    step = results["best"]["step"]
    for split in ("validation", "test"):
      report = json.loads((run / "eval" / f"{split}_step{step}.json").read_text())
      scores[split].append(report["metrics"]["accuracy"])
    scores["test_final"].append(results["final"]["results"]["test"]["accuracy"])
  return scores


def main() -> None:
  lines = ["| search | trials (completed / pruned / failed) | examples trained (k) | train+eval "
           "time (trial-hours) | best validation acc. | found at trial | its config |",
           "|---|---|---|---|---|---|---|"]
  figure, axis = plt.subplots(figsize=(6.4, 4.0))
  for name, label in SEARCHES.items():
    rows = trials(name)
    counts = [sum(r["state"] == s for r in rows) for s in ("completed", "pruned", "failed")]
    completed = [r for r in rows if r["state"] == "completed"]
    best = max(completed, key=lambda r: float(r["accuracy"]))
    params = ", ".join(f"{k.split('.')[-1]}={float(best[k]):.3g}" for k in best
                       if k.startswith(("optimizer.", "train.")) and best[k])
    hours = sum(float(r["seconds"] or 0) for r in rows) / 3600
    lines.append(f"| {label} | {len(rows)} ({' / '.join(map(str, counts))}) | "
                 f"{sum(r['examples'] for r in rows) / 1e3:.1f} | {hours:.2f} | "
                 f"{100 * float(best['accuracy']):.2f} | {best['number']} | {params} |")
    xs, ys = progress(rows)
    axis.step(xs, [100 * y for y in ys], where="post", label=label, marker=".")
  axis.set_xlabel("training examples spent by the search (thousands)")
  axis.set_ylabel("best validation accuracy so far (%)")
  axis.set_title("MiniLM on RTE: best score found vs compute")
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  figure.savefig(HERE / "best_vs_compute.png", dpi=120)
  lines += ["", "| search's best config, 5 new seeds | validation (best checkpoint) | test "
            "(best checkpoint) | test (last step) |", "|---|---|---|---|"]
  for name, label in SEARCHES.items():
    scores = rerun_scores(name)
    lines.append(f"| {label} | {interval(scores['validation'])} | {interval(scores['test'])} | "
                 f"{interval(scores['test_final'])} |")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
