"""Our train step and eval forward with XLA's and with MKL's dense matmuls, interleaved.

  python experiments/perf/gemm_study.py --dtype float32 --rounds 3 --out gemm_f32.json

The bench's peer moves ±10% between rows, so its ratios cannot tell two of our variants apart
by less; here the variants alternate in one process (XLA, MKL, XLA, MKL, ...), on the bench's
shapes and weights, and each round's median step times are kept. NOTES.md, attempt 22.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from research import host_memory  # noqa: E402

host_memory.keep_freed_memory()

from benchmarks import bench  # noqa: E402
from research.models import hf_io, mkl_gemm  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  result = {"cpu": mkl_gemm.cpu_description(), "dtype": args.dtype, "rounds": args.rounds,
            "steps": args.steps, "shapes": {}}
  for name, source, batch_size, length in bench.SHAPES:
    if isinstance(source, str):
      config, _ = hf_io.load_config(hf_io.embedded_checkpoint_dir())
      reference = bench.reference_model(str(hf_io.embedded_checkpoint_dir()))
    else:
      config, reference = source, bench.reference_model(source)
    batch = bench._synthetic_batch(batch_size, length, config.vocab_size)
    models = {gemm: bench.ours_from_reference(reference, dataclasses.replace(config, gemm=gemm),
                                              args.dtype) for gemm in ("xla", "mkl")}
    times = {gemm: {"train_s": [], "eval_s": []} for gemm in models}
    for _ in range(args.rounds):
      for gemm, (model, params) in models.items():
        measured = bench.time_ours(model, params, batch, args.steps)
        for key in ("train_s", "eval_s"):
          times[gemm][key].append(measured[key])
        print(f"{name} B{batch_size}×S{length} {gemm}: train {measured['train_s'] * 1e3:.0f} ms, "
              f"eval {measured['eval_s'] * 1e3:.0f} ms", file=sys.stderr, flush=True)
    shape = f"{name} B{batch_size}×S{length}"
    result["shapes"][shape] = {
        "times": times,
        "mkl_over_xla_train": statistics.median(times["xla"]["train_s"])
        / statistics.median(times["mkl"]["train_s"]),
        "mkl_over_xla_eval": statistics.median(times["xla"]["eval_s"])
        / statistics.median(times["mkl"]["eval_s"])}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
  for shape, r in result["shapes"].items():
    print(f"| {shape} | {args.dtype} | {r['mkl_over_xla_train']:.2f}× | "
          f"{r['mkl_over_xla_eval']:.2f}× |")


if __name__ == "__main__":
  main()
