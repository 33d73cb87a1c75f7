r"""Real runs of the families with no checkpoint offline: ModernBERT and DeBERTa-v3 from random
init on SST-2.

  RESEARCH_DATA_DIR=../shared/data python experiments/families/run.py      # ~8 min a family

No ModernBERT or DeBERTa checkpoint can be had offline, so this builds random-init ones with
transformers (4 layers of 256, 4 heads; ModernBERT: GeGLU 512, every third layer global and the
others within 64 tokens; DeBERTa: v3's switches, 64 position buckets over 128 positions) and
the embedded MiniLM's WordPiece tokenizer, and trains each on SST-2 through the normal
run (`research.train.train_and_evaluate` on configs/sst2.py: one epoch of the full training
set, batch 32, learning rate 5e-4 for a model trained from scratch, 10% warm-up). A BERT of the
same width, depth and tokenizer is trained the same way beside it, as the bar: a random-init
encoder on SST-2 learns word-level sentiment well past the majority class, not much more.
Writes results.md (dev accuracy of each, the majority baseline, steps, wall time, the commit).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

SHAPES = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
              max_position_embeddings=128)
LEARNING_RATE = 5e-4


def make_checkpoint(folder: pathlib.Path, family: str) -> pathlib.Path:
  """A random-init encoder of `family` with the embedded tokenizer, saved by transformers."""
  import torch
  import transformers
  from research.models import hf_io
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_io.embedded_checkpoint_dir())
  ids = dict(pad_token_id=tokenizer.pad_token_id)
  if family == "modernbert":
    config = transformers.ModernBertConfig(
        vocab_size=len(tokenizer), intermediate_size=512, local_attention=128,
        global_attn_every_n_layers=3, cls_token_id=tokenizer.cls_token_id,
        bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id, **ids, **SHAPES)
  elif family == "deberta-v2":
    config = transformers.DebertaV2Config(
        vocab_size=len(tokenizer), intermediate_size=1024, relative_attention=True,
        position_buckets=64, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0, **ids, **SHAPES)
  else:
    config = transformers.BertConfig(vocab_size=len(tokenizer), intermediate_size=1024, **ids,
                                     **SHAPES)
  torch.manual_seed(0)
  transformers.AutoModel.from_config(config).save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return folder


def commit() -> str:
  return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                        capture_output=True).stdout.strip()


def run(family: str, root: pathlib.Path) -> dict:
  """Trains `family` in runs/families/<family> (read back when it has finished there)."""
  from configs import sst2
  from research import train
  workdir = root / family
  if not (workdir / "results.json").exists():
    workdir.mkdir(parents=True, exist_ok=True)
    (root / f"{family}.commit").write_text(commit() + "\n")
    config = sst2.get_config()
    config.model.checkpoint = str(make_checkpoint(root / f"{family}_init", family))
    config.optimizer.learning_rate = LEARNING_RATE
    config.train.num_epochs = 1.0
    config.data.max_length = 128
    config.parallel.num_devices = 1
    train.train_and_evaluate(config, str(workdir))
  results = json.loads((workdir / "results.json").read_text())
  run_record = json.loads((workdir / "run.json").read_text())
  return {"family": family, "commit": (root / f"{family}.commit").read_text().strip(),
          "accuracy": results["best"]["results"]["validation"]["accuracy"],
          "best_step": results["best"]["step"], "steps": results["train"]["steps"],
          "seconds": results["train"]["train_seconds"],
          "params": results["params"]["total"], "started": run_record.get("started")}


def majority(split: str = "validation") -> float:
  import os
  rows = [json.loads(line) for line in
          (pathlib.Path(os.environ["RESEARCH_DATA_DIR"]) / "sst2" / f"{split}.jsonl").open()]
  labels = [row["label"] for row in rows]
  return max(labels.count(v) for v in set(labels)) / len(labels)


def main() -> None:
  root = REPO / "runs" / "families"
  start = time.time()
  rows = [run(family, root) for family in ("modernbert", "deberta-v2", "bert")]
  (HERE / "results.json").write_text(json.dumps({"rows": rows, "majority": majority()},
                                                indent=2) + "\n")
  lines = [
      "# Random-init ModernBERT and DeBERTa-v3 train on SST-2 (issue 35, item 5)", "",
      "`RESEARCH_DATA_DIR=../shared/data python experiments/families/run.py` (a 2-core AMD "
      "EPYC, AVX2; the commit each run was trained at is in its row; this table written in "
      f"{time.time() - start:.0f} s). One seed each, SST-2's 872 dev sentences; the majority "
      f"class is {majority():.4f} of them.", "",
      "| encoder (random init, 4 x 256, embedded WordPiece) | commit | parameters | steps | "
      "train s | dev accuracy (best evaluation) |",
      "|---|---|---:|---:|---:|---:|"]
  for row in rows:
    lines.append(f"| {row['family']} | {row['commit']} | {row['params']:,} | {row['steps']} | "
                 f"{row['seconds']:.0f} | {row['accuracy']:.4f} (step {row['best_step']}) |")
  (HERE / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
