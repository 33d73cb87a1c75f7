"""`<workdir>/run.json`: what produced a run, so that a number in a table can be traced back.

It holds the code (git commit, whether the tree was dirty and a hash of the diff), the command
line, the package versions, the devices, what computes (dtype, dense matmuls and why, CPU,
XLA_FLAGS: `builder.ModelSetup.compute`), where the data was read (and its fingerprints, as in
data.json), the start and end times, the examples/s and tokens/s of training and evaluation,
and where each session's wall time went (`WallTime`). A resumed run appends a session: its own
command, code, versions, throughput and wall time; the top-level fields are the first
session's; `ended` and `outcome` the last one's, and `throughput` the run's as a whole.
`research.report` reads it to show, and warn about, the code and versions behind a table.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from typing import Any

import jax

from research import writers

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers",
            "datasets", "numpy", "ml-collections")
REPO = pathlib.Path(__file__).resolve().parents[1]


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=20,
                         check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.decode("utf-8", "replace")


def command() -> str:
  """The command line that started this process, as it would be typed."""
  argv = list(sys.argv)
  if argv and argv[0].endswith(os.path.join("research", "main.py")):
    argv[:1] = ["python", "-m", "research.main"]
  return shlex.join(argv)


def code_version() -> dict[str, Any]:
  """The commit of this checkout, whether tracked files differ from it (`dirty`, with a hash
  of `git diff HEAD` to tell two dirty trees apart), and untracked files under research/ or
  configs/; {'commit': None} outside a git checkout."""
  commit = _git("rev-parse", "HEAD")
  if commit is None:
    return {"commit": None, "note": f"{REPO} is not a git checkout (or git is missing)"}
  diff = _git("diff", "HEAD", "--binary") or ""
  untracked = (_git("ls-files", "--others", "--exclude-standard", "research", "configs")
               or "").split()
  return {"commit": commit.strip(), "dirty": bool(diff or untracked),
          "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None,
          "untracked": untracked}


def package_versions() -> dict[str, str | None]:
  versions: dict[str, str | None] = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def devices(dp) -> dict[str, Any]:
  return {"backend": jax.default_backend(), "kind": jax.devices()[0].device_kind,
          "devices": dp.num_devices, "processes": dp.process_count,
          "parallel": dp.backend, "host": platform.node()}


def hub_revision(name: str) -> str | None:
  """The commit of a hub dataset as the hub reports it now (None when it cannot be asked)."""
  try:
    from huggingface_hub import HfApi
    return HfApi().dataset_info(name, timeout=10).sha
  except Exception:  # offline, private, or an old huggingface_hub: the name stands alone
    return None


@dataclasses.dataclass
class Throughput:
  """This session's training steps and evaluations: examples, real (unpadded) tokens, and
  the seconds they took (training time excludes evaluation and checkpointing, and includes
  compilation)."""

  train_examples: int = 0
  train_tokens: int = 0
  train_seconds: float = 0.0
  eval_examples: int = 0
  eval_tokens: int = 0
  eval_seconds: float = 0.0

  def as_record(self) -> dict[str, dict[str, float]]:
    return {part: _rates(getattr(self, f"{part}_examples"), getattr(self, f"{part}_tokens"),
                         getattr(self, f"{part}_seconds")) for part in ("train", "eval")}


@dataclasses.dataclass
class WallTime:
  """Where this session's wall time went, in seconds: what a user waits for, split so that a
  slow run says why (a compile per bucket, a starved input pipeline, evaluations, saves)."""

  prepare: float = 0.0        # data, tokenizer, model, init, restore: before the first step
  compile: float = 0.0        # the train and eval steps' compilations (or cache reads)
  input: float = 0.0          # the loop waiting for its next training batch
  train_steps: float = 0.0    # the steps themselves, reading their metrics, logging
  evaluation: float = 0.0     # evaluations and keeping the best, their compilations excluded
  checkpointing: float = 0.0  # periodic and final train-state saves
  other: float = 0.0          # the rest: results, closing files

  def as_record(self) -> dict[str, float]:
    return {k: round(v, 3) for k, v in dataclasses.asdict(self).items()}

  def describe(self) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in
                     dataclasses.asdict(self).items())


def _rates(examples: float, tokens: float, seconds: float) -> dict[str, float]:
  return {"examples": examples, "tokens": tokens, "seconds": seconds,
          "examples_per_sec": examples / seconds if seconds else 0.0,
          "tokens_per_sec": tokens / seconds if seconds else 0.0}


def _total(sessions: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  total = {}
  for part in ("train", "eval"):
    sums = [sum(s["throughput"][part][k] for s in sessions if s.get("throughput"))
            for k in ("examples", "tokens", "seconds")]
    total[part] = _rates(*sums)
  return total


class RunRecord:
  """run.json of one workdir, written by process 0 when a session starts and ends."""

  def __init__(self, workdir: pathlib.Path, *, dp, data_source, data: dict[str, Any],
               start_step: int, compute: dict[str, str] | None = None):
    self.path = workdir / "run.json"
    source = {"location": data_source.location, "origin": data_source.origin}
    if data_source.origin == "hub":
      source["revision"] = hub_revision(data_source.location)
    self.session = {"started": now(), "ended": None, "outcome": None, "command": command(),
                    "cwd": os.getcwd(), "code": code_version(),
                    "packages": package_versions(), "devices": devices(dp),
                    "compute": compute or {},
                    "data": {"source": source, "splits": data}, "first_step": start_step,
                    "last_step": None, "throughput": None}
    previous = (writers.read_json(self.path).get("sessions", [])
                if self.path.exists() else [])
    # A session that died without writing its end (kill -9) is kept as it was.
    self.sessions = previous + [self.session]
    self._write()

  def finish(self, step: int, throughput: Throughput, outcome: str,
             wall: WallTime | None = None) -> dict[str, Any]:
    """Ends this session: 'finished', 'pruned at step N' (by a tuner, `research.tune`),
    'stopped by a signal' (to be resumed) or 'failed: ...'."""
    self.session.update(ended=now(), outcome=outcome, last_step=step,
                        throughput=throughput.as_record(),
                        wall_seconds=wall.as_record() if wall else None)
    return self._write()

  def _write(self) -> dict[str, Any]:
    first = self.sessions[0]
    record = {key: first.get(key) for key in ("command", "cwd", "code", "packages", "devices",
                                              "compute", "data")}
    record.update(started=first["started"], ended=self.session["ended"],
                  outcome=self.session["outcome"], throughput=_total(self.sessions),
                  sessions=self.sessions)
    writers.write_json(self.path, record)
    return record
