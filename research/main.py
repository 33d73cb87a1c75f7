"""Command line entry point. The work is in `train.py`; this file only parses flags.

  python -m research.main --config configs/sst2.py --workdir runs/sst2            # train + eval
  python -m research.main --config configs/sst2.py:quick --workdir runs/q --config.seed=1
  python -m research.main --config configs/sst2.py --workdir runs/sst2 --mode=eval
  python -m research.main --config configs/sst2.py --workdir runs/sst2 --mode=predict \
      --input=file.txt --output=preds.jsonl
  python -m research.main --config configs/sst2.py --workdir runs/sst2 --mode=export \
      --output=exported/

Any config field can be overridden with --config.<path>=<value> (given twice, the last wins); an
unknown field or a value of the wrong type is an error (the config is locked). Errors in the
config, the data, the checkpoint or the workdir print one line and exit with status 2. A run
stopped by SIGTERM or Ctrl-C saves a checkpoint at a step boundary and exits with status 75
(rerun to resume).

Several processes (one per GPU or host) run the same command; `jax.distributed` finds its
peers under SLURM, Open MPI and on Cloud TPU pods, or from the flags:

  python -m research.main ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from research import distributed, supervisor

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an argument: configs/sst2.py:quick",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "export"],
                          "train (resumes if the workdir has a checkpoint), eval / predict / "
                          "export the best checkpoint.")
_INPUT = flags.DEFINE_string("input", None, "predict: a .txt (one example per line) or .jsonl.")
_OUTPUT = flags.DEFINE_string("output", None, "predict: the .jsonl to write; export: a folder.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed: auto = when launched as one of several processes (SLURM, Open MPI, "
    "Cloud TPU, or the flags below); on = always; off = never.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (or JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", None, "Seconds a multi-process start waits for every process "
    "(default 120, or RESEARCH_DISTRIBUTED_TIMEOUT).")
_DEBUG = flags.DEFINE_bool("debug", os.environ.get("RESEARCH_DEBUG") == "1",
                           "Errors end with their traceback (also RESEARCH_DEBUG=1).")


def _fail(message: str, code: int = 2) -> None:
  if code != distributed.EXIT_PEER_LOST:  # (75) an interruption stops all processes anyway
    distributed.fail(message, code)  # tells the other processes of a multi-process run
  print(f"error: {message}", file=sys.stderr)
  distributed.note_exit_status(code)
  sys.exit(code)


def _unknown_field_message(error: Exception, argv: list[str]) -> str:
  """config_flags reports a misspelt override as a bare KeyError/AttributeError: name it."""
  text = str(error).replace("\\n", " ").replace("\\'", "'")
  overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
  words = set(re.findall(r"[\w-]+", text))
  culprit = next((o for o in overrides if set(o.split(".")[1:]) & words), None)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  return (f"{culprit or 'a --config override'} is not a config field"
          + (f' (did you mean "{hint.group(1)}"?)' if hint else ""))


def _config_file_line(error: BaseException) -> tuple[str, str] | None:
  """('file:line', code) of the deepest frame of a config file (not a library's, not ours) in
  the error's traceback: where a config file assigned a field that does not exist."""
  ours = os.path.dirname(os.path.abspath(__file__))
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if "site-packages" not in f.filename and not f.filename.startswith(ours)
            and os.path.exists(f.filename)]
  if not frames:
    return None
  frame = frames[-1]
  path = os.path.relpath(frame.filename)
  path = frame.filename if path.startswith("..") else path
  return f"{path}:{frame.lineno}", (frame.line or "").strip()


def _config_field_message(error: BaseException, argv: list[str]) -> str:
  """A misspelt field, in a config file (its line) or in a --config override."""
  where = _config_file_line(error)
  if where is None:
    return _unknown_field_message(error, argv)
  text = str(error).replace("\\n", " ").replace("\\'", "'")
  key = re.search(r'Key "([^"]+)" does not exist', text)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  field = f'"{key.group(1)}"' if key else "a field"
  return (f"{where[0]}: {field} is not a config field"
          + (f' (did you mean "{hint.group(1)}"?)' if hint else "") + f": {where[1]}")


def _config_file(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].partition(":")[0]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].partition(":")[0]
  return "--config"


_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(=.*)?$")
_HELP_FLAGS = ("-?", "--help", "--helpshort", "--helpfull", "--helpxml")


def last_overrides(argv: list[str]) -> list[str]:
  """`argv` with only the last of each repeated `--config.<field>` override, as every flag
  library treats a repeated flag. config_flags itself concatenates repeated overrides of a tuple
  field (`=(16,32)` then `=(48,64)` became `(16, 32, 48, 64)`; `text_fields=sentence` twice, a
  sentence pair). A value given apart (`--config.seed 1`) stays with its flag."""
  groups, i = [], 0  # (field or None, tokens)
  while i < len(argv):
    match = _OVERRIDE.match(argv[i]) if i else None
    takes_next = (match and match.group(2) is None and i + 1 < len(argv)
                  and not argv[i + 1].startswith("-"))
    groups.append((match.group(1) if match else None, argv[i:i + 1 + bool(takes_next)]))
    i += 1 + bool(takes_next)
  last = {field: n for n, (field, _) in enumerate(groups) if field}
  return [token for n, (field, tokens) in enumerate(groups)
          if field is None or last[field] == n for token in tokens]


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  argv = ["--help" if arg == "-h" else arg for arg in argv]  # absl knows only -? and --help
  try:
    return flag_values(last_overrides(argv))
  except SystemExit as e:  # absl prints the usage for --help, then exits with status 1
    if e.code == 1 and any(arg in _HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # config_flags wraps errors of the config file's get_config
      head = message[:message.find("Traceback")].strip().rstrip(":")
      message = f"{head}: {message.strip().splitlines()[-1]}"
    _fail(message)
  except AttributeError as e:
    if "get_config" in str(e):
      _fail(f"--config {_config_file(argv)} defines no get_config() (a config file is a Python "
            "file with `def get_config(arg=None): ... return config`)")
    _fail(_config_field_message(e, argv))
  except KeyError as e:
    _fail(_config_field_message(e, argv))
  except (TypeError, ValueError, FileNotFoundError) as e:
    _fail(f"--config: {e}")
  except SyntaxError as e:
    _fail(f"--config {e.filename}:{e.lineno}: {e.msg}: {(e.text or '').strip()}")
  except Exception as e:  # anything else the config file raised while it was run
    if "--debug" in argv or os.environ.get("RESEARCH_DEBUG") == "1":
      raise
    _fail(f"--config {_config_file(argv)}: {type(e).__name__}: {e}")
  return []


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if (distributed.wanted(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value) and not supervisor.supervised()):
    # One of several processes: JAX may abort it (its coordinator lost) where Python cannot
    # answer, so the same command runs as a child of this one, which answers for it.
    sys.exit(supervisor.run([sys.executable, "-m", "research.main", *sys.argv[1:]],
                            debug=_DEBUG.value))
  from research import runtime
  try:
    runtime.start(_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                  num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                  timeout_seconds=_DISTRIBUTED_TIMEOUT.value)
  except distributed.DistributedError as e:
    _fail(str(e))
  import jax
  if jax.process_index() > 0:  # process 0 reports progress; the others only what goes wrong
    logging.getLogger().setLevel(logging.WARNING)
  from research import checkpoints, config_lib, errors, inference, metrics, tasks, train, writers
  from research.models.hf_io import CheckpointError
  from research.parallel import DeviceError

  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if config is None:
    _fail("--config is required")
  try:
    config.to_dict()
  except OSError as e:  # config_flags defers a file that failed to load until first use
    _fail(f"--config: {' '.join(str(e).split())}")
  if workdir is None:
    _fail("--workdir is required")
  if mode == "predict" and not (_INPUT.value and _OUTPUT.value):
    _fail("--mode=predict needs --input and --output")
  if mode == "export" and not _OUTPUT.value:
    _fail("--mode=export needs --output")
  try:
    if mode == "train":
      train.train_and_evaluate(config, workdir)
    elif mode == "eval":
      inference.evaluate(config, workdir)
    elif mode == "predict":
      inference.predict(config, workdir, _INPUT.value, _OUTPUT.value)
    else:
      inference.export(config, workdir, _OUTPUT.value)
  except errors.Interrupted as e:
    _fail(str(e), errors.EXIT_INTERRUPTED)
  except (config_lib.ConfigError, errors.DataError, CheckpointError, errors.RunError,
          writers.WorkdirError, checkpoints.DamagedCheckpoint, checkpoints.CheckpointMismatch,
          metrics.MetricError, DeviceError, tasks.UnknownKind) as e:
    if _DEBUG.value:
      raise
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
