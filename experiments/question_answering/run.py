r"""Extractive QA on real SQuAD 2.0 questions: ours next to transformers' Trainer, like for like.

  python experiments/question_answering/run.py            # every run not yet finished
  python experiments/question_answering/run.py --settings answerable
  python experiments/question_answering/run.py --report   # only rebuild results.md

Offline, the shared data holds the first five articles of the SQuAD 2.0 dev set
(`squad_v2_dev5`, 1,407 questions, half unanswerable). Three articles (Normans,
Computational_complexity_theory, Southern_California: 950 questions) train, the other two
(Sky_(United_Kingdom), Victoria_(Australia): 457 questions) evaluate, so no evaluated context
was seen in training. Each setting (SETTINGS: all questions with SQuAD 2.0 semantics, or only
the answerable ones with 1.1 semantics) is configs/squad.py on this data with windows of 192
tokens (stride 64: the contexts are short, most fit one window, some answers are cut), lr 1e-4,
batch 32, on the embedded MiniLM (a sentence-embedding model, never trained for QA).

Systems (SYSTEMS): ours; `reference_our_order`: transformers' AutoModelForQuestionAnswering on
the same checkpoint, trained by its Trainer with the same hyper-parameters on exactly our
windows (the same token ids and start/end labels) in our batch order; its start/end logits
go through the same post-processing (research/squad.py, n-best 20, at most 30 tokens, null
threshold 0) and official scoring. Results: results/<system>__<setting>__seed<k>.json and
results.md.
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
RUNS = REPO / "runs" / "question_answering"
TRAIN_TITLES = ("Normans", "Computational_complexity_theory", "Southern_California")
SYSTEMS = ("ours", "reference_our_order")
# setting -> (SQuAD 2.0 semantics, epochs, what it is)
SETTINGS = {
    "v2": (True, 3.0, "all questions, SQuAD 2.0 (no-answer allowed), 3 epochs"),
    "answerable": (False, 10.0, "answerable questions only, SQuAD 1.1 (always a span), "
                                "10 epochs"),
}
SEEDS = (0,)
# Which of these runs could be compared example by example (results.md says it).
PAIRED_TESTS = (
    "Only ours trains through `research.train`, which now writes every evaluation's "
    "per-example predictions into the run's workdir (`runs/question_answering/"
    "ours__<setting>__seed<k>/eval/validation_step<N>_per_example.json`, each question's "
    "answer; workdirs are kept, not committed). The reference scores its answers with the same "
    "code but keeps none, so ours and the reference are compared over seeds only. A finished "
    "run is skipped (its results/*.json) and a finished workdir read back, so remove both and "
    "rerun: `rm experiments/question_answering/results/ours__answerable__seed0.json; rm -r "
    "runs/question_answering/ours__answerable__seed0; python "
    "experiments/question_answering/run.py --systems ours --settings answerable --seeds 0`; "
    "then `python -m research.compare <ours workdir> <another run's> --split validation` "
    "applies between two of our runs on these questions (a changed recipe against this "
    "one), resampling questions.")
SMOKE_EXAMPLES = 0  # --smoke: this many questions per split, one epoch (a check of the code)
METRICS = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact",
           "best_f1", "best_f1_thresh")


def data_folder(setting: str) -> pathlib.Path:
  """runs/question_answering/data_<setting>/{train,validation}.jsonl: the dev5 questions by
  article (only those with an answer for a SQuAD 1.1 setting)."""
  import os
  source = pathlib.Path(os.environ.get("RESEARCH_DATA_DIR", REPO.parent / "shared" / "data"))
  rows = [json.loads(line) for line in
          (source / "squad_v2_dev5" / "validation.jsonl").read_text().splitlines()]
  if not SETTINGS[setting][0]:
    rows = [r for r in rows if r["answers"]["text"]]
  out = RUNS / f"data_{setting}"
  out.mkdir(parents=True, exist_ok=True)
  for name, keep in (("train", True), ("validation", False)):
    (out / f"{name}.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in rows if (r["title"] in TRAIN_TITLES) == keep))
  return out


def experiment_config(setting: str, seed: int):
  from configs import squad
  v2, epochs, _ = SETTINGS[setting]
  config = squad.get_config("v2" if v2 else None)
  config.seed = seed
  config.data.dataset = str(data_folder(setting))
  config.data.local_name = ""
  config.data.max_length = 192
  config.data.length_buckets = (128, 192)
  config.task.doc_stride = 64
  config.train.num_epochs = epochs
  config.optimizer.learning_rate = 1e-4
  if SMOKE_EXAMPLES:
    config.data.train_examples = config.data.eval_examples = SMOKE_EXAMPLES
    config.train.num_epochs = 1.0
  return config


def ours_workdir(setting: str, seed: int) -> pathlib.Path:
  return RUNS / f"ours__{setting}__seed{seed}"


def run_ours(setting: str, seed: int) -> dict:
  from research import train
  config = experiment_config(setting, seed)
  workdir = ours_workdir(setting, seed)
  summary = train.train_and_evaluate(config, workdir)
  scores = json.loads((workdir / "eval" /
                       f"validation_step{summary['final']['step']}.json").read_text())
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {"system": "ours", "setting": setting, "seed": seed,
          "steps": summary["train"]["steps"],
          "scores": scores["report"]["scores"],
          "train_loss": {r["step"]: r["loss"] for r in logged if r["split"] == "train"},
          "eval_loss": summary["final"]["results"]["validation"]["loss"],
          "train_seconds": summary["train"]["train_seconds"]}


def run_reference(setting: str, seed: int) -> dict:
  import datasets
  import numpy as np
  import torch
  import transformers
  from research import squad, tasks
  from research.data import splits
  from research.models import builder, hf_io
  from research.tasks import question_answering
  config = experiment_config(setting, seed)
  setup = builder.build_model(config)
  epochs = int(config.train.num_epochs)

  def windows(split, order=None):
    limit = (config.data.train_examples if split == config.data.train_split
             else config.data.eval_examples)
    encoded = splits.load_encoded(config.data, config.task, tasks.kind_of(config.task),
                                  setup.tokenizer, split, limit)
    rows = np.arange(len(encoded)) if order is None else order
    return datasets.Dataset.from_dict({
        "input_ids": [encoded.input_ids[i, :encoded.lengths[i]].tolist() for i in rows],
        "token_type_ids": [encoded.token_type_ids[i, :encoded.lengths[i]].tolist()
                           for i in rows],
        "start_positions": encoded.labels[rows, 0].tolist(),
        "end_positions": encoded.labels[rows, 1].tolist()}), encoded

  train_set, _ = windows(config.data.train_split, reference.our_train_order(config, epochs))

  def collate(batch):
    width = max(len(row["input_ids"]) for row in batch)
    out = {k: torch.zeros(len(batch), width, dtype=torch.long)
           for k in ("input_ids", "token_type_ids", "attention_mask")}
    for i, row in enumerate(batch):
      n = len(row["input_ids"])
      out["input_ids"][i, :n] = torch.tensor(row["input_ids"])
      out["token_type_ids"][i, :n] = torch.tensor(row["token_type_ids"])
      out["attention_mask"][i, :n] = 1
    for k in ("start_positions", "end_positions"):
      out[k] = torch.tensor([row[k] for row in batch])
    return out

  workdir = RUNS / f"reference_our_order__{setting}__seed{seed}"
  transformers.set_seed(seed)
  model = transformers.AutoModelForQuestionAnswering.from_pretrained(
      str(hf_io.embedded_checkpoint_dir()))
  trainer, clock = reference.train_in_our_order(model, config, seed, workdir, train_set, collate)
  eval_set, encoded = windows("validation")
  output = trainer.predict(eval_set)
  train_loss = {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}
  start, end = output.predictions[:2] if isinstance(output.predictions, tuple) else (
      output.predictions[..., 0], output.predictions[..., 1])
  logits = np.full(encoded.input_ids.shape + (2,), -1e4, np.float32)  # padded to max_length
  logits[:, :start.shape[1], 0], logits[:, :end.shape[1], 1] = start, end
  predicted, _, null_odds = question_answering.answers(config.task, encoded, logits)
  gold = {e["id"]: e["answers"] for e in encoded.examples}
  scores = squad.squad_scores(predicted, gold, null_odds or None,
                              threshold=config.task.null_score_diff_threshold)
  return {"system": "reference_our_order", "setting": setting, "seed": seed,
          "steps": trainer.state.global_step,
          "scores": scores, "train_loss": train_loss,
          "eval_loss": float(output.metrics["test_loss"]), "train_seconds": clock.seconds()}


def _seed_summary(done: list[dict]) -> list[str]:
  """Each system's EM and F1 over its seeds (mean ± std, the 95% interval), and whether ours
  differs from the reference by more than the seeds do (Welch's t-test, almost stochastic
  order), once both have two seeds or more."""
  scores = {system: {m: [100 * r["scores"][m] for r in done if r["system"] == system]
                     for m in ("exact", "f1")} for system in SYSTEMS}
  seeds = {system: len(v["f1"]) for system, v in scores.items()}
  if min(seeds.values()) < 2:
    return ["", "Over seeds: " + ", ".join(f"{system} {n} seed{'s' * (n != 1)}"
                                           for system, n in seeds.items())
            + f" ({seed_stats.NO_INTERVAL}, no test)."]
  lines = ["", "Over seeds (mean ± std):", "", "| metric | " + " | ".join(SYSTEMS)
           + " | gap | Welch p | " + " | ".join(f"{system} 95% CI" for system in SYSTEMS)
           + " | ASO ε |", "|---|" + "---:|" * (2 * len(SYSTEMS) + 3)]
  for m in ("exact", "f1"):
    a, b = (scores[system][m] for system in SYSTEMS)
    cells = [seed_stats.mean_std(v, count=True) for v in (a, b)]
    p_value, epsilon = seed_stats.p_and_epsilon(a, b)
    lines.append(f"| {m} | " + " | ".join(cells)
                 + f" | {statistics.mean(a) - statistics.mean(b):+.2f} | {p_value} | "
                 + f"{seed_stats.interval(a)} | {seed_stats.interval(b)} | {epsilon} |")
  return lines


def report() -> str:
  rows = scaffold.read_results(RESULTS)
  order = lambda r: (list(SETTINGS).index(r["setting"]), SYSTEMS.index(r["system"]), r["seed"])
  lines = ["# SQuAD questions (dev5: 3 articles train, 2 evaluate) on the embedded MiniLM", "",
           "Official SQuAD scores in percent on the questions of the two held-out articles, "
           "after the last step. For the 2.0 setting: `HasAns_` / `NoAns_` over the answerable "
           "/ unanswerable ones, and `best_f1` with the best null-odds threshold on this split "
           "(`best_f1_thresh`, in logit units), as the official v2 script reports it.", "",
           scaffold.commit_line(sorted(RESULTS.glob("*.json")), RESULTS), "",
           seed_stats.NOTE + " The system is ours, the reference its baseline.", "",
           seed_stats.paired_tests_note(PAIRED_TESTS)]
  for setting, (v2, _, what) in SETTINGS.items():
    done = sorted((r for r in rows if r["setting"] == setting), key=order)
    if not done:
      continue
    metrics = METRICS if v2 else ("exact", "f1")
    lines += ["", f"## {setting}: {what}", "",
              f"{done[0]['scores']['total']} questions evaluated, "
              f"{done[0]['scores'].get('HasAns_total', 0)} answerable.", "",
              "| system | seed | steps | " + " | ".join(metrics) + " | eval loss | train s |",
              "|---|---:|---:|" + "---:|" * (len(metrics) + 2)]
    for r in done:
      cells = [f"{r['scores'][m]:.2f}" if m.endswith("thresh") else
               f"{100 * r['scores'][m]:.2f}" for m in metrics]
      lines.append(f"| {r['system']} | {r['seed']} | {r['steps']} | " + " | ".join(cells)
                   + f" | {r['eval_loss']:.4f} | {r['train_seconds']:.0f} |")
    lines += _seed_summary(done)
    logged = sorted(set.intersection(*({int(s) for s in r["train_loss"]} for r in done)))
    shown = logged[1::2] if len(logged) > 4 else logged
    if not shown:
      continue
    lines += ["", "Training loss (mean over each logging interval):", "",
              "| system | seed | " + " | ".join(f"step {s}" for s in shown) + " |",
              "|---|---:|" + "---:|" * len(shown)]
    for r in done:
      lines.append(f"| {r['system']} | {r['seed']} | " + " | ".join(
          f"{r['train_loss'].get(str(s), float('nan')):.4f}" for s in shown) + " |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
  parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
  scaffold.add_run_arguments(parser, list(SEEDS))
  parser.add_argument("--smoke", type=pathlib.Path, default=None,
                      help="a check of the code paths: 64 questions, results under this folder")
  args = parser.parse_args()
  global RESULTS, RUNS, SMOKE_EXAMPLES
  if args.smoke:
    RESULTS, RUNS, SMOKE_EXAMPLES = args.smoke / "results", args.smoke / "runs", 64
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  RESULTS.mkdir(parents=True, exist_ok=True)
  if not args.report:
    for setting in args.settings:
      for seed in args.seeds:
        for system in args.systems:
          out = RESULTS / f"{system}__{setting}__seed{seed}.json"
          if out.exists():
            continue
          if system == "ours":
            scaffold.write_result(out, run_ours(setting, seed), ours_workdir(setting, seed))
          else:  # the Trainer: no run.json, the code block is this process's
            scaffold.write_result(out, run_reference(setting, seed))
          (RESULTS.parent / "results.md").write_text(report())
  (RESULTS.parent / "results.md").write_text(report())
  print(report())


if __name__ == "__main__":
  main()
