r"""One config on several device layouts: the same trained model, up to float32 summation order.

  python experiments/launch/layouts.py                 # runs what is missing, then layouts.md
  python experiments/launch/layouts.py --report        # only rebuild layouts.md / layouts.json

The embedded MiniLM on 960 SST-2 sentences (30 steps of 32, dropout on), evaluated on the whole
dev set, as 1 process x 1 device, the same with 4 micro-batches, 1 process x 4 devices (pmap
and shard_map) and 2 processes x 2 devices (both backends, `local_processes.sh`). Each layout
is compared with the first: the largest parameter difference after training, the training
losses and the dev metrics. CPU devices are virtual here (2 cores), so the wall times say what
the extra processes cost on one machine, not what more hardware gains.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNS = REPO / "runs" / "layouts"
COMMON = ["--config", "configs/sst2.py:quick", "--config.data.train_examples=960",
          "--config.log.every_steps=1", "--config.checkpoint.keep=1"]
# name -> (processes, devices per process, extra overrides)
LAYOUTS = {
    "1 process x 1 device": (1, 1, ["--config.parallel.num_devices=1"]),
    "1 x 1, grad_accum_steps=4": (1, 1, ["--config.parallel.num_devices=1",
                                         "--config.train.grad_accum_steps=4"]),
    "1 process x 4 devices, pmap": (1, 4, ["--config.parallel.backend=pmap"]),
    "1 process x 4 devices, shard_map": (1, 4, ["--config.parallel.backend=shard_map"]),
    "2 processes x 2 devices, pmap": (2, 2, ["--config.parallel.backend=pmap"]),
    "2 processes x 2 devices, shard_map": (2, 2, ["--config.parallel.backend=shard_map"]),
}


def workdir(name: str) -> pathlib.Path:
  return RUNS / name.replace(" ", "_").replace(",", "").replace("=", "")


def run(name: str) -> None:
  processes, devices, extra = LAYOUTS[name]
  folder = workdir(name)
  if (folder / "results.json").exists():
    return
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             DEVICES=str(devices))
  start = time.time()
  if processes == 1:
    command = [sys.executable, "-m", "research.main", *COMMON, *extra, "--workdir", str(folder)]
  else:
    command = ["bash", str(HERE / "local_processes.sh"), str(processes), *COMMON, *extra,
               "--workdir", str(folder)]
  print(f"{name}: {' '.join(command)}", flush=True)
  subprocess.run(command, cwd=REPO, env=env, check=True)
  (folder / "wall_seconds.json").write_text(json.dumps(time.time() - start))


def _state(folder: pathlib.Path):
  sys.path.insert(0, str(REPO))
  from research import checkpoints
  ckpts = checkpoints.Checkpoints(folder, keep=1, best_metric="accuracy", best_mode="max")
  try:
    state, _ = ckpts.restore_state(None)
  finally:
    ckpts.close()
  return state


def report() -> str:
  import jax
  import numpy as np
  names = [n for n in LAYOUTS if (workdir(n) / "results.json").exists()]
  base_name = names[0]
  base = _state(workdir(base_name))["params"]

  def losses(name):
    rows = [json.loads(line) for line in (workdir(name) / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if r["split"] == "train"])

  records = []
  for name in names:
    folder = workdir(name)
    results = json.loads((folder / "results.json").read_text())
    params = _state(folder)["params"]
    difference = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                     for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base)))
    dev = results["final"]["results"]["validation"]
    records.append({"layout": name, "processes": results.get("processes", 1),
                    "devices": results.get("devices"), "max_param_difference": difference,
                    "max_train_loss_difference": float(np.abs(losses(name)
                                                              - losses(base_name)).max()),
                    "dev_accuracy": dev["accuracy"], "dev_loss": dev["loss"],
                    "wall_seconds": json.loads((folder / "wall_seconds.json").read_text())})
  (HERE / "layouts.json").write_text(json.dumps(records, indent=2) + "\n")
  lines = ["# One config on six device layouts", "",
           "Regenerate: `python experiments/launch/layouts.py` (see its docstring). The "
           "embedded MiniLM, 30 steps of 32 SST-2 sentences, dropout on; differences against "
           f"*{base_name}*.", "",
           "| layout | processes | devices | max \\|Δ param\\| | max \\|Δ train loss\\| | "
           "dev accuracy | dev loss | wall time |",
           "|---|---|---|---|---|---|---|---|"]
  for r in records:
    lines.append(f"| {r['layout']} | {r['processes']} | {r['devices']} | "
                 f"{r['max_param_difference']:.1e} | {r['max_train_loss_difference']:.1e} | "
                 f"{r['dev_accuracy']:.4f} | {r['dev_loss']:.6f} | "
                 f"{r['wall_seconds'] / 60:.1f} min |")
  text = "\n".join(lines) + "\n"
  (HERE / "layouts.md").write_text(text)
  return text


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--report", action="store_true", help="only rebuild the table")
  args = parser.parse_args()
  if not args.report:
    for name in LAYOUTS:
      run(name)
  print(report())


if __name__ == "__main__":
  main()
