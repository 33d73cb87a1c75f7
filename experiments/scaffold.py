"""What every experiment runner (experiments/*/run.py) does around its runs, in one place: a
finished run's result file carries the code that produced it, the files are read back to build
results.md, results.md says which commit its numbers came from, and `--seeds` / `--report` mean
the same in every runner.

The code block of a run trained by `research.train` is its workdir's run.json's (`commit`,
`dirty`, the package versions: research/run_record.py); a run with no run.json (transformers'
Trainer, the reference) gets the same block computed for this process by run_record's own
functions. Result files written before the block existed have none; for those the report says
so and names the last commit that changed each file in git, an upper bound on its code.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
from typing import Any

# Result files written before this date carry no code block.
CODE_BLOCK_SINCE = "2026-12-07"


def code_block(workdir: pathlib.Path | None = None) -> dict[str, Any]:
  """{'commit', 'dirty', 'versions', 'source'} of a run: from `workdir`/run.json when there is
  one (its first session's code, and every session's commit when a resumed run changed code),
  else this process's, as run_record computes them."""
  run_json = workdir / "run.json" if workdir is not None else None
  if run_json is not None and run_json.exists():
    record = json.loads(run_json.read_text())
    block = {**_commit_fields(record["code"]), "versions": record["packages"],
             "source": "run.json"}
    commits = list(dict.fromkeys(s["code"].get("commit") for s in record.get("sessions", [])))
    if len(commits) > 1:
      block["session_commits"] = commits
    return block
  from research import run_record
  return {**_commit_fields(run_record.code_version()),
          "versions": run_record.package_versions(), "source": "this process"}


def _commit_fields(code: dict[str, Any]) -> dict[str, Any]:
  return {"commit": code.get("commit"), "dirty": code.get("dirty"),
          "diff_sha256": code.get("diff_sha256")}


def write_result(path: pathlib.Path, record: dict[str, Any],
                 workdir: pathlib.Path | None = None) -> dict[str, Any]:
  """Writes a finished run's `record` to `path` with its code block (see `code_block`)."""
  record = {**record, "code": code_block(workdir)}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1) + "\n")
  return record


def read_results(folder: pathlib.Path, pattern: str = "*.json") -> list[dict[str, Any]]:
  """The result files in `folder`, in name order."""
  return [json.loads(p.read_text()) for p in sorted(folder.glob(pattern))]


def add_run_arguments(parser: argparse.ArgumentParser, seeds, seeds_help: str = "") -> None:
  """`--seeds` (default `seeds`) and `--report` (only rebuild results.md from the result
  files, training nothing)."""
  parser.add_argument("--seeds", nargs="*", type=int, default=seeds, help=seeds_help or None)
  parser.add_argument("--report", action="store_true", help="only rebuild results.md")


def short_commit(code: dict[str, Any] | str) -> str:
  """'a1b2c3d', '+dirty' when the tree differed from it; a result file's older code string (the
  learning checks wrote 'a1b2c3d+dirty' themselves) as it is."""
  if isinstance(code, str):
    return code
  if not code.get("commit"):
    return "unknown"
  return code["commit"][:7] + ("+dirty" if code.get("dirty") else "")


def commit_line(paths, home: pathlib.Path) -> str:
  """One sentence for results.md: the commit(s) the result files `paths` came from, each with
  the runs it covers (named relative to `home`, the experiment's results folder, or as
  <experiment>/results/<name> when read from another experiment's); for files without a code
  block, the last commit that changed them in git (an upper bound on their code), or that none
  did yet."""
  recorded: dict[str, list[str]] = {}
  committed: dict[str, list[str]] = {}
  written_in: dict[pathlib.Path, dict[str, str]] = {}
  for path in paths:
    name = str(path.with_suffix("").relative_to(
        home if path.is_relative_to(home) else path.parents[2]))
    code = json.loads(path.read_text()).get("code")
    if code is not None:
      recorded.setdefault(short_commit(code), []).append(name)
      continue
    if path.parent not in written_in:
      written_in[path.parent] = _commits_writing(path.parent)
    committed.setdefault(written_in[path.parent].get(path.name, ""), []).append(name)
  parts = []
  if recorded:
    parts.append("runs at " + "; ".join(f"{commit} ({_names(names)})"
                                        for commit, names in recorded.items()))
  if committed:
    unknown = committed.pop("", [])
    text = (f"commit not recorded (runs before {CODE_BLOCK_SINCE}, whose result files carry "
            f"no code block)")
    if committed:
      text += ("; results committed in " + "; ".join(
          f"{commit} ({_names(names)})" for commit, names in committed.items())
          + " (the last commit that changed each file: an upper bound on its code)")
    if unknown:
      text += f"; not yet committed: {_names(unknown)}"
    parts.append(text)
  return "Code: " + (". ".join(parts) if parts else "no results yet") + "."


def _commits_writing(folder: pathlib.Path) -> dict[str, str]:
  """{file name: short hash of the last commit that changed it} for the files git knows in
  `folder` (a file deleted since is listed too, harmlessly); {} outside a git checkout."""
  try:
    out = subprocess.run(["git", "-C", str(folder), "log", "--name-only", "--relative",
                          "--no-renames", "--format=%x00%h", "--", "."],
                         capture_output=True, text=True, timeout=60, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return {}
  found = {}
  for entry in out.split("\x00")[1:]:
    commit, *names = entry.split()
    for name in names:
      found.setdefault(name, commit[:7])  # git log lists the newest commit first
  return found


def _names(stems: list[str]) -> str:
  """Result file names, runs differing only by seed merged: 'rte__ours__seed0-2'."""
  seeds: dict[str, list[int]] = {}
  for stem in stems:
    match = re.fullmatch(r"(.*seed)(\d+)", stem)
    prefix, seed = (match[1], int(match[2])) if match else (stem, None)
    seeds.setdefault(prefix, [])
    if seed is not None:
      seeds[prefix].append(seed)
  return ", ".join(prefix + _seed_ranges(sorted(found)) for prefix, found in seeds.items())


def _seed_ranges(seeds: list[int]) -> str:
  """[0, 1, 2, 4] -> '0-2,4'."""
  runs: list[list[int]] = []
  for seed in seeds:
    if runs and seed == runs[-1][-1] + 1:
      runs[-1].append(seed)
    else:
      runs.append([seed])
  return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
