"""The benchmark's FLOP counts (by hand and by XLA) and its quick run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from benchmarks import bench
from research import tasks
from research.models import bert

TINY = bert.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128)


def test_model_flops_by_hand():
  # One layer's matmul weights: q, k, v, out 4·64² + FFN 2·64·128 = 32,768.
  forward = (2 * 2 * 32_768 * 32      # 2 layers, 2 FLOPs per weight per token, 32 tokens
             + 4 * 2 * 32 * 32 * 64   # scores and context: 2 matmuls of 2·S²·H per layer
             + 2 * (64 * 64 + 64 * 2))  # pooler and classifier, [CLS] only
  assert bench.model_flops(TINY, 8, 32, 2, train=False) == 8 * forward
  assert bench.model_flops(TINY, 8, 32, 2) == 3 * 8 * forward


def test_executed_flops_match_xla_cost_analysis():
  config = bert.BertConfig(vocab_size=2000, hidden_size=256, num_hidden_layers=3,
                           num_attention_heads=4, intermediate_size=1024)
  model = tasks.get("classification").build_model(config, 2, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  batch, length = 8, 64
  ids = jnp.ones((batch, length), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"]
  forward = jax.jit(lambda p: model.apply({"params": p}, ids, ids))
  counted = bench.xla_flops(forward.lower(params).compile())
  expected = bench.executed_flops(config, batch, length, 2, train=False)
  assert counted == pytest.approx(expected, rel=0.10)
  assert expected < bench.model_flops(config, batch, length, 2, train=False)  # [CLS]-only

  def loss(p):
    logits = model.apply({"params": p}, ids, ids)
    return tasks.get("classification").loss_sum(logits, jnp.zeros(batch, jnp.int32),
                                                jnp.ones(batch))[0]
  counted = bench.xla_flops(jax.jit(jax.grad(loss)).lower(params).compile())
  assert counted == pytest.approx(bench.executed_flops(config, batch, length, 2), rel=0.10)


def test_quick_benchmark_prints_a_complete_table_on_a_fresh_clone_offline(tmp_path):
  """No data folder, no network: the input-pipeline rates and the classification workload of
  --e2e read the SST-2 slice shipped in data/; the NER workload, whose data is not there, is
  skipped with one line and is no error. --e2e on 32 sentences (one step), scored on 32 dev
  sentences: both systems' processes, their scores by our metrics and our wall-time split."""
  env = {k: v for k, v in os.environ.items() if k != "RESEARCH_DATA_DIR"}
  env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
  result = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick",
                           "--e2e", "classification,ner", "--e2e-examples", "32", "--e2e-eval-examples", "32",
                           "--out", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  table = (tmp_path / "bench.md").read_text()
  data = json.loads((tmp_path / "bench.json").read_text())
  (row,) = data["rows"]
  for key in ("ours_train_examples_per_s", "peer_train_examples_per_s", "train_ratio",
              "ours_eval_examples_per_s", "peer_eval_examples_per_s", "eval_ratio",
              "ours_fraction_of_peak", "compile_s", "xla_executed_flops_per_step"):
    assert np.isfinite(row[key]) and row[key] > 0, key
  assert row["train_compiles"] == 1
  peak = data["peak"]
  assert peak["machine_flops"] == max(peak["fp32_matmul_flops"], peak["torch_fp32_matmul_flops"])
  assert row["ours_fraction_of_peak"] == pytest.approx(row["ours_train_flops_per_s"]
                                                       / peak["machine_flops"])
  assert "tiny B8×S32" in table and "**" in table and "XLA_FLAGS" in table
  assert data["machine"]["cpu_model"].split(", ")[-1] in table  # its vector units, e.g. AVX2
  assert data["errors"] == [] and "Not measured" not in table
  assert row["gemm"] == "xla"  # 'auto' for float32 compute
  (mlm_row,) = data["mlm_rows"]
  assert mlm_row["train_ratio"] > 0 and "Masked-LM train steps" in table
  pipeline = data["input_pipeline"]
  assert pipeline["source"].endswith("(shipped slice)") and pipeline["examples"] == 2000
  assert pipeline["padding_grouped_buckets"] < pipeline["padding_random_buckets"]
  assert "Input pipeline" in table
  classification, ner = data["e2e"]
  assert classification["train_examples"] == classification["eval_examples"] == 32
  assert classification["ours"]["steps"] == classification["trainer"]["steps"] == 1
  for system in ("ours", "trainer"):
    assert classification[system]["wall_s"] > 0, system
    assert 0.0 < classification[system]["metrics"]["accuracy"] < 1.0, system
  assert classification["wall_ratio"] == pytest.approx(
      classification["ours"]["wall_s"] / classification["trainer"]["wall_s"])
  warm = classification["ours_warm"]  # the second run reads its programs from the cache
  assert warm["metrics"] == classification["ours"]["metrics"]
  assert warm["wall_split_s"]["compile"] < classification["ours"]["wall_split_s"]["compile"]
  split = classification["ours"]["wall_split_s"]  # our wall time by part, from run.json
  assert split["train_steps"] > 0 and split["compile"] > 0
  assert sum(split.values()) <= classification["ours"]["wall_s"]
  assert "| classification: SST-2 (configs/sst2.py) | 32 / 32 | 1 |" in table
  assert ner["skipped"].startswith("no data for 'conll2003'") and "ours" not in ner
  assert "| ner | — | — | — | — | — | — | skipped: no data for 'conll2003'" in table


def test_bfloat16_benchmark_measures_against_the_bfloat16_peak(monkeypatch, tmp_path):
  """`--dtype bfloat16`, the GPU run's mode: our model computes in bf16 and its fraction of
  peak is against a bf16 matmul, not the fp32 one."""
  model, _ = bench.ours_from_reference(bench.reference_model(TINY), TINY, "bfloat16")
  assert model.dtype == jnp.bfloat16
  result = bench.run(bench.Report(tmp_path, "bench", {}, bench.to_markdown), quick=True,
                     steps_timed=1, dtype="bfloat16", gemms=("xla", "mkl"),
                     attentions=("ours", "fused"))
  row, fused_row, mkl_row, _ = result["rows"]
  assert [(r["gemm"], r["attention"]) for r in result["rows"]] == [
      ("xla", "ours"), ("xla", "fused"), ("mkl", "ours"), ("mkl", "fused")]
  assert mkl_row["train_ratio"] > 0 and fused_row["eval_ratio"] > 0
  # The masked-LM rows, in the same table and dtype, with each library.
  assert [(r["dtype"], r["gemm"]) for r in result["mlm_rows"]] == [("bfloat16", "xla"),
                                                                  ("bfloat16", "mkl")]
  peak = result["peak"]
  bf16_peak = max(peak["bfloat16_matmul_flops"], peak["torch_bfloat16_matmul_flops"])
  assert peak["bfloat16_matmul_flops"] > 0 and row["eval_ratio"] > 0
  assert row["ours_fraction_of_peak"] == pytest.approx(row["ours_train_flops_per_s"] / bf16_peak)
  assert row["ours_fraction_of_jax_peak"] == pytest.approx(
      row["ours_train_flops_per_s"] / peak["bfloat16_matmul_flops"])
  table = (tmp_path / "bench.md").read_text()
  assert "jax bfloat16" in table and "| tiny B8×S32 | MKL |" in table
  assert "| tiny B8×S32, fused attention | XLA |" in table
  assert "| tiny B8×S32, 5 predicted per row | bfloat16 | MKL |" in table
  with pytest.raises(SystemExit) as error:  # the e2e recipe is float32 only
    bench.main(["--e2e", "--dtype", "bfloat16", "--out", str(tmp_path)])
  assert error.value.code == 2


@pytest.mark.parametrize("workloads", ["nope", "classification,,ner2", ","])
def test_an_unknown_e2e_workload_is_one_line(workloads, tmp_path, capsys):
  with pytest.raises(SystemExit) as error:
    bench.main(["--e2e", workloads, "--out", str(tmp_path)])
  assert error.value.code == 2
  assert "a comma-separated list of classification, ner, relations, qa, masked_lm" in (
      capsys.readouterr().err)
  assert not (tmp_path / "bench.json").exists()


def test_masked_lm_rows_become_bert_for_masked_lm_labels_and_its_logits_our_slots():
  """The Trainer's side of the masked-LM workload: our [B, slots] masked positions and
  targets as transformers' [B, S] labels (-100 elsewhere), and its [B, S, V] logits gathered
  back to our slots, so our metrics score them."""
  import torch
  from benchmarks import e2e
  batch = {"input_ids": np.array([[101, 103, 7, 103, 102, 0], [101, 8, 103, 102, 0, 0]]),
           "masked_positions": np.array([[1, 3, 0], [2, 0, 0]], np.int32),
           "labels": np.array([[11, 12, -100], [13, -100, -100]], np.int32)}
  task = e2e.TORCH_TASKS["masked_lm"]
  labels = task.labels(batch)["labels"]
  assert labels.tolist() == [[-100, 11, -100, 12, -100, -100], [-100, -100, 13, -100, -100, -100]]
  logits = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)
  gathered = task.logits({"logits": logits}, batch)
  assert gathered.shape == (2, 3, 4)
  assert gathered[0, 1].tolist() == logits[0, 3].tolist()
  assert gathered[1, 0].tolist() == logits[1, 2].tolist()


def test_a_failing_part_is_one_line_and_every_other_part_lands(tmp_path, monkeypatch, capsys):
  """A part that fails (here each shape's row) is one line on stderr and in the table, exit
  status 1; the parts before and after it are measured and saved (the peaks, the input
  pipeline), and bench.json is written after every part, so an interrupt loses nothing done."""
  def out_of_memory(*args, **kwargs):
    raise MemoryError("no room for the batch")

  monkeypatch.setattr(bench, "measure_shape", out_of_memory)
  with pytest.raises(SystemExit) as error:
    bench.main(["--quick", "--steps", "1", "--out", str(tmp_path)])
  assert error.value.code == 1
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert errors == [
      "error: bench part 'tiny B8×S32 (xla)' failed: MemoryError: no room for the batch"]
  data = json.loads((tmp_path / "bench.json").read_text())
  assert data["rows"] == [] and data["peak"]["machine_flops"] > 0
  assert data["input_pipeline"]["examples"] > 0
  assert ("* tiny B8×S32 (xla): MemoryError: no room for the batch"
          in (tmp_path / "bench.md").read_text())


def test_mlm_benchmark_times_the_gathered_head_against_every_position(tmp_path):
  """`--mlm`: ours (the LM head on the masked positions), ours on every position, and
  BertForMaskedLM; XLA's count shows the gather removes most of the vocabulary projection."""
  bench.main(["--quick", "--mlm", "--steps", "1", "--out", str(tmp_path)])
  (row,) = json.loads((tmp_path / "bench_mlm.json").read_text())["mlm_rows"]
  assert "| tiny B8×S32, 5 predicted per row |" in (tmp_path / "bench_mlm.md").read_text()
  for key in ("ours_train_examples_per_s", "ours_every_position_train_examples_per_s",
              "peer_train_examples_per_s"):
    assert row[key] > 0
  # The vocabulary projection dominates this tiny model: 5 of 32 positions cost far less.
  saved = row["xla_every_position_train_flops"] - row["xla_train_flops"]
  by_formula = row["formula_every_position_train_flops"] - row["formula_train_flops"]
  assert saved == pytest.approx(by_formula, rel=0.15)

