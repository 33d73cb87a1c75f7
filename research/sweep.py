r"""Runs the sweep that a config file declares next to its config (`get_hyper`).

  python -m research.sweep --config configs/glue.py:rte --workdir runs/rte_lr
  python -m research.sweep --config configs/glue.py:rte --workdir runs/rte_lr --workers 2
  python -m research.sweep --config configs/glue.py:rte --workdir runs/rte_lr --dry-run

Every point runs `python -m research.main` in its own sub-workdir named after its overrides
(`optimizer.learning_rate=3e-05,seed=1`), so a finished point is skipped (its results.json
exists) and an interrupted one resumes from its checkpoint: rerunning the command completes
what is missing. `--dry-run` only writes and prints one command per point (commands.txt), for a
cluster scheduler: a SLURM array can run line $SLURM_ARRAY_TASK_ID of it. `--max-points N` runs
at most N of the missing points and stops (to fit a job's time limit). Each point prints its
place among those to run (`[3/12]`) as it starts and as it ends. When all points are
done, the report is written (`python -m research.report <workdir>`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import json
import pathlib
import re
import shlex
import subprocess
import sys
import threading
import time
from typing import Any

import ml_collections

from research import config_lib, hyper


class SweepError(ValueError):
  """A sweep that cannot run (no get_hyper, an empty or clashing sweep, a key that is not a
  config field); the message names it. `main` prints it in one line and exits with 2."""


def load_config_file(spec: str):
  """'configs/glue.py:rte' -> (module, 'rte')."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise SweepError(f"--config {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"sweep_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, arg or None


def point_name(point: dict[str, Any]) -> str:
  """The point's sub-workdir name: its overrides, as one path component inside the sweep folder
  (a value such as '../x' cannot lead out of it); long names end in a digest of the point."""
  name = ",".join(f"{key.removeprefix('config.')}={value}" for key, value in point.items())
  safe = re.sub(r"[^\w.,=+-]", "_", name)
  if len(safe) > 200:
    safe = f"{safe[:180]}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"
  return safe


def apply_overrides(config: ml_collections.ConfigDict, point: dict[str, Any]) -> None:
  """Sets `config.a.b=v` for each key; a key that is not a field is an error."""
  for key, value in point.items():
    if not key.startswith("config."):
      raise SweepError(f"sweep key {key!r} must start with 'config.'")
    try:
      config_lib.set_field(config, key.removeprefix("config."), value)
    except (KeyError, AttributeError, TypeError) as e:
      raise SweepError(f"sweep key {key!r} does not fit the config: {e}") from e


def command(config_spec: str, workdir: pathlib.Path, point: dict[str, Any]) -> list[str]:
  return [sys.executable, "-m", "research.main", "--config", config_spec,
          "--workdir", str(workdir)] + [f"--{key}={value}" for key, value in point.items()]


def plan(config_spec: str, workdir: pathlib.Path) -> list[dict[str, Any]]:
  """The points of the sweep, each checked against the config before anything runs."""
  module, arg = load_config_file(config_spec)
  if not hasattr(module, "get_hyper"):
    raise SweepError(f"{config_spec} declares no sweep (def get_hyper(hyper): ...)")
  points = module.get_hyper(hyper)
  if not points:
    raise SweepError(f"the sweep of {config_spec} is empty")
  names = [point_name(p) for p in points]
  first_with_name: dict[str, int] = {}
  for i, name in enumerate(names):
    j = first_with_name.setdefault(name, i)
    if j != i:
      what = ("repeats a point" if points[j] == points[i] else
              "has two points whose values differ only in characters a folder name cannot hold")
      raise SweepError(f"the sweep {what}: point {j + 1} {points[j]} and point {i + 1} "
                       f"{points[i]} would both run in {name}")
  out = []
  for point, name in zip(points, names):
    config = module.get_config(arg)
    apply_overrides(config, point)
    config_lib.validate(config)
    out.append({"name": name, "overrides": point, "workdir": str(workdir / name),
                "command": command(config_spec, workdir / name, point)})
  return out


def status(point: dict[str, Any]) -> str:
  workdir = pathlib.Path(point["workdir"])
  if (workdir / "results.json").exists():
    return "done"
  return "partial" if (workdir / "checkpoints").exists() else "new"


_print_lock = threading.Lock()  # points run in threads: one progress line at a time


def say(line: str) -> None:
  with _print_lock:
    print(line, flush=True)


def run_point(point: dict[str, Any], position: str) -> tuple[dict[str, Any], int, float]:
  """Runs one point; `position` ('[3/12]') starts its progress lines."""
  say(f"{position} starting {point['name']}")
  workdir = pathlib.Path(point["workdir"])
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  with (workdir / "main.log").open("a") as log:
    code = subprocess.run(point["command"], stdout=log, stderr=subprocess.STDOUT).returncode
  return point, code, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file[:arg] with get_hyper")
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--workers", type=int, default=1, help="points run at once")
  parser.add_argument("--dry-run", action="store_true", help="write and print the commands")
  parser.add_argument("--max-points", type=int, default=0, help="run at most N missing points")
  args = parser.parse_args(argv)
  try:
    points = plan(args.config, args.workdir)
  except (SweepError, config_lib.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  args.workdir.mkdir(parents=True, exist_ok=True)
  (args.workdir / "sweep.json").write_text(json.dumps(
      {"config": args.config, "points": [{k: p[k] for k in ("name", "overrides")}
                                         for p in points]}, indent=2, default=str) + "\n")
  lines = [shlex.join(p["command"]) for p in points]
  (args.workdir / "commands.txt").write_text("\n".join(lines) + "\n")
  if args.dry_run:
    print("\n".join(lines))
    return 0
  todo = [p for p in points if status(p) != "done"]
  print(f"{len(points)} points: {len(points) - len(todo)} done, "
        f"{sum(status(p) == 'partial' for p in todo)} to resume, "
        f"{sum(status(p) == 'new' for p in todo)} new", flush=True)
  if args.max_points:
    todo = todo[:args.max_points]
  failed = []
  with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
    positions = [f"[{i}/{len(todo)}]" for i in range(1, len(todo) + 1)]
    for position, (point, code, seconds) in zip(positions,
                                                pool.map(run_point, todo, positions)):
      outcome = "done" if code == 0 else f"FAILED (exit {code}, see main.log)"
      say(f"{position} {point['name']}: {outcome} in {seconds / 60:.1f} min")
      if code:
        failed.append(point["name"])
  if failed:
    print(f"error: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  if all(status(p) == "done" for p in points):
    from research import report
    print(report.write_report(args.workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
