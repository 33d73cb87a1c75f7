"""Digests of tiny runs of every task kind: proof that a refactor changed nothing a user sees.

  python experiments/refactor/digests.py --out experiments/refactor/digests_after.json
  python experiments/refactor/digests.py --out /tmp/d.json --only sst2 qa_v2 --keep /tmp/runs
  python experiments/refactor/digests.py --compare experiments/refactor/digests_before.json \
      experiments/refactor/digests_after.json        # a markdown table; exit 1 if any differs

Each case is one `python -m research.main` (the command users run: a config file and
`--config.x=y` overrides) of a tiny random-init model on a slice of the real data in
$RESEARCH_DATA_DIR, seeded so that it is deterministic. Per case it records the sha256 of:
  params       every leaf (path, dtype, shape, bytes) of the final checkpoint's parameters
  results      results.json's "final" and "best" blocks (canonical JSON, sorted keys)
  results_rest the rest of results.json (steps, examples, parameter counts, compiles, ...)
               without its times and rates
  metrics      metrics.jsonl without its timing fields (examples_per_sec, ...)
  per_example  the eval/*_per_example.json files (research.compare's input), bytes as written
  eval_files   the other eval/*.json files (reports, SQuAD's predictions, n-best, null odds)
  checkpoint   (RoBERTa, ELECTRA) the transformers checkpoint the run starts from
Times and paths (the temporary folder, $RESEARCH_DATA_DIR) are left out of every digest; the
seconds each case took are recorded beside them. A refactor records a file before its first
structural commit and one after its last (each twice, to see that the runs reproduce), and
`--compare` says which case changed in what. The runs and so the digests depend on the
platform and the library versions: the file records them, and --compare names a difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parents[2]
CODE = ("research", "configs", "tests/helpers.py")  # what shapes the runs (the `dirty` flag)
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers",
            "tokenizers", "datasets", "torch")
CASE_TIMEOUT = 900  # seconds one case may take before it is stopped as hung

# Times and rates (not results): examples/s, elapsed, ETA, wall and train seconds, timestamps.
TIMING_KEY = re.compile(r"(^|_)(per_sec|seconds|secs|elapsed|eta|time|timestamp|wall)(_|$)",
                        re.IGNORECASE)

# The tiny shapes of tests/helpers.py's tiny_config, as overrides: a 1-layer, 32-wide random
# BERT with the embedded tokenizer, one length bucket (one train and one eval program), 2 epochs
# (two evaluations: a best and a final checkpoint).
TINY = {
    "seed": 0,
    "model.checkpoint": "",
    "model.tokenizer": "embedded",
    "model.architecture.hidden_size": 32,
    "model.architecture.num_hidden_layers": 1,
    "model.architecture.num_attention_heads": 2,
    "model.architecture.intermediate_size": 64,
    "data.train_examples": 192,
    "data.eval_examples": 48,
    "data.max_length": 64,
    "data.length_buckets": (64,),
    "train.batch_size": 16,
    "train.num_epochs": 2.0,
    "eval.batch_size": 16,
    "log.every_steps": 1,
    "checkpoint.every_steps": 5,
    "parallel.num_devices": 1,
}
# A checkpoint saved by transformers brings its shapes and tokenizer (tests/helpers.py's
# family_checkpoint: 2 layers, 32 wide, 64 positions).
FROM_CHECKPOINT = {k: v for k, v in TINY.items() if not k.startswith("model.")}


class DigestError(ValueError):
  """Bad input or a failed case: one line on stderr, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Case:
  config: str  # config file[:arg]
  overrides: dict[str, Any]
  processes: int = 1
  # (root folder) -> extra overrides, for a case whose inputs are made first (in `root`)
  prepare: Callable[[pathlib.Path], dict[str, Any]] | None = None


# tests/helpers.py's family_checkpoint (seeded), in a process of its own (torch, the tokenizer
# trainer's output). Its ELECTRA tokenizer (tokenizers' WordPiece trainer) is not the same from
# one process to the next: the trainer breaks ties between pairs by ids given to the '##'
# alphabet in hash-map order, so vocabularies differ. It is replaced by a WordPiece vocabulary
# of the same size made in a fixed order from the same text (ELECTRA's tokenizer class, lower
# case): specials, characters, '##' characters, words by frequency.
FAMILY_CHECKPOINT = """
import collections, json, pathlib, re, sys, unicodedata
sys.path[:0] = ["tests", "."]
import helpers, transformers
path, model_type = pathlib.Path(sys.argv[1]), sys.argv[2]
helpers.family_checkpoint(path, model_type, seed=0)
if model_type == "electra":
  size = json.loads((path / "config.json").read_text())["vocab_size"]
  text = unicodedata.normalize("NFD", helpers.FAMILY_TEXT.lower())
  words = re.findall(r"\\w+|[^\\w\\s]", "".join(c for c in text if unicodedata.category(c) != "Mn"))
  chars = sorted(set("".join(words)))
  counts = collections.Counter(w for w in words if len(w) > 1)
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars),
           *sorted(counts, key=lambda w: (-counts[w], w))][:size]
  vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (path / name).unlink()
  transformers.ElectraTokenizerFast(vocab={t: i for i, t in enumerate(vocab)},
                                    do_lower_case=True).save_pretrained(path)
"""


def _family(model_type: str) -> Callable[[pathlib.Path], dict[str, Any]]:
  """A random-init checkpoint of a family saved by transformers (FAMILY_CHECKPOINT)."""
  def prepare(root: pathlib.Path) -> dict[str, Any]:
    path = root / f"{model_type}-checkpoint"
    if not path.exists():
      done = subprocess.run([sys.executable, "-c", FAMILY_CHECKPOINT, str(path), model_type],
                            cwd=REPO, env=_environment(), capture_output=True, text=True,
                            timeout=CASE_TIMEOUT)
      if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        raise DigestError(f"the {model_type} checkpoint of tests/helpers.py: {lines[-1]}")
    return {"model.checkpoint": str(path), "model.tokenizer": ""}
  return prepare


def _squad_v1(root: pathlib.Path) -> dict[str, Any]:
  """SQuAD 1.1 has no unanswerable questions: the answerable ones of squad_v2_dev5, the first
  article's for training, the others' for evaluation (as tests/test_qa.py splits it)."""
  folder = root / "squad_v1_dev5"
  if not folder.exists():
    source = _data_dir() / "squad_v2_dev5" / "validation.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    rows = [r for r in rows if r["answers"]["text"]]
    folder.mkdir()
    first = rows[0]["title"]
    for split, keep in (("train", True), ("validation", False)):
      (folder / f"{split}.jsonl").write_text("".join(
          json.dumps(r) + "\n" for r in rows if (r["title"] == first) == keep))
  return {"data.dataset": str(folder), "data.local_name": ""}


def _relations(representation: str, markers: bool = True) -> Case:
  arg = f"representation={representation}" + ("" if markers else ",markers=0")
  return Case(f"configs/semeval2010_task8.py:{arg}",
              dict(TINY, **{"data.validation_from_train": 48}))


QA = {"data.max_length": 128, "data.length_buckets": (128,), "task.doc_stride": 32,
      "data.train_examples": 64, "eval.batch_size": 32}

CASES: dict[str, Case] = {
    "sst2": Case("configs/glue.py:sst2", TINY),
    "rte": Case("configs/glue.py:rte", TINY),  # a sentence pair
    "stsb": Case("configs/glue.py:stsb", TINY),  # regression
    "conll2003": Case("configs/conll2003.py", TINY),
    "relations_cls": _relations("cls"),
    "relations_entity_start": _relations("entity_start"),
    "relations_entity_mean": _relations("entity_mean"),
    "relations_no_markers": _relations("entity_mean", markers=False),
    "qa_v1": Case("configs/squad.py", dict(TINY, **QA), prepare=_squad_v1),
    # squad_v2_dev5 has only a validation split: trained on its first questions, evaluated on
    # its first questions too (a digest needs no held-out score).
    "qa_v2": Case("configs/squad.py:v2", dict(TINY, **QA, **{
        "data.local_name": "squad_v2_dev5", "data.train_split": "validation"})),
    "mlm": Case("configs/mlm.py:task=sst2", TINY),
    "mlm_streamed": Case("configs/mlm.py:task=sst2,stream,steps=16",
                         dict(TINY, **{"data.shuffle_buffer": 64})),
    # Two processes of one CPU device each, dropout on (the random init's 0.1).
    "two_processes": Case("configs/glue.py:sst2", dict(TINY, **{"parallel.num_devices": 0}),
                          processes=2),
    "roberta": Case("configs/glue.py:mrpc", FROM_CHECKPOINT, prepare=_family("roberta")),
    "electra": Case("configs/conll2003.py", FROM_CHECKPOINT, prepare=_family("electra")),
}


# ---- digests ---------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
  return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def untimed(value: Any, root: str) -> Any:
  """`value` without the keys that hold times or rates, and with the temporary folder's and
  $RESEARCH_DATA_DIR's paths written as <root> and <data>."""
  if isinstance(value, dict):
    return {k: untimed(v, root) for k, v in value.items() if not TIMING_KEY.search(k)}
  if isinstance(value, list):
    return [untimed(v, root) for v in value]
  if isinstance(value, str):
    return value.replace(root, "<root>").replace(str(_data_dir()), "<data>")
  return value


def params_digest(workdir: pathlib.Path) -> str:
  """sha256 over the parameters of the newest checkpoint (checkpoints/<step>/state, as
  tests/helpers.py `final_state` restores it): each leaf's path, dtype, shape and bytes, in
  sorted path order. Read with orbax alone, so that the code under refactor cannot change how."""
  import numpy as np
  import orbax.checkpoint as ocp
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  if not steps:
    raise DigestError(f"{workdir}: no checkpoint")
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(workdir / "checkpoints" / str(max(steps)) / "state")
  leaves = {}

  def walk(node: Any, path: str) -> None:
    if isinstance(node, dict):
      for key, child in node.items():
        walk(child, f"{path}/{key}")
    else:
      leaves[path] = np.asarray(node)
  walk(state["params"], "params")
  digest = hashlib.sha256()
  for path in sorted(leaves):
    array = np.ascontiguousarray(leaves[path])
    digest.update(f"{path}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def run_digests(workdir: pathlib.Path, root: str) -> tuple[dict[str, str], dict[str, Any]]:
  """(the digests of a finished run, its results.json "final" block for the reader)."""
  results = json.loads((workdir / "results.json").read_text())
  blocks = {k: results.get(k) for k in ("final", "best")}
  rest = {k: v for k, v in results.items() if k not in blocks}
  rows = [untimed(json.loads(line), root)
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  eval_dir = workdir / "eval"
  per_example = sorted(eval_dir.glob("*_per_example.json"))
  others = sorted(set(eval_dir.glob("*.json")) - set(per_example))
  digests = {
      "params": params_digest(workdir),
      "results": _sha(_canonical(untimed(blocks, root))),
      "results_rest": _sha(_canonical(untimed(rest, root))),
      "metrics": _sha(_canonical(rows)),
      "per_example": _sha(b"".join(p.name.encode() + b"\0" + p.read_bytes() + b"\0"
                                   for p in per_example)),
      "eval_files": _sha(_canonical({p.name: untimed(json.loads(p.read_text()), root)
                                     for p in others})),
  }
  return digests, untimed(blocks["final"], root)


def checkpoint_digest(path: pathlib.Path) -> str:
  """sha256 of every file of a saved transformers checkpoint (its name and bytes)."""
  return _sha(b"".join(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes() + b"\0"
                       for f in sorted(path.rglob("*")) if f.is_file()))


# ---- running the cases -----------------------------------------------------------------------


def _data_dir() -> pathlib.Path:
  value = os.environ.get("RESEARCH_DATA_DIR")
  if not value:
    raise DigestError("RESEARCH_DATA_DIR is not set: the cases read the real data there "
                      "(e.g. RESEARCH_DATA_DIR=/work/shared/data)")
  path = pathlib.Path(value).expanduser().resolve()
  if not path.is_dir():
    raise DigestError(f"RESEARCH_DATA_DIR={value} is not a folder")
  return path


def _value(value: Any) -> str:
  if isinstance(value, tuple):
    return "(" + ",".join(_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _environment() -> dict[str, str]:
  env = dict(os.environ, RESEARCH_DATA_DIR=str(_data_dir()), HF_HUB_OFFLINE="1",
             HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  env.pop("XLA_FLAGS", None)  # the caller's XLA settings would change the runs
  return env


def run_case(name: str, case: Case, root: pathlib.Path) -> dict[str, Any]:
  """Runs one case in `root/name` and returns its record (digests, seconds, final results)."""
  start = time.perf_counter()
  overrides = dict(case.overrides)
  if case.prepare:
    overrides.update(case.prepare(root))
  workdir = root / name
  command = [sys.executable, "-m", "research.main", "--config", case.config,
             "--workdir", str(workdir)]
  command += [f"--config.{k}={_value(v)}" for k, v in overrides.items()]
  env = _environment()
  port = _free_port()
  procs, logs = [], []
  for i in range(case.processes):
    extra = []
    if case.processes > 1:
      extra = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={case.processes}",
               f"--process_id={i}"]
      env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    logs.append(pathlib.Path(f"{workdir}.p{i}.log"))
    with logs[-1].open("w") as log:
      procs.append(subprocess.Popen(command + extra, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
  deadline = time.monotonic() + CASE_TIMEOUT
  codes = []
  for proc in procs:
    try:
      codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1)))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise DigestError(f"case {name}: python -m research.main still running after "
                        f"{CASE_TIMEOUT} s, stopped (log: {logs[0]})") from None
  for code, log in zip(codes, logs):
    if code != 0:
      lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
      raise DigestError(f"case {name}: python -m research.main exited with {code}: "
                        f"{lines[-1].strip()} (log: {log})")
  digests, final = run_digests(workdir, str(root))
  record = {"digests": digests, "final": final}
  if "model.checkpoint" in overrides and overrides["model.checkpoint"]:
    record["digests"]["checkpoint"] = checkpoint_digest(pathlib.Path(overrides["model.checkpoint"]))
  record["seconds"] = round(time.perf_counter() - start, 1)
  record["command"] = " ".join(["python", *(c.replace(str(root), "<root>") for c in command[1:])])
  return record


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                        check=True).stdout.strip()


def _header() -> dict[str, Any]:
  versions = {}
  for package in VERSIONS:
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  return {"commit": _git("rev-parse", "HEAD"),
          "dirty": bool(_git("status", "--porcelain", "--", *CODE)),
          "python": platform.python_version(), "machine": platform.machine(),
          "versions": versions}


def record(out: pathlib.Path, only: list[str], keep: pathlib.Path | None) -> int:
  unknown = [n for n in only if n not in CASES]
  if unknown:
    raise DigestError(f"--only: no case {', '.join(unknown)} (cases: {' '.join(CASES)})")
  if keep is not None and keep.exists() and any(keep.iterdir()):
    raise DigestError(f"--keep {keep}: not empty (a run in a used workdir would resume)")
  if not out.parent.is_dir():
    raise DigestError(f"--out {out}: no folder {out.parent}")
  _data_dir()
  names = only or list(CASES)
  header = _header()
  print(f"{len(names)} cases at {header['commit'][:12]}"
        f"{' (research/ or configs/ changed)' if header['dirty'] else ''}", flush=True)
  if keep is not None:
    keep.mkdir(parents=True, exist_ok=True)
  root = keep.resolve() if keep is not None else pathlib.Path(tempfile.mkdtemp(prefix="digests_"))
  cases, start = {}, time.perf_counter()
  try:
    for i, name in enumerate(names, 1):
      cases[name] = run_case(name, CASES[name], root)
      digests = cases[name]["digests"]
      print(f"[{i}/{len(names)}] {name}: {cases[name]['seconds']:.0f} s, params "
            f"{digests['params'][:12]}, results {digests['results'][:12]}", flush=True)
  except DigestError:
    print(f"(the runs are kept in {root})", file=sys.stderr)
    raise
  if keep is None:
    try:
      shutil.rmtree(root)
    except OSError as e:
      print(f"warning: the runs' temporary folder {root} not removed: {e}", file=sys.stderr)
  result = dict(header, seconds=round(time.perf_counter() - start, 1), cases=cases)
  partial = out.with_name(out.name + ".partial")
  partial.write_text(json.dumps(result, indent=2) + "\n")
  partial.replace(out)
  print(f"{len(cases)} cases in {result['seconds']:.0f} s: {out}")
  return 0


# ---- comparing -------------------------------------------------------------------------------


def _load(path: pathlib.Path) -> dict[str, Any]:
  try:
    data = json.loads(path.read_text())
  except OSError as e:
    raise DigestError(f"--compare {path}: {e.strerror}") from None
  except json.JSONDecodeError as e:
    raise DigestError(f"--compare {path}: not JSON ({e})") from None
  if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
    raise DigestError(f"--compare {path}: not a file of digests.py (no 'cases')")
  return data


def compare(path_a: pathlib.Path, path_b: pathlib.Path) -> int:
  """Prints the markdown table case x digest; 1 if a digest differs or a case is missing."""
  a, b = _load(path_a), _load(path_b)
  kinds = list(dict.fromkeys(k for data in (a, b) for case in data["cases"].values()
                             for k in case["digests"]))
  names = list(dict.fromkeys([*a["cases"], *b["cases"]]))
  print(f"A = {path_a} (commit {a.get('commit', '?')[:12]}{', dirty' if a.get('dirty') else ''})")
  print(f"B = {path_b} (commit {b.get('commit', '?')[:12]}{', dirty' if b.get('dirty') else ''})")
  for key in ("python", "machine", "versions"):
    if a.get(key) != b.get(key):
      print(f"note: the {key} differ(s): {a.get(key)} vs {b.get(key)}")
  print()
  print("| case | " + " | ".join(kinds) + " | seconds A | seconds B |")
  print("|---|" + "---|" * len(kinds) + "---:|---:|")
  differs = False
  for name in names:
    case_a, case_b = a["cases"].get(name), b["cases"].get(name)
    cells = []
    for kind in kinds:
      x = (case_a or {}).get("digests", {}).get(kind)
      y = (case_b or {}).get("digests", {}).get(kind)
      if x is None and y is None:
        cells.append("–")
      elif x is None or y is None:
        cells.append("missing in " + ("A" if x is None else "B"))
        differs = True
      else:
        cells.append("same" if x == y else "DIFFERENT")
        differs |= x != y
    seconds = [f"{c['seconds']:.0f}" if c else "–" for c in (case_a, case_b)]
    print(f"| {name} | " + " | ".join(cells) + f" | {seconds[0]} | {seconds[1]} |")
  print()
  print("DIFFERENT: see the cases above" if differs else "every digest is the same")
  return 1 if differs else 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, help="the JSON of digests to write")
  parser.add_argument("--only", nargs="+", default=[], metavar="CASE",
                      help=f"run only these cases ({' '.join(CASES)})")
  parser.add_argument("--keep", type=pathlib.Path, metavar="DIR",
                      help="keep the cases' workdirs in DIR (new or empty); default: a "
                           "temporary folder, removed")
  parser.add_argument("--compare", nargs=2, type=pathlib.Path, metavar=("A", "B"),
                      help="print the table of two files' digests; exit 1 if any differs")
  args = parser.parse_args(argv)
  try:
    if args.compare:
      if args.out or args.only or args.keep:
        raise DigestError("--compare takes no --out, --only or --keep")
      return compare(*args.compare)
    if not args.out:
      raise DigestError("give --out FILE (to record) or --compare A B")
    return record(args.out, args.only, args.keep)
  except DigestError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
