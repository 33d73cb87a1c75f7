r"""Continued masked-LM pretraining before fine-tuning ("Don't stop pretraining", Gururangan et
al., ACL 2020), on the embedded all-MiniLM-L6-v2, adapted to 2 CPU cores.

  python experiments/tapt/run.py                    # every run not yet finished, then results.md
  python experiments/tapt/run.py --report           # only rebuild results.md
  python experiments/tapt/run.py --settings rte --seeds 0
  python experiments/tapt/run.py --settings rte --arms direct --seeds 0   # re-run a baseline

Each setting (SETTINGS) continues the checkpoint once with `configs/mlm.py` on its corpus
(labels unused), exports the best checkpoint by held-out MLM loss, then fine-tunes that export
with the task's usual recipe for every seed (arm `adapted`), next to fine-tuning the embedded
checkpoint directly (arm `direct`). Both arms use the same fine-tuning config, seeds and batch
order; only `model.checkpoint` differs (the export keeps the source checkpoint's pooler, which
masked-LM training never touches, so the two also start from the same pooler).

The direct arm of RTE and STS-B is exactly experiments/glue_minilm's `ours` (the same config
from its `task_config`): those results are read from there unless this experiment has re-run
the seed itself (results/<setting>__direct__seed<k>.json), and the report says which seeds
were re-run and whether they reproduced glue_minilm's number.

Results: results/<setting>__mlm.json (the continued pretraining: held-out loss, masked-token
accuracy and perplexity after each epoch), results/<setting>__<arm>__seed<k>.json (committed);
workdirs under runs/tapt/ (not committed; an interrupted run resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from experiments import scaffold, seed_stats  # noqa: E402
from experiments.glue_minilm import run as glue_minilm  # noqa: E402

RESULTS = HERE / "results"
RUNS = REPO / "runs" / "tapt"
SEEDS = (0, 1, 2)
ARMS = ("direct", "adapted")
# Which of these runs could be compared example by example (results.md says it).
PAIRED_TESTS = (
    "Both arms train through `research.train`, which now writes every evaluation's per-example "
    "predictions into the run's workdir (`runs/tapt/<setting>/<arm>__seed<k>/eval/"
    "validation_step<N>_per_example.json`; the direct runs read from experiments/glue_minilm "
    "are in its workdirs, `runs/glue_minilm/<task>/ours_seed<k>`; workdirs are kept, not "
    "committed). A finished run is skipped (its results/*.json) and a finished workdir read "
    "back, so remove both and rerun: `rm experiments/tapt/results/rte__adapted__seed0.json; "
    "rm -r runs/tapt/rte/adapted__seed0; python experiments/tapt/run.py --settings rte --arms "
    "adapted --seeds 0`, and `--arms direct` for the direct arm (a direct seed of RTE or STS-B "
    "is then re-run here rather than read from glue_minilm); then `python -m research.compare "
    "runs/tapt/rte/direct__seed0 runs/tapt/rte/adapted__seed0 --split validation` tests the "
    "adapted arm against the direct one on the same examples, seed by seed.")


@dataclasses.dataclass(frozen=True)
class Setting:
  description: str
  mlm_arg: str                 # configs/mlm.py's argument: the corpus
  mlm_epochs: float
  task: str                    # the GLUE task fine-tuned
  metrics: tuple[str, ...]     # validation metrics reported, the first one tested
  train_examples: int = 0      # fine-tune on the first N training rows only (0: all)

  @property
  def from_glue_minilm(self) -> bool:
    """Whether the direct arm is experiments/glue_minilm's `ours` run (same config)."""
    return self.train_examples == 0


SETTINGS = {
    "rte": Setting("TAPT: MLM on RTE's 2,490 training pairs, fine-tune RTE", "task=rte", 6.0,
                   "rte", ("accuracy",)),
    "stsb": Setting("TAPT: MLM on STS-B's 5,749 training pairs, fine-tune STS-B", "task=stsb",
                    3.0, "stsb", ("pearson", "spearman")),
    "sst2_2k": Setting("DAPT-like: MLM on all 67,349 SST-2 training sentences (concatenated into "
                       "128-token rows), fine-tune on the first 2,000 labelled sentences",
                       "task=sst2,group", 1.0, "sst2", ("accuracy",), train_examples=2000),
}


def mlm_workdir(name: str) -> pathlib.Path:
  return RUNS / name / "mlm"


def continue_pretraining(name: str) -> pathlib.Path:
  """The setting's masked-LM run (resumed if interrupted) and its export; the export's path."""
  from configs import mlm
  from research import inference, train
  setting = SETTINGS[name]
  config = mlm.get_config(setting.mlm_arg)
  config.train.num_epochs = setting.mlm_epochs
  config.parallel.num_devices = 1
  workdir = mlm_workdir(name)
  export_dir = workdir / "export"
  if (export_dir / "config.json").exists():
    return export_dir
  summary = train.train_and_evaluate(config, workdir)
  inference.export(config, workdir, export_dir)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  curve = [{k: r[k] for k in ("step", "loss", "accuracy", "perplexity")}
           for r in rows if r.get("split") == "validation"]
  record = {"setting": name, "mlm_arg": setting.mlm_arg, "epochs": setting.mlm_epochs,
            "steps": summary["train"]["steps"], "best_step": summary["best"]["step"],
            "validation_curve": curve, "train_loss": glue_minilm.train_loss_curve(workdir),
            "train_seconds": summary["train"]["train_seconds"]}
  scaffold.write_result(RESULTS / f"{name}__mlm.json", record, workdir)
  return export_dir


def fine_tune_workdir(name: str, arm: str, seed: int) -> pathlib.Path:
  return RUNS / name / f"{arm}__seed{seed}"


def fine_tune(name: str, arm: str, seed: int) -> dict:
  from research import train
  setting = SETTINGS[name]
  config = glue_minilm.task_config(setting.task, seed, 3)
  config.data.train_examples = setting.train_examples
  if arm == "adapted":
    config.model.checkpoint = str(mlm_workdir(name) / "export")
  workdir = fine_tune_workdir(name, arm, seed)
  summary = train.train_and_evaluate(config, workdir)
  return {"setting": name, "arm": arm, "seed": seed, "checkpoint": config.model.checkpoint,
          "metrics": summary["final"]["results"],
          "train_loss": glue_minilm.train_loss_curve(workdir),
          "train_seconds": summary["train"]["train_seconds"]}


def result_path(name: str, arm: str, seed: int) -> pathlib.Path:
  return RESULTS / f"{name}__{arm}__seed{seed}.json"


def direct_path(name: str, seed: int) -> pathlib.Path | None:
  """The result file of this experiment's own direct run of `seed`, else of glue_minilm's
  identical one."""
  own = result_path(name, "direct", seed)
  if own.exists():
    return own
  setting = SETTINGS[name]
  shared = glue_minilm.result_path(setting.task, "ours", seed)
  if setting.from_glue_minilm and shared.exists():
    return shared
  return None


def direct_result(name: str, seed: int) -> dict | None:
  path = direct_path(name, seed)
  return None if path is None else json.loads(path.read_text())


def _score(values: list[float]) -> str:
  return seed_stats.mean_std(values, scale=100, count=True)


def _interval(values: list[float]) -> str:
  return seed_stats.interval([100 * v for v in values]) if values else "—"


def _results_shown() -> list[pathlib.Path]:
  """This experiment's result files and glue_minilm's that its direct arms read."""
  shared = {path for name in SETTINGS for seed in SEEDS
            if (path := direct_path(name, seed)) and not path.is_relative_to(RESULTS)}
  return sorted(RESULTS.glob("*.json")) + sorted(shared)


def report() -> str:
  lines = ["# Continued masked-LM pretraining (TAPT / DAPT) on the embedded all-MiniLM-L6-v2", "",
           "Generated by `python experiments/tapt/run.py --report`; README.md gives the recipe. "
           "Validation metrics ×100 after the last fine-tuning epoch, mean ± std (seeds); "
           "p: Welch's t-test of the two arms' seeds.", "",
           scaffold.commit_line(_results_shown(), RESULTS), "",
           seed_stats.NOTE + " The system is the adapted arm, the direct arm its baseline.", "",
           seed_stats.paired_tests_note(PAIRED_TESTS), "",
           "| setting | metric | direct fine-tuning | 95% CI | after continued MLM | 95% CI | "
           "gap | p | ASO ε | per seed: direct / adapted |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, setting in SETTINGS.items():
    direct = [r for s in SEEDS if (r := direct_result(name, s))]
    adapted = [json.loads(p.read_text()) for s in SEEDS
               if (p := result_path(name, "adapted", s)).exists()]
    if not (direct or adapted):
      continue
    for metric in setting.metrics:
      a = [r["metrics"]["validation"][metric] for r in direct]
      b = [r["metrics"]["validation"][metric] for r in adapted]
      gap = f"{100 * (statistics.mean(b) - statistics.mean(a)):+.2f}" if a and b else "—"
      p_value, epsilon = seed_stats.p_and_epsilon([100 * v for v in b], [100 * v for v in a])
      seeds = (", ".join(f"{100 * v:.2f}" for v in a) + " / "
               + ", ".join(f"{100 * v:.2f}" for v in b))
      lines.append(f"| {name} | {metric} | {_score(a)} | {_interval(a)} | {_score(b)} | "
                   f"{_interval(b)} | {gap} | {p_value} | {epsilon} | {seeds} |")
  lines += ["", "Settings:", ""]
  lines += [f"- **{name}**: {s.description}; {s.mlm_epochs:g} MLM epoch"
            f"{'s' if s.mlm_epochs != 1 else ''} "
            f"(`configs/mlm.py:{s.mlm_arg}`)" for name, s in SETTINGS.items()]
  lines += ["", "The continued pretraining, held-out masked-LM loss / masked-token accuracy "
            "(×100) / perplexity after each epoch (the best epoch by loss is exported):", "",
            "| setting | steps | train minutes | after each epoch |", "|---|---:|---:|---|"]
  for name in SETTINGS:
    path = RESULTS / f"{name}__mlm.json"
    if path.exists():
      r = json.loads(path.read_text())
      curve = "; ".join(f"{p['loss']:.3f} / {100 * p['accuracy']:.1f} / {p['perplexity']:.0f}"
                        for p in r["validation_curve"])
      lines.append(f"| {name} | {r['steps']} | {r['train_seconds'] / 60:.1f} | {curve} |")
  checks = []
  for name, setting in SETTINGS.items():
    for seed in SEEDS:
      own, shared = (result_path(name, "direct", seed),
                     glue_minilm.result_path(setting.task, "ours", seed))
      if setting.from_glue_minilm and own.exists() and shared.exists():
        metric = setting.metrics[0]
        mine, theirs = (json.loads(p.read_text())["metrics"]["validation"][metric]
                        for p in (own, shared))
        checks.append(f"- {name} seed {seed}: re-run here {100 * mine:.2f}, glue_minilm "
                      f"{100 * theirs:.2f} ({'identical' if mine == theirs else 'DIFFERENT'})")
  if checks:
    lines += ["", "Direct runs re-run here against experiments/glue_minilm's (the other seeds "
              "of RTE and STS-B are read from there):", ""] + checks
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
  scaffold.add_run_arguments(parser, list(SEEDS))
  parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  RESULTS.mkdir(exist_ok=True)
  if not args.report:
    for name in args.settings:
      # The continued pretraining is needed only while an adapted fine-tuning run is missing.
      if "adapted" in args.arms and not all(result_path(name, "adapted", s).exists()
                                            for s in args.seeds):
        continue_pretraining(name)
      for seed in args.seeds:
        for arm in args.arms:
          out = result_path(name, arm, seed)
          # A direct run that glue_minilm already has is re-run only when asked by --arms.
          if out.exists() or (arm == "direct" and args.arms == list(ARMS)
                              and direct_result(name, seed)):
            continue
          scaffold.write_result(out, fine_tune(name, arm, seed),
                                fine_tune_workdir(name, arm, seed))
          (HERE / "results.md").write_text(report())
  (HERE / "results.md").write_text(report())
  print(report())


if __name__ == "__main__":
  main()
