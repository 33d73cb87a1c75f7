r"""SemEval-2010 Task 8 on the embedded MiniLM: representation x entity markers, 3 seeds each.

  python experiments/relation_extraction/run.py                 # every run not yet finished
  python experiments/relation_extraction/run.py --report        # only rebuild results.md
  python experiments/relation_extraction/run.py --settings entity_start --seeds 0

Each setting is configs/semeval2010_task8.py with one config argument changed (SETTINGS); the
recipe is that config's: 3 epochs of the 7,200 training rows left after holding out 800
(stratified, the same for every seed) for picking the best checkpoint, batch 32, peak lr 1e-4,
10% warm-up then linear decay. The test set (2,717) is scored at the checkpoint that is best
on the held-out rows, with the official measure (metrics.relation_scores, checked against the
official scorer's values in tests/test_relations.py).

Each finished run writes results/<setting>__seed<k>.json (committed: the best step, the
validation and test metrics there, and the validation curve); an interrupted run resumes from
its workdir under runs/relation_extraction/.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from experiments import reference, scaffold, seed_stats  # noqa: E402

RESULTS = HERE / "results"
RUNS = REPO / "runs" / "relation_extraction"
# setting -> (config argument, what it is)
SETTINGS = {
    "cls_no_markers": ("representation=cls,markers=0", "[CLS], no markers"),
    "cls_markers": ("representation=cls", "[CLS], with markers"),
    "entity_start": ("representation=entity_start", "entity start, with markers"),
    "entity_mean": ("representation=entity_mean", "entity mean, with markers"),
}
SEEDS = (0, 1, 2)
BASELINE = "cls_no_markers"  # the plain sentence classifier every other setting is tested against
BASELINE_NAME = SETTINGS[BASELINE][1]
# Which of these runs could be compared example by example (results.md says it).
PAIRED_TESTS = (
    "Every setting trains through `research.train`, which now writes every evaluation's "
    "per-example predictions into the run's workdir (`runs/relation_extraction/"
    "<setting>__seed<k>/eval/test_step<N>_per_example.json` for each evaluated step; "
    "workdirs are kept, not committed); the Trainer reference keeps none, so ours and the "
    "Trainer are compared over seeds only. A finished run is skipped (its results/*.json) and "
    "a finished workdir read back, so remove both and rerun: `rm "
    "experiments/relation_extraction/results/entity_start__seed0.json; rm -r "
    "runs/relation_extraction/entity_start__seed0; python experiments/relation_extraction/"
    "run.py --settings entity_start --seeds 0` (and the same for the baseline); then `python "
    "-m research.compare runs/relation_extraction/cls_no_markers__seed0 "
    "runs/relation_extraction/entity_start__seed0 --split test --checkpoint best` tests a "
    "setting against the baseline on the same test sentences at the checkpoint this table "
    "reports.")


def run_workdir(setting: str, seed: int) -> pathlib.Path:
  return RUNS / f"{setting}__seed{seed}"


def run(setting: str, seed: int) -> dict:
  from configs import semeval2010_task8
  from research import train
  config = semeval2010_task8.get_config(SETTINGS[setting][0])
  config.seed = seed
  summary = train.train_and_evaluate(config, run_workdir(setting, seed))
  curve = [json.loads(line) for line in
           (run_workdir(setting, seed) / "metrics.jsonl").read_text().splitlines()]
  curve = [{"step": r["step"], "relation_f1": r["relation_f1"]} for r in curve
           if r.get("split") == "validation"]
  best = summary["best"]
  return {"setting": setting, "seed": seed, "config_arg": SETTINGS[setting][0],
          "best_step": best["step"], "steps": summary["train"]["steps"],
          "validation": best["results"]["validation"], "test": best["results"]["test"],
          "final_test": summary["final"]["results"]["test"],
          "validation_curve": curve, "train_seconds": summary["train"]["train_seconds"]}


def run_reference(setting: str, seed: int) -> dict:
  """transformers' BertModel with the same head, trained by the Trainer on our inputs (the
  same marker tokens, windows and entity spans) in our batch order, for all epochs; the test
  set scored after the last step (the Trainer picks no checkpoint), next to ours there."""
  import datasets
  import numpy as np
  import torch
  import transformers
  from configs import semeval2010_task8
  from research import metrics, tasks
  from research.data import splits
  from research.models import builder, hf_io
  config = semeval2010_task8.get_config(SETTINGS[setting][0])
  config.seed = seed
  task = config.task
  assert task.representation == "entity_start" and task.entity_markers, setting
  setup = builder.build_model(config)
  epochs = int(config.train.num_epochs)

  def rows(split, order=None):
    encoded = splits.load_encoded(config.data, task, tasks.kind_of(task), setup.tokenizer, split)
    indices = np.arange(len(encoded)) if order is None else order
    return datasets.Dataset.from_dict({
        "input_ids": [encoded.input_ids[i, :encoded.lengths[i]].tolist() for i in indices],
        "entity_spans": encoded.entity_spans[indices].tolist(),
        "labels": encoded.labels[indices].tolist()}), encoded

  train_set, _ = rows(config.data.train_split, reference.our_train_order(config, epochs))

  def collate(batch):
    width = max(len(row["input_ids"]) for row in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    for i, row in enumerate(batch):
      ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(),
            "entity_spans": torch.tensor([row["entity_spans"] for row in batch]),
            "labels": torch.tensor([row["labels"] for row in batch])}

  workdir = RUNS / f"reference_{setting}__seed{seed}"
  transformers.set_seed(seed)
  model = reference.entity_start_classifier(str(hf_io.embedded_checkpoint_dir()),
                                           len(setup.tokenizer), len(task.label_names))
  trainer, clock = reference.train_in_our_order(model, config, seed, workdir, train_set, collate)
  test_set, test = rows("test")
  logits = trainer.predict(test_set).predictions
  predicted = np.asarray(logits).argmax(-1)
  scores = metrics.relation_scores(test.labels, predicted, tuple(task.label_names),
                                   task.no_relation_label)
  return {"setting": f"reference_{setting}", "seed": seed, "steps": trainer.state.global_step,
          "final_test": {"relation_f1": scores["official"]["f1-score"],
                         "accuracy": metrics.accuracy(test.labels, predicted)},
          "train_seconds": clock.seconds()}


def _mean_std(values: list[float]) -> str:
  return seed_stats.mean_std(values, scale=100, one_seed=" (1 seed)")


def _against_baseline(test: list[float], baseline: list[float], setting: str) -> list[str]:
  """The cells of a setting's test F1 (×100 per seed) against the baseline setting's: its
  interval, the difference of the means, Welch's p and ASO's epsilon_min."""
  if setting == BASELINE or not baseline:
    return [seed_stats.interval(test), "(baseline)" if baseline else "—", "—", "—"]
  return [seed_stats.interval(test), f"{statistics.mean(test) - statistics.mean(baseline):+.2f}",
          *seed_stats.p_and_epsilon(test, baseline)]


def _like_for_like_over_seeds(rows: list[dict], references: list[dict]) -> str:
  """Ours minus the Trainer on test official F1 after the last step, over their seeds."""
  ours = [100 * r["final_test"]["relation_f1"] for r in rows
          if f"reference_{r['setting']}" in {ref["setting"] for ref in references}]
  trainer = [100 * r["final_test"]["relation_f1"] for r in references]
  sides = "; ".join(f"{name} {len(v)} seed{'s' * (len(v) != 1)}, 95% CI {seed_stats.interval(v)}"
                    if len(v) > 1 else f"{name} {seed_stats.NO_INTERVAL}"
                    for name, v in (("ours", ours), ("the Trainer", trainer)))
  p_value, epsilon = seed_stats.p_and_epsilon(ours, trainer)
  return (f"Over seeds, test official F1 after the last step, the mean of ours minus the "
          f"Trainer's: {statistics.mean(ours) - statistics.mean(trainer):+.2f} ({sides}; Welch "
          f"p {p_value}, ASO ε {epsilon}).")


def report() -> str:
  every = scaffold.read_results(RESULTS)
  rows = [r for r in every if not r["setting"].startswith("reference_")]
  references = [r for r in every if r["setting"].startswith("reference_")]
  lines = ["# SemEval-2010 Task 8 on the embedded all-MiniLM-L6-v2", "",
           "Official measure: macro-F1 over the nine relations with directionality, `Other` "
           "excluded, in percent; test scored at the checkpoint best on the 800 held-out "
           "training rows. Mean ± standard deviation over seeds (each seed listed).", "",
           scaffold.commit_line(sorted(RESULTS.glob("*.json")), RESULTS), "",
           seed_stats.NOTE + f" On test official F1: each setting against {BASELINE_NAME} "
           "(its baseline).", "", seed_stats.paired_tests_note(PAIRED_TESTS), "",
           "| setting | seeds | test official F1 | test accuracy | held-out official F1 | "
           "test F1 per seed | test F1 95% CI | difference to baseline | Welch p | ASO ε |",
           "|---|---:|---:|---:|---:|---|---|---:|---:|---:|"]
  baseline = [100 * r["test"]["relation_f1"] for r in rows if r["setting"] == BASELINE]
  for setting, (_, name) in SETTINGS.items():
    runs = sorted((r for r in rows if r["setting"] == setting), key=lambda r: r["seed"])
    if not runs:
      continue
    test = [r["test"]["relation_f1"] for r in runs]
    lines.append(
        f"| {name} | {len(runs)} | {_mean_std(test)} | "
        f"{_mean_std([r['test']['accuracy'] for r in runs])} | "
        f"{_mean_std([r['validation']['relation_f1'] for r in runs])} | "
        + ", ".join(f"{100 * v:.2f}" for v in test) + " | "
        + " | ".join(_against_baseline([100 * v for v in test], baseline, setting)) + " |")
  epochs = max((len(r["validation_curve"]) for r in rows), default=0)
  lines += ["", "Held-out official F1 after each epoch (seed 0):", "",
            "| setting | " + " | ".join(f"epoch {i + 1}" for i in range(epochs)) + " |",
            "|---|" + "---:|" * epochs]
  for setting, (_, name) in SETTINGS.items():
    run0 = next((r for r in rows if r["setting"] == setting and r["seed"] == 0), None)
    if run0:
      lines.append(f"| {name} | " + " | ".join(f"{100 * p['relation_f1']:.2f}"
                                                for p in run0["validation_curve"]) + " |")
  if references:
    lines += ["", "Like for like: the same inputs (markers, windows, entity spans) and batches in "
              "the same order, test scored after the last step (the Trainer picks no "
              "checkpoint); transformers' BertModel with the same head, trained by its Trainer "
              "(AdamW, linear schedule, the same hyper-parameters):", "",
              "| system | seed | test official F1 | test accuracy | train seconds |",
              "|---|---:|---:|---:|---:|"]
    for ref in sorted(references, key=lambda r: r["seed"]):
      ours = next((r for r in rows if r["setting"] == ref["setting"][len("reference_"):]
                   and r["seed"] == ref["seed"]), None)
      for name, r in (("ours", ours), ("transformers + Trainer", ref)):
        if r:
          lines.append(f"| {name} | {r['seed']} | {100 * r['final_test']['relation_f1']:.2f} | "
                       f"{100 * r['final_test']['accuracy']:.2f} | {r['train_seconds']:.0f} |")
    lines += ["", _like_for_like_over_seeds(rows, references)]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
  scaffold.add_run_arguments(parser, list(SEEDS))
  parser.add_argument("--reference", action="store_true",
                      help="also run transformers' Trainer on the entity-start recipe")
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  RESULTS.mkdir(exist_ok=True)
  if not args.report:
    for seed in args.seeds:
      for setting in args.settings:
        out = RESULTS / f"{setting}__seed{seed}.json"
        if out.exists():
          continue
        scaffold.write_result(out, run(setting, seed), run_workdir(setting, seed))
        (HERE / "results.md").write_text(report())
    for seed in args.seeds if args.reference else ():
      out = RESULTS / f"reference_entity_start__seed{seed}.json"
      if not out.exists():
        scaffold.write_result(out, run_reference("entity_start", seed))  # no run.json
  (HERE / "results.md").write_text(report())
  print(report())


if __name__ == "__main__":
  main()
