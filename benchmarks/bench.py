"""Speed, measured side by side in one process: our train/eval steps vs the PyTorch peer.

  python -m benchmarks.bench --out bench_out/          # the default table (~5 min on 2 cores)
  python -m benchmarks.bench --quick --out /tmp/b      # tiny shapes, seconds (used in tests)
  python -m benchmarks.bench --e2e --out bench_out/    # + every task kind end to end vs Trainer
  python -m benchmarks.bench --dtype bfloat16 --out b/  # bf16 compute (on a GPU: BERT-base/large)
  python -m benchmarks.bench --mlm --out bench_out/    # only the masked-LM steps
  python -m benchmarks.bench --gemm xla,mkl --out b/   # a row per dense-matmul library

Every figure that matters is a ratio measured in this run, because the machine is noisy:
* ours vs peer: examples/s of our compiled train step (and eval forward) against transformers'
  `BertForSequenceClassification` + `torch.optim.AdamW` on the same weights, shapes, dropout;
* ours vs the machine: achieved FLOP/s against a large matmul in the compute dtype through the
  same backend (on a GPU, the peer runs there too, under autocast for bf16);
* masked LM: our train step (the LM head on the masked positions only) against
  `BertForMaskedLM`, in the same table.
Our dense layers' matmuls are XLA's or MKL's (`config.model.gemm`, research/models/mkl_gemm.py):
by default each row measures what `auto` picks on this machine and says which; `--gemm xla,mkl`
measures a row with each.
FLOPs are counted by formula (`model_flops`): per example 6·N·S for the matmuls of the encoder
layers (N parameters, forward + backward = 3 × 2 FLOPs per weight and token) plus 12·L·S²·H for
attention scores and context, plus the pooler and classifier; eval is a third of that. The same
count is used for both systems. We execute fewer FLOPs than that (`executed_flops`: the last
layer computes only [CLS]); XLA's own count of what we execute is reported beside it.
Both systems run with `host_memory.keep_freed_memory()` (off: RESEARCH_DEFAULT_MALLOC=1).

It runs anywhere and loses nothing: bench.json and bench.md are rewritten after every part
(the peaks, each shape, the input pipeline, each --e2e workload), a part that fails is one
line and the others still run (exit status 1 then), and with no data folder and no network the
input pipeline is measured on the SST-2 slice shipped in data/ (an --e2e workload whose data is
missing is skipped with one line: benchmarks/e2e.py). The table names the CPU's vector and
matrix units (AVX2, AVX-512, AVX512-BF16, AMX) and the XLA_FLAGS in force.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import e2e
from research import host_memory, optim, parallel, steps, tasks
from research.models import bert, hf_io, mkl_gemm

WARMUP_STEPS = 3


# ---- FLOP count --------------------------------------------------------------------------


def encoder_layer_params(config: bert.BertConfig) -> int:
  """Weights of one encoder layer's matmuls (biases and LayerNorm do no matmul work)."""
  h, f = config.hidden_size, config.intermediate_size
  return 4 * h * h + 2 * h * f


def model_flops(config: bert.BertConfig, batch: int, length: int, num_labels: int,
                train: bool = True) -> float:
  """FLOPs of one step of a sequence classifier by formula (forward, ×3 when training)."""
  layers, h = config.num_hidden_layers, config.hidden_size
  per_example_forward = (2 * layers * encoder_layer_params(config) * length
                         + 4 * layers * length * length * h   # scores and context
                         + 2 * (h * h + h * num_labels))      # pooler, classifier
  return batch * per_example_forward * (3 if train else 1)


def executed_flops(config: bert.BertConfig, batch: int, length: int, num_labels: int,
                   train: bool = True) -> float:
  """What our sequence classifier executes: as `model_flops`, except that the last layer
  computes keys and values for every position but everything else for [CLS] alone."""
  layers, h, f = config.num_hidden_layers, config.hidden_size, config.intermediate_size
  full_layer = 2 * encoder_layer_params(config) * length + 4 * length * length * h
  last_layer = (2 * 2 * h * h * length               # keys and values of every position
                + 2 * (2 * h * h + 2 * h * f)        # query, output and FFN of [CLS]
                + 4 * length * h)                    # one query's scores and context
  per_example = (layers - 1) * full_layer + last_layer + 2 * (h * h + h * num_labels)
  return batch * per_example * (3 if train else 1)


def mlm_flops(config: bert.BertConfig, batch: int, length: int, predicted: int,
              train: bool = True) -> float:
  """FLOPs of a masked-LM step by formula: the encoder as `model_flops` (no pooler), plus the
  LM head (transform H×H, decoder H×vocab) on `predicted` positions per example."""
  layers, h = config.num_hidden_layers, config.hidden_size
  per_example_forward = (2 * layers * encoder_layer_params(config) * length
                         + 4 * layers * length * length * h
                         + 2 * predicted * (h * h + h * config.vocab_size))
  return batch * per_example_forward * (3 if train else 1)


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0))


# ---- timing ------------------------------------------------------------------------------


def median_seconds(run: Callable[[], Any], steps_timed: int) -> float:
  """Median wall time of `run` (which must block until its result is ready)."""
  for _ in range(WARMUP_STEPS):
    run()
  times = []
  for _ in range(steps_timed):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak(size: int, dtype: str, steps_timed: int) -> float:
  """FLOP/s of one size³ matmul through JAX's default backend."""
  a = jnp.ones((size, size), dtype)
  b = jnp.ones((size, size), dtype)
  f = jax.jit(lambda x, y: x @ y)
  return 2 * size**3 / median_seconds(lambda: f(a, b).block_until_ready(), steps_timed)


def torch_device() -> str:
  """Where the peer runs: on the GPU when JAX has one (torch must see it too), else the CPU."""
  return "cuda" if jax.devices()[0].platform == "gpu" else "cpu"


def torch_synchronize(device: str) -> None:
  """Waits for the peer's queued GPU work, so that a timed step ends when its work does."""
  import torch
  if device == "cuda":
    torch.cuda.synchronize()


def torch_matmul_peak(size: int, steps_timed: int, dtype: str = "float32") -> float:
  """FLOP/s of one size³ matmul in torch (the peer's library: oneDNN or MKL on a CPU)."""
  import torch
  device = torch_device()
  a = torch.ones(size, size, device=device, dtype=getattr(torch, dtype))
  b = torch.ones(size, size, device=device, dtype=getattr(torch, dtype))

  def matmul():
    a @ b
    torch_synchronize(device)
  return 2 * size**3 / median_seconds(matmul, steps_timed)


# ---- the two systems -------------------------------------------------------------------------


def _optimizer_config():
  from configs import default
  return default.get_config().optimizer


def _default_backend() -> str:
  """The backend a run gets by default (`parallel.backend`): what the bench times."""
  from configs import default
  return default.get_config().parallel.backend


def _synthetic_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"input_ids": rng.integers(1000, min(vocab, 5000), (batch, length)).astype(np.int32),
          "attention_mask": np.ones((batch, length), np.int32),
          "token_type_ids": np.zeros((batch, length), np.int32),
          "labels": rng.integers(0, 2, batch).astype(np.int32),
          "example_mask": np.ones(batch, np.float32)}


def reference_model(source: str | bert.BertConfig):
  """transformers' BertForSequenceClassification: the embedded checkpoint, or random init."""
  import torch
  import transformers
  torch.manual_seed(0)
  if isinstance(source, bert.BertConfig):
    hf_config = transformers.BertConfig(**source.to_dict(), num_labels=2)
    return transformers.BertForSequenceClassification(hf_config)
  return transformers.BertForSequenceClassification.from_pretrained(source, num_labels=2)


def ours_from_reference(reference, config: bert.BertConfig, dtype: str = "float32"):
  """Our classifier with exactly the reference's weights (head included); `dtype` computes,
  the parameters stay float32."""
  model = tasks.get("classification").build_model(config, 2, dtype=jnp.dtype(dtype),
                                                  param_dtype=jnp.float32,
                                                  classifier_dropout=None)
  return model, reference_params(model, reference)


def reference_params(model, reference) -> Any:
  """`model`'s parameters set to the PyTorch `reference`'s weights, its head included."""
  from research.models import builder
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               *builder.init_inputs(model)))["params"]
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  state = {k: v.detach().cpu().numpy() for k, v in reference.state_dict().items()}
  return hf_io.params_from_state_dict(state, template, load_head=True)


def time_ours(model, params, batch: dict[str, np.ndarray], steps_timed: int,
              kind: str = "classification") -> dict[str, float]:
  """Our compiled train step (AdamW, clipping, dropout) and eval forward on one device, under
  the default backend."""
  tx, schedule = optim.make_optimizer(_optimizer_config(), params, 10_000)
  state = steps.TrainState(step=np.int32(0), params=params, frozen={},
                           opt_state=tx.init(params),
                           rng=np.asarray(jax.random.PRNGKey(0)))
  dp = parallel.DataParallel(_default_backend(), 1)
  train_step = dp.compile_train_step(steps.make_train_step(model, tx, schedule,
                                                          tasks.get(kind)))
  eval_step = dp.compile_eval_step(steps.make_eval_step(model, tasks.get(kind)))
  placed = [dp.put_replicated(jax.device_get(state))]
  batch = dict(batch, example_index=np.arange(len(batch["input_ids"]), dtype=np.int32))
  train_batch = dp.put_train_batch({k: v[None] for k, v in batch.items()})
  eval_batch = dp.put_eval_batch(batch)
  signals = dp.put_signals(np.zeros(2))

  def train():
    placed[0], metrics = train_step(placed[0], train_batch, signals)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  train()
  compile_seconds = time.perf_counter() - start
  train_seconds = median_seconds(train, steps_timed)
  sums = jax.eval_shape(train_step.gradients._fn, placed[0], train_batch, signals)
  executed = (xla_flops(train_step.gradients._fn.lower(placed[0], train_batch, signals).compile())
              + xla_flops(train_step.update._fn.lower(placed[0], sums).compile()))
  params_placed = placed[0].params
  eval_seconds = median_seconds(
      lambda: jax.block_until_ready(eval_step(params_placed, eval_batch)), steps_timed)
  return {"train_s": train_seconds, "eval_s": eval_seconds, "compile_s": compile_seconds,
          "xla_train_flops": executed, "train_compiles": train_step.gradients.compiles}


def time_reference(reference, batch: dict[str, np.ndarray], steps_timed: int,
                   dtype: str = "float32") -> dict[str, float]:
  """The peer: train mode (dropout on), AdamW with the same decay groups, clipping 1.0; a
  compute dtype other than float32 runs under torch's autocast (float32 master weights)."""
  import contextlib
  import torch
  device = torch_device()
  reference.to(device)
  cfg = _optimizer_config()
  decay = [p for n, p in reference.named_parameters() if not n.endswith("bias")
           and "LayerNorm" not in n]
  no_decay = [p for n, p in reference.named_parameters() if n.endswith("bias")
              or "LayerNorm" in n]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.learning_rate, betas=(cfg.b1, cfg.b2), eps=cfg.eps)
  inputs = {k: torch.from_numpy(batch[k]).long().to(device)
            for k in ("input_ids", "attention_mask", "token_type_ids")}
  labels = torch.from_numpy(batch["labels"]).long().to(device)

  def compute():
    if dtype == "float32":
      return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))

  def train():
    reference.train()
    with compute():
      loss = reference(**inputs, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch_synchronize(device)

  def evaluate():
    reference.eval()
    with torch.no_grad(), compute():
      reference(**inputs)
    torch_synchronize(device)

  return {"train_s": median_seconds(train, steps_timed),
          "eval_s": median_seconds(evaluate, steps_timed)}


# ---- the input pipeline ---------------------------------------------------------------------


def input_pipeline_rates(examples: int, batch_size: int, tokenizer_dir: str) -> dict[str, Any]:
  """Tokenisation + batching of SST-2 train (examples/s), and padding with and without
  buckets and length grouping, against batches padded to their own longest sequence. All of
  train (`examples=0`) where it can be read; on a fresh clone offline, the rows of the
  repository's shipped slice (the source is recorded)."""
  from configs import sst2
  from research.data import sources, splits, tokenization
  from research.data.batches import TrainBatches
  from research.errors import DataError
  config = sst2.get_config()
  config.data.train_examples = examples
  try:
    source = sources.locate(config.data)
  except DataError:
    held = sources.shipped_splits(config.data.local_name)
    if examples or held is None:
      raise
    config.data.train_examples = held["train"]["examples"]
    source = sources.locate(config.data)
  tokenizer = tokenization.load_tokenizer(tokenizer_dir)
  start = time.perf_counter()
  split = splits.load_encoded(config.data, config.task, tasks.kind_of(config.task), tokenizer,
                              "train", config.data.train_examples)
  tokenise_s = time.perf_counter() - start
  buckets = tuple(config.data.length_buckets)
  out = {"examples": len(split), "source": source.describe(),
         "tokenise_examples_per_s": len(split) / tokenise_s}
  real = None
  for group in (0, config.data.group_by_length):
    batches = TrainBatches(split, batch_size=batch_size, accum_steps=1, seed=0,
                           buckets=buckets, group_by_length=group)
    start = time.perf_counter()
    padded = real_tokens = own_longest = 0
    for batch in batches(0, batches.steps_per_epoch):
      lengths = batch["attention_mask"].sum(-1)
      padded += batch["attention_mask"].size
      real_tokens += int(lengths.sum())
      own_longest += int(lengths.max()) * lengths.size
    seconds = time.perf_counter() - start
    key = "grouped" if group else "random"
    out[f"batching_{key}_examples_per_s"] = batches.steps_per_epoch * batch_size / seconds
    out[f"padding_{key}_buckets"] = 1 - real_tokens / padded
    real = real_tokens if real is None else real
    if not group:
      out["padding_random_own_longest"] = 1 - real_tokens / own_longest
  out["pipeline_examples_per_s"] = 1 / (1 / out["tokenise_examples_per_s"]
                                        + 1 / out["batching_grouped_examples_per_s"])
  return out


# ---- the table --------------------------------------------------------------------------------


SHAPES = [  # name, checkpoint ('embedded' or a BertConfig for random init), batch, length
    ("MiniLM-L6", "embedded", 32, 128),
    ("MiniLM-L6", "embedded", 64, 32),
    ("BERT-base", bert.BertConfig(), 8, 128),
]
QUICK_SHAPES = [
    ("tiny", bert.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=128), 8, 32),
]
GPU_SHAPES = [  # random init (the embedded checkpoint is too big to carry to a lent GPU)
    ("BERT-base", bert.BertConfig(), 256, 128),
    ("BERT-large", bert.BertConfig(hidden_size=1024, num_hidden_layers=24,
                                   num_attention_heads=16, intermediate_size=4096), 128, 128),
]


class Report:
  """The bench's result as it grows, written to `--out` (json and markdown) after every part:
  what was measured before a failure or an interrupt stays. A part that fails is one line on
  stderr and in the table, and the parts after it still run."""

  def __init__(self, out: pathlib.Path, stem: str, result: dict[str, Any],
               render: Callable[[dict[str, Any]], str]):
    self.out, self.stem, self.result, self.render = out, stem, result, render
    self.result.setdefault("errors", [])

  def part(self, name: str, measure: Callable[[], Any], key: str) -> Any:
    """`measure()` kept as the result's `key` (appended, when that holds a list) and saved; None
    when it raised, recorded as `name`'s error (saved too)."""
    try:
      value = measure()
    except Exception as e:  # one part's failure (data, memory, a library) loses no other part
      detail = " ".join(f"{type(e).__name__}: {e}".split())[:500]
      self.result["errors"].append({"part": name, "error": detail})
      print(f"error: bench part {name!r} failed: {detail}", file=sys.stderr, flush=True)
      value = None
    else:
      if isinstance(self.result.get(key), list):
        self.result[key].append(value)
      else:
        self.result[key] = value
    self.save()
    return value

  def save(self) -> None:
    (self.out / f"{self.stem}.json").write_text(json.dumps(self.result, indent=2) + "\n")
    (self.out / f"{self.stem}.md").write_text(self.render(self.result))


def measure_peaks(size: int, dtype: str, steps_timed: int) -> dict[str, Any]:
  """Each library's size³ matmul in float32 and in the compute dtype, and the machine's limit
  in the compute dtype: the higher of the two libraries', which "of peak" is measured against
  (not only XLA's: on a CPU whose matrix units only torch's kernels use, XLA's is far below)."""
  peak = {"matmul_size": size, "fp32_matmul_flops": matmul_peak(size, "float32", steps_timed),
          "torch_fp32_matmul_flops": torch_matmul_peak(size, steps_timed)}
  if dtype != "float32":
    peak[f"{dtype}_matmul_flops"] = matmul_peak(size, dtype, steps_timed)
    peak[f"torch_{dtype}_matmul_flops"] = torch_matmul_peak(size, steps_timed, dtype)
  jax_peak = peak["fp32_matmul_flops" if dtype == "float32" else f"{dtype}_matmul_flops"]
  torch_peak = peak["torch_fp32_matmul_flops" if dtype == "float32"
                    else f"torch_{dtype}_matmul_flops"]
  peak["machine_flops"] = max(jax_peak, torch_peak)
  peak["machine_peak_library"] = "jax" if jax_peak >= torch_peak else "torch"
  peak["jax_flops"] = jax_peak
  return peak


def measure_shape(name: str, source, batch_size: int, length: int, steps_timed: int,
                  dtype: str, peak: dict[str, Any] | None, gemm: str = "xla",
                  attention: str = "ours") -> dict[str, Any]:
  """One row of the table: ours (dense matmuls by `gemm`, the attention core by `attention`)
  and the peer on the same weights and batch."""
  if isinstance(source, str):
    source_dir = str(hf_io.embedded_checkpoint_dir())
    config, _ = hf_io.load_config(pathlib.Path(source_dir))
    reference = reference_model(source_dir)
  else:
    config = source
    reference = reference_model(config)
  model, params = ours_from_reference(
      reference, dataclasses.replace(config, gemm=gemm, attention=attention), dtype)
  batch = _synthetic_batch(batch_size, length, config.vocab_size)
  ours = time_ours(model, params, batch, steps_timed)
  theirs = time_reference(reference, batch, steps_timed, dtype)
  reference.cpu()  # frees the GPU for the next shape
  flops = model_flops(config, batch_size, length, 2)
  row = {
      "shape": f"{name} B{batch_size}×S{length}",
      "gemm": gemm,
      "attention": attention,
      "ours_train_examples_per_s": batch_size / ours["train_s"],
      "ours_train_tokens_per_s": batch_size * length / ours["train_s"],
      "peer_train_examples_per_s": batch_size / theirs["train_s"],
      "train_ratio": theirs["train_s"] / ours["train_s"],
      "ours_eval_examples_per_s": batch_size / ours["eval_s"],
      "peer_eval_examples_per_s": batch_size / theirs["eval_s"],
      "eval_ratio": theirs["eval_s"] / ours["eval_s"],
      "model_flops_per_step": flops,
      "ours_train_flops_per_s": flops / ours["train_s"],
      "peer_train_flops_per_s": flops / theirs["train_s"],
      "xla_executed_flops_per_step": ours["xla_train_flops"],
      "compile_s": ours["compile_s"],
      "train_compiles": ours["train_compiles"],
  }
  if peak is not None:
    row["ours_fraction_of_peak"] = flops / ours["train_s"] / peak["machine_flops"]
    row["ours_fraction_of_jax_peak"] = flops / ours["train_s"] / peak["jax_flops"]
  print(f"  {row['shape']} ({gemm}): ours {row['ours_train_examples_per_s']:.2f} ex/s, peer "
        f"{row['peer_train_examples_per_s']:.2f} ex/s", file=sys.stderr, flush=True)
  return row


def machine_description(dtype: str) -> dict[str, Any]:
  """What the figures came from: backend, CPU and its units, versions, dtype, XLA_FLAGS."""
  import torch
  return {"jax_backend": jax.devices()[0].platform, "device": str(jax.devices()[0]),
          "cpu_count": os.cpu_count(), "cpu_model": mkl_gemm.cpu_description(),
          "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
          "torch": torch.__version__, "compute_dtype": dtype,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run(report: Report, quick: bool, steps_timed: int, dtype: str = "float32",
        tokenizer_dir: str | None = None, gemms: tuple[str, ...] = ("auto",),
        attentions: tuple[str, ...] = ("ours",)) -> dict[str, Any]:
  """The table: the matmul peaks, a row per shape and dense-matmul library (`gemms`; 'auto':
  what a run picks here), the masked-LM rows, the input pipeline; each part saved by `report`
  as it is measured (a part that fails is recorded and the others go on)."""
  platform = jax.devices()[0].platform
  shapes = QUICK_SHAPES if quick else GPU_SHAPES if platform == "gpu" else SHAPES
  size = 512 if quick else 8192 if platform == "gpu" else 2048
  result = report.result
  result.setdefault("machine", {}).update(machine_description(dtype))
  result["rows"] = []
  if platform == "cpu" and dtype == "bfloat16" and not mkl_gemm.has_bf16_units(
      mkl_gemm.cpu_info()[1]):
    print("warning: this CPU has neither AMX nor AVX512-BF16: torch's bfloat16 matmuls take a "
          "scalar path here (40 s or more per 2048³ product), and the bf16 figures say little",
          file=sys.stderr, flush=True)
  peak = report.part("matmul peaks", lambda: measure_peaks(size, dtype, steps_timed), "peak")
  chosen = report.part("dense matmuls", lambda: resolve_gemms(gemms, dtype), "gemms")
  for gemm in chosen or ():
    for attention in attentions:
      for name, source, batch_size, length in shapes:
        label = gemm if attention == "ours" else f"{gemm}, {attention} attention"
        report.part(f"{name} B{batch_size}×S{length} ({label})", lambda: measure_shape(
            name, source, batch_size, length, steps_timed, dtype, peak, gemm, attention), "rows")
  mlm_rows(report, quick, steps_timed, dtype, chosen or ())

  def pipeline() -> dict[str, Any]:
    rates = input_pipeline_rates(2000 if quick else 0, 32,
                                 tokenizer_dir or str(hf_io.embedded_checkpoint_dir()))
    if result["rows"]:
      fastest = max(r["ours_train_examples_per_s"] for r in result["rows"])
      rates["ratio_to_fastest_train_step"] = rates["pipeline_examples_per_s"] / fastest
    return rates

  report.part("input pipeline", pipeline, "input_pipeline")
  return result


def resolve_gemms(gemms: tuple[str, ...], dtype: str) -> list[str]:
  """The libraries to measure ours with: 'auto' becomes what a run would pick here."""
  chosen = []
  for gemm in gemms:
    picked, why = mkl_gemm.choose(gemm, dtype)
    print(f"dense matmuls {gemm}: {picked} ({why})", file=sys.stderr, flush=True)
    chosen.append(picked)
  return list(dict.fromkeys(chosen))


MLM_SHAPES = [("MiniLM-L6 (embedded)", "embedded", 32, 128)]
QUICK_MLM_SHAPES = [("tiny", QUICK_SHAPES[0][1], 8, 32)]


def run_mlm(report: Report, quick: bool, steps_timed: int, dtype: str = "float32",
            gemms: tuple[str, ...] = ("auto",)) -> dict[str, Any]:
  """Only the masked-LM rows (`mlm_rows`), with the machine's description."""
  report.result.setdefault("machine", {}).update(machine_description(dtype))
  chosen = report.part("dense matmuls", lambda: resolve_gemms(gemms, dtype), "gemms")
  mlm_rows(report, quick, steps_timed, dtype, chosen or ())
  return report.result


def mlm_rows(report: Report, quick: bool, steps_timed: int, dtype: str,
             gemms: list[str]) -> None:
  """Masked-LM train steps: ours, whose LM head runs on the masked positions only (15%), the
  same model made to predict every position (the gather's effect alone), and transformers'
  BertForMaskedLM, which projects every position onto the vocabulary (labels -100 elsewhere),
  with AdamW as in `time_reference`; same weights, shapes and masked positions. A row per
  shape and library in `gemms`, each saved by `report` as it is measured."""
  report.result["mlm_rows"] = []
  for gemm in gemms:
    for name, source, batch_size, length in QUICK_MLM_SHAPES if quick else MLM_SHAPES:
      report.part(f"masked LM {name} B{batch_size}×S{length} ({gemm})", lambda: measure_mlm_shape(
          name, source, batch_size, length, steps_timed, dtype, gemm), "mlm_rows")


def measure_mlm_shape(name: str, source, batch_size: int, length: int, steps_timed: int,
                      dtype: str = "float32", gemm: str = "xla") -> dict[str, Any]:
  import torch
  import transformers
  from research.data import masking
  from research.data.encoded import IGNORE
  torch.manual_seed(0)
  if isinstance(source, str):
    source_dir = hf_io.embedded_checkpoint_dir()
    config, _ = hf_io.load_config(source_dir)
    reference = transformers.BertForMaskedLM.from_pretrained(str(source_dir))
  else:
    config = source
    reference = transformers.BertForMaskedLM(transformers.BertConfig(**config.to_dict()))
  model = bert.BertForMaskedLM(dataclasses.replace(config, gemm=gemm), dtype=jnp.dtype(dtype))
  slots = masking.Masking(103, config.vocab_size).slots(length)
  rng = np.random.default_rng(0)
  batch = _synthetic_batch(batch_size, length, config.vocab_size)
  positions = np.sort(np.stack([rng.choice(np.arange(1, length - 1), slots, replace=False)
                                for _ in range(batch_size)]), -1).astype(np.int32)
  targets = rng.integers(1000, 5000, (batch_size, slots)).astype(np.int32)
  params = reference_params(model, reference)
  ours = time_ours(model, params, dict(batch, masked_positions=positions, labels=targets),
                   steps_timed, "masked_lm")
  every = np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length))
  dense_labels = np.full((batch_size, length), IGNORE, np.int32)
  np.put_along_axis(dense_labels, positions, targets, axis=1)
  all_positions = time_ours(model, params, dict(batch, masked_positions=every,
                                                labels=dense_labels), steps_timed, "masked_lm")
  theirs = time_reference(reference, dict(batch, labels=dense_labels), steps_timed, dtype)
  return {"shape": f"{name} B{batch_size}×S{length}, {slots} predicted per row",
          "dtype": dtype, "gemm": gemm,
          "ours_train_examples_per_s": batch_size / ours["train_s"],
          "ours_every_position_train_examples_per_s": batch_size / all_positions["train_s"],
          "peer_train_examples_per_s": batch_size / theirs["train_s"],
          "train_ratio": theirs["train_s"] / ours["train_s"],
          "gather_speedup": all_positions["train_s"] / ours["train_s"],
          "xla_train_flops": ours["xla_train_flops"],
          "xla_every_position_train_flops": all_positions["xla_train_flops"],
          "formula_train_flops": mlm_flops(config, batch_size, length, slots),
          "formula_every_position_train_flops": mlm_flops(config, batch_size, length, length)}


def mlm_table(rows: list[dict[str, Any]]) -> list[str]:
  lines = ["Masked-LM train steps (AdamW, dropout on) against `BertForMaskedLM`:", "",
           "| shape | dtype | dense matmuls | ours ex/s | ours, every position ex/s | peer ex/s | "
           "ours vs peer | gather speed-up | XLA GFLOP/step ours (every position) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['shape']} | {r.get('dtype', 'float32')} | {r.get('gemm', 'xla').upper()} | "
        f"{r['ours_train_examples_per_s']:.2f} | "
        f"{r['ours_every_position_train_examples_per_s']:.2f} | "
        f"{r['peer_train_examples_per_s']:.2f} | **{r['train_ratio']:.2f}×** | "
        f"**{r['gather_speedup']:.2f}×** | {r['xla_train_flops'] / 1e9:.1f} "
        f"({r['xla_every_position_train_flops'] / 1e9:.1f}){_uncounted(r)} |")
  return lines


def _attention(row: dict[str, Any]) -> str:
  """The attention core, where not ours: 'fused' is jax.nn.dot_product_attention (cuDNN's on
  a GPU where it applies; in training only without attention dropout)."""
  return f", {row['attention']} attention" if row.get("attention", "ours") != "ours" else ""


def _uncounted(row: dict[str, Any]) -> str:
  """XLA counts no FLOPs of a custom call: with MKL's GEMMs its count is the rest only."""
  return " without MKL's" if row.get("gemm") == "mkl" else ""


def mlm_markdown(result: dict[str, Any]) -> str:
  m = result["machine"]
  lines = [f"Backend {m['jax_backend']}, {m['cpu_count']} CPUs ({m['cpu_model']}), torch "
           f"{m['torch_threads']} threads; XLA_FLAGS: {m['xla_flags'] or 'none'}.", ""]
  lines += mlm_table(result.get("mlm_rows", []))
  if result.get("errors"):
    lines += ["", "Not measured:", ""] + [f"* {e['part']}: {e['error']}" for e in result["errors"]]
  return "\n".join(lines) + "\n"


def peak_line(p: dict[str, Any], dtype: str) -> str:
  """The matmul peaks, and which one "of peak" is against."""
  line = (f"{p['matmul_size']}³ matmul: jax fp32 {p['fp32_matmul_flops'] / 1e9:.1f} GFLOP/s, "
          f"torch fp32 {p['torch_fp32_matmul_flops'] / 1e9:.1f} GFLOP/s")
  if dtype != "float32":
    line += (f", jax {dtype} {p[f'{dtype}_matmul_flops'] / 1e9:.1f} GFLOP/s, torch {dtype} "
             f"{p[f'torch_{dtype}_matmul_flops'] / 1e9:.1f} GFLOP/s")
  return (line + f". 'Of peak': against the machine's {dtype} limit, the higher of the two "
          f"({p['machine_peak_library']}'s, {p['machine_flops'] / 1e9:.1f} GFLOP/s); "
          f"'of jax's': against XLA's own matmul.")


def to_markdown(result: dict[str, Any]) -> str:
  m = result["machine"]
  dtype = m["compute_dtype"]
  lines = [f"Backend: {m['jax_backend']} ({m['device']}), {m['cpu_count']} CPUs "
           f"({m['cpu_model']}); jax {m['jax']}, torch {m['torch']} ({m['torch_threads']} "
           f"threads); XLA_FLAGS: {m['xla_flags'] or 'none'}; malloc keeps freed memory: "
           f"{m.get('malloc_keeps_freed_memory')}.",
           peak_line(result["peak"], dtype) if "peak" in result else "Matmul peaks: not "
           "measured.", "",
           "| shape | dense matmuls | ours train ex/s | peer train ex/s | train ratio | "
           "ours eval ex/s | peer eval ex/s | eval ratio | ours GFLOP/s (formula) | of peak | "
           "of jax's | peer GFLOP/s | XLA-executed GFLOP/step | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  fraction = lambda r, key: f"{r[key]:.0%}" if key in r else "–"  # noqa: E731
  for r in result["rows"]:
    lines.append(
        f"| {r['shape']}{_attention(r)} | {r.get('gemm', 'xla').upper()} | "
        f"{r['ours_train_examples_per_s']:.2f} | "
        f"{r['peer_train_examples_per_s']:.2f} | **{r['train_ratio']:.2f}×** | "
        f"{r['ours_eval_examples_per_s']:.1f} | {r['peer_eval_examples_per_s']:.1f} | "
        f"**{r['eval_ratio']:.2f}×** | {r['ours_train_flops_per_s'] / 1e9:.1f} | "
        f"{fraction(r, 'ours_fraction_of_peak')} | {fraction(r, 'ours_fraction_of_jax_peak')} | "
        f"{r['peer_train_flops_per_s'] / 1e9:.1f} | "
        f"{r['xla_executed_flops_per_step'] / 1e9:.1f}{_uncounted(r)} (formula "
        f"{r['model_flops_per_step'] / 1e9:.1f}) | {r['compile_s']:.1f} |")
  if result.get("mlm_rows"):
    lines += [""] + mlm_table(result["mlm_rows"])
  if "input_pipeline" in result:
    q = result["input_pipeline"]
    versus = (f" = {q['ratio_to_fastest_train_step']:.0f}× the fastest train step above"
              if "ratio_to_fastest_train_step" in q else "")
    lines += ["", f"Input pipeline on {q['examples']:,} SST-2 train sentences "
              f"({q['source']}): tokenisation "
              f"{q['tokenise_examples_per_s']:,.0f} ex/s, grouped batching "
              f"{q['batching_grouped_examples_per_s']:,.0f} ex/s, together "
              f"{q['pipeline_examples_per_s']:,.0f} ex/s{versus}.",
              "Padding: random batches padded to their own longest "
              f"{q['padding_random_own_longest']:.1%}, "
              f"random batches padded to buckets {q['padding_random_buckets']:.1%}, "
              f"length-grouped batches padded to buckets {q['padding_grouped_buckets']:.1%}."]
  if result.get("e2e"):
    lines += ["", e2e.markdown(result["e2e"])]
  if result.get("errors"):
    lines += ["", "Not measured (each part's error; the others ran):", ""]
    lines += [f"* {e['part']}: {e['error']}" for e in result["errors"]]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the table")
  parser.add_argument("--quick", action="store_true", help="tiny shapes, a few steps")
  parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10, quick 3)")
  parser.add_argument("--e2e", nargs="?", const=",".join(e2e.WORKLOADS), default="",
                      help="also end to end against transformers' Trainer: every workload, or "
                      f"a comma-separated list of {', '.join(e2e.WORKLOADS)}")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype of both systems (parameters stay float32)")
  parser.add_argument("--tokenizer", default=None,
                      help="tokenizer folder for the input-pipeline rates (default: embedded)")
  parser.add_argument("--mlm", action="store_true",
                      help="only the masked-LM steps (ours, every position, BertForMaskedLM)")
  parser.add_argument("--gemm", default="auto",
                      help="our dense layers' matmuls, comma-separated: auto (what a run picks "
                      "here), xla, mkl; a row per value")
  parser.add_argument("--attention", default="ours",
                      help="the attention core, comma-separated: ours, fused "
                      "(jax.nn.dot_product_attention: cuDNN's on a GPU); a row per value")
  parser.add_argument("--e2e-examples", type=int, default=0,
                      help="each workload trains on its first N examples (0: its own size)")
  parser.add_argument("--e2e-eval-examples", type=int, default=0,
                      help="each workload scores its first N eval examples (0: its own size)")
  args = parser.parse_args(argv)
  gemms = tuple(g.strip() for g in args.gemm.split(",") if g.strip())
  attentions = tuple(a.strip() for a in args.attention.split(",") if a.strip())
  if not attentions or not set(attentions) <= set(bert.ATTENTIONS):
    parser.error(f"--attention {args.attention!r}: a comma-separated list of "
                 f"{', '.join(bert.ATTENTIONS)}")
  if not gemms or not set(gemms) <= set(mkl_gemm.GEMMS):
    parser.error(f"--gemm {args.gemm!r}: a comma-separated list of {', '.join(mkl_gemm.GEMMS)}")
  workloads = tuple(w.strip() for w in args.e2e.split(",") if w.strip())
  if args.e2e and not (workloads and set(workloads) <= set(e2e.WORKLOADS)):
    parser.error(f"--e2e {args.e2e!r}: a comma-separated list of {', '.join(e2e.WORKLOADS)}")
  if workloads and args.dtype != "float32":
    parser.error("--e2e runs the float32 recipes of the configs; --dtype is for the shapes")
  # Both systems run in this process, so both get the same allocator settings.
  kept = host_memory.keep_freed_memory()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  args.out.mkdir(parents=True, exist_ok=True)
  if args.mlm:
    result = run_mlm(Report(args.out, "bench_mlm", {}, mlm_markdown), args.quick,
                     args.steps or (3 if args.quick else 10), args.dtype, gemms)
    print(mlm_markdown(result))
    if result["errors"]:
      sys.exit(1)
    return
  workdir = args.out / "e2e"
  if workloads and workdir.exists():
    parser.error(f"{workdir} exists; the e2e runs need a fresh folder")
  report = Report(args.out, "bench", {"machine": {"malloc_keeps_freed_memory": kept}},
                  to_markdown)
  result = run(report, args.quick, args.steps or (3 if args.quick else 10), args.dtype,
               args.tokenizer, gemms, attentions)
  if workloads:
    result["e2e"] = []
    for name in workloads:
      report.part(f"e2e {name}", lambda name=name: e2e.measure(
          name, workdir, args.quick, args.e2e_examples, args.e2e_eval_examples), "e2e")
  print(to_markdown(result))
  if result["errors"]:
    sys.exit(1)


if __name__ == "__main__":
  main()
