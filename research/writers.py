"""Where a run's files go. Every file is written by process 0 only, through this module:

  workdir_lock  `.lock`: one run per workdir (an OS lock, released however the process ends)
  write_text    whole files (config.json, results.json, eval/*.json, predictions), atomically:
                a reader (or a kill) never sees half a file; write_bytes the same for bytes
  MetricWriter  metrics.jsonl and TensorBoard events
                and, with log.wandb_project, a Weights & Biases run (wandb/, wandb_id.txt)
  RunLog        train.log, kept in memory until the run has validated its start

On resume, the metric writer drops what the interrupted run logged after the step it resumes
from (those steps are recomputed, identically): metrics.jsonl keeps no duplicate steps and
TensorBoard is told to purge them; W&B continues the same run (the id in wandb_id.txt) and is
not sent the steps its server already holds. Progress (examples/s, ETA) goes to the log.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import locale
import logging
import logging.handlers
import math
import os
import pathlib
import secrets
import shutil
import socket
import time
from typing import Any

import jax
import numpy as np


class WorkdirError(RuntimeError):
  """A workdir that cannot be used (busy, not writable); the message says why."""


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 of the run."""
  return jax.process_index() == 0


def free_bytes(path: pathlib.Path) -> str:
  """The space left on the filesystem of `path` (or of its nearest existing parent)."""
  path = pathlib.Path(path).absolute()
  while not path.exists() and path != path.parent:
    path = path.parent
  try:
    return f"{shutil.disk_usage(path).free:,} bytes free"
  except OSError:
    return "free space unknown"


def write_error(path: pathlib.Path, error: OSError, needed: int | None = None) -> WorkdirError:
  """One line for a file that could not be written: which path, why, and on a full disk how
  much space there is (and how much the write needed, when known)."""
  reason = error.strerror or str(error)
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    reason += f" ({free_bytes(path)}" + (f"; it needs about {needed:,}" if needed else "") + ")"
  return WorkdirError(f"cannot write {path}: {reason}; nothing written before was changed")


def check_writable(folder: pathlib.Path) -> None:
  """Raises WorkdirError unless process 0 can create files in `folder` (or, while it does not
  exist, in its nearest existing parent): before work whose result would be lost unwritten."""
  if not is_writer():
    return
  existing = pathlib.Path(folder).absolute()
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  probe = existing / f".write-test-{os.getpid()}"
  try:
    probe.write_text("")
  except OSError as e:
    raise write_error(pathlib.Path(folder), e) from e
  finally:
    with contextlib.suppress(OSError):
      probe.unlink()


def write_text(path: pathlib.Path, text: str) -> None:
  """Writes `path` on process 0 (a temporary file renamed over it); other processes skip.
  A write that fails (a full disk, a read-only one) leaves the file as it was."""
  write_bytes(path, text.encode(locale.getpreferredencoding(False)))  # as Path.write_text


def write_bytes(path: pathlib.Path, data: bytes) -> None:
  """`write_text` for bytes (a numpy file, say): on process 0, through a renamed temporary
  file; a failed write raises a `WorkdirError` and leaves the file as it was."""
  if not is_writer():
    return
  path = pathlib.Path(path)
  temporary = path.with_name(f".{path.name}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(data)
    os.replace(temporary, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      temporary.unlink()
    raise write_error(path, e, len(data)) from e


def read_json(path: pathlib.Path) -> Any:
  """A JSON file of the workdir (config.json, results.json, data.json, run.json); one that
  is not JSON (damaged, cut short) is a WorkdirError naming it."""
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise WorkdirError(f"{path} is damaged: it is not JSON ({e}); restore it from a copy, or "
                       "move it away") from e


def write_json(path: pathlib.Path, record: Any) -> None:
  write_text(path, json.dumps(record, indent=2) + "\n")


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path):
  """Holds an exclusive OS lock on `<workdir>/.lock` (process 0) while the block runs.

  A second run on the workdir is refused with the holder's pid and host. The OS releases the
  lock when the process ends, kill -9 included. The empty folders the block made are removed
  again, and so is a workdir that this call created and the block left empty (a failed start
  leaves no trace).
  """
  if not is_writer():
    yield
    return
  created = not workdir.exists()
  found = set(os.listdir(workdir)) if not created and workdir.is_dir() else set()
  path = workdir / ".lock"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
  except OSError as e:
    raise WorkdirError(f"cannot write to --workdir {workdir}: {e.strerror}") from e
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise WorkdirError(f"--workdir {workdir} is in use by another run ({holder}); wait for "
                       "it to end or use another --workdir") from None

  def release() -> None:
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # a full disk fails the flush again; the fd still closes
      handle.close()  # releases the lock
    for entry in set(os.listdir(workdir)) - found:  # the empty folders a failed start made
      with contextlib.suppress(OSError):  # (checkpoints/, best/): an rmdir of a full one fails
        (workdir / entry).rmdir()
    if created and not any(workdir.iterdir()):
      workdir.rmdir()

  try:
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
  except OSError as e:  # a full disk: even the lock's one line does not fit
    release()
    raise WorkdirError(f"cannot write to --workdir {workdir}: {e.strerror} "
                       f"({free_bytes(workdir)})") from e
  try:
    yield
  finally:
    release()


class RunLog(logging.handlers.MemoryHandler):
  """train.log on process 0: records wait in memory until `start()`, which the run calls once
  its config, data and model are valid, so a failed start writes no file."""

  def __init__(self, path: pathlib.Path):
    super().__init__(capacity=2**31, flushLevel=logging.CRITICAL + 1)
    self.path = path
    self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

  def start(self) -> None:
    if is_writer() and self.target is None:
      target = logging.FileHandler(self.path)
      target.setFormatter(self.formatter)
      self.setTarget(target)
      self.capacity = 1  # from now on every record goes straight to the file
      self.flush()

  def close(self) -> None:
    target = self.target
    super().close()  # flushes to the file if started; records of a failed start are dropped
    if target is not None:
      target.close()

  @classmethod
  @contextlib.contextmanager
  def attached(cls, path: pathlib.Path):
    handler = cls(path)
    logging.getLogger().addHandler(handler)
    try:
      yield handler
    finally:
      logging.getLogger().removeHandler(handler)
      handler.close()


def _scalar(value: Any) -> float | int:
  value = np.asarray(value).item()
  return value if isinstance(value, int) else float(value)


def logged_up_to(path: pathlib.Path, step: int) -> list[str]:
  """The lines of metrics.jsonl at steps up to `step`. Its last line cut short (a kill while it
  was appended, after the newest checkpoint: a row the resumed run writes again) is dropped;
  any other line that is not a row is a WorkdirError naming it."""
  lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
  kept = []
  for number, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
      row_step = int(row["step"])
    except (ValueError, KeyError, TypeError) as e:
      if number == len(lines):
        logging.warning("%s: its last line is cut short (a run stopped while writing it); it "
                        "is dropped and written again", path)
        continue
      raise WorkdirError(f"{path}:{number} is damaged ({type(e).__name__}: {e}): not a row of "
                         "metrics; restore the file from a copy, or move it away") from e
    if row_step <= step:
      kept.append(line)
  return kept


class MetricWriter:
  """metrics.jsonl, TensorBoard and, if `wandb_project` is set, a W&B run: process 0 only.

  wandb is imported only when a project is set: it is optional, and slow to import.
  """

  def __init__(self, workdir: pathlib.Path, *, resume_step: int = 0, wandb_project: str = "",
               wandb_config: dict | None = None):
    self.active = is_writer()
    self.path = workdir / "metrics.jsonl"
    self._tb = self._wandb = None
    if not self.active:
      return
    if wandb_project:  # first: a W&B run that cannot start leaves nothing open or changed
      self._wandb = _start_wandb(workdir, wandb_project, wandb_config)
      # A resumed run is the same W&B run; its server refuses (with a warning per call) steps
      # below the one after its last: those were logged, with the same values, before the stop.
      self._wandb_first_step = self._wandb.starting_step
    if self.path.exists():  # what a stopped run logged after its checkpoint is redone
      kept = logged_up_to(self.path, resume_step)
      write_text(self.path, "".join(line + "\n" for line in kept))
    self._tb = _TensorBoard(workdir / "tensorboard", purge_step=resume_step + 1)

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    """Scalars, tagged `<split>/<name>` in TensorBoard and W&B, and one JSON line."""
    if not self.active:
      return
    scalars = {k: _scalar(v) for k, v in metrics.items()}
    line = json.dumps({"step": step, "split": split, **scalars}) + "\n"
    try:
      with self.path.open("a") as f:
        f.write(line)
    except OSError as e:  # a full disk
      raise write_error(self.path, e, len(line)) from e
    tagged = {f"{split}/{name}": value for name, value in scalars.items()}
    self._tb.write(step, tagged)
    if self._wandb is not None and step >= self._wandb_first_step:
      self._wandb.log(tagged, step=step)

  def record(self, record: dict[str, Any]) -> None:
    """The run record (versions, commit, throughput) as the W&B run's config `record`, where
    runs can be compared and filtered by it; without W&B (or after `close`), nothing."""
    if self._wandb is not None:
      self._wandb.config.update({"record": record}, allow_val_change=True)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


class _TensorBoard:
  """Scalars in a TensorBoard event file, written by `tensorboard`'s own writer (tensorboardX
  imports torch when it is installed: seconds at every start of a run).

  A resumed run starts its file with a SessionLog START at `purge_step`: TensorBoard then
  drops the steps from there on that earlier files of the folder hold."""

  def __init__(self, folder: pathlib.Path, *, purge_step: int):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    # TensorBoard reads a folder's files in name order, and a name is events.out.tfevents.
    # <second>.<host>.<pid>.<counter>: two files of one process in one second may sort in the
    # wrong order (counter 10 before 9), and the earlier file's steps would win over the
    # resumed ones. A new file starts in a later second than the folder's newest.
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    if seconds and max(seconds) >= int(time.time()):
      time.sleep(max(seconds) + 1 - time.time())
    self._file = EventFileWriter(str(folder))
    self._file.add_event(self._event(
        wall_time=time.time(), step=purge_step,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
    self._file.add_event(self._event(wall_time=time.time(), step=step,
                                     summary=self._summary(value=values)))
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _start_wandb(workdir: pathlib.Path, project: str, config: dict | None):
  """Starts (or, with the id kept in `<workdir>/wandb_id.txt`, continues) the W&B run of the
  workdir: its files go to `<workdir>/wandb`. WANDB_MODE=offline keeps it off the network."""
  try:
    import wandb
  except ImportError:
    raise WorkdirError("log.wandb_project is set but wandb is not installed: pip install wandb"
                       ) from None
  id_path = workdir / "wandb_id.txt"
  new_id = not id_path.exists()
  if new_id:
    write_text(id_path, secrets.token_hex(6) + "\n")
  try:  # console="off": train.log already holds the log; W&B need not wrap stdout and stderr
    return wandb.init(project=project, dir=workdir, name=workdir.resolve().name,
                      id=id_path.read_text().strip(), resume="allow", config=config,
                      settings=wandb.Settings(console="off"))
  except wandb.Error as e:  # not logged in, or the server refused: one line, not a traceback
    if new_id:  # a failed start writes nothing
      id_path.unlink(missing_ok=True)
    raise WorkdirError(f"W&B could not start the run (log.wandb_project={project}): {e}") from e


def _clock(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
  """Step, loss, learning rate, examples/s and ETA, logged every few steps.

  Throughput is over the steps since the last report, evaluation and checkpoint time excluded
  (compilation is not: the first report is slower); the ETA uses the mean step time so far.
  """

  def __init__(self, *, total_steps: int, start_step: int, steps_per_epoch: int,
               examples_per_step: int):
    self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
    self.examples_per_step = examples_per_step
    self._start_time = self._last_time = time.perf_counter()
    self._start_step = self._last_step = start_step
    self._paused = self._paused_since_report = 0.0

  def training_seconds(self) -> float:
    """Time since the start, less what `pause` excluded (compilation included)."""
    return time.perf_counter() - self._start_time - self._paused

  def pause(self, seconds: float) -> None:
    """Excludes time (evaluation, checkpointing) from the training rate."""
    self._paused += seconds
    self._paused_since_report += seconds

  def report(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    now = time.perf_counter()
    busy = now - self._last_time - self._paused_since_report
    rate = (step - self._last_step) * self.examples_per_step / max(busy, 1e-9)
    mean_step_time = (now - self._start_time - self._paused) / max(step - self._start_step, 1)
    eta = (self.total_steps - step) * mean_step_time
    self._last_time, self._last_step, self._paused_since_report = now, step, 0.0
    epoch = step / self.steps_per_epoch
    logging.info("step %d/%d (epoch %.2f) | loss %.4f | lr %.3g | grad-norm %.3f | "
                 "%.1f examples/s | elapsed %s | ETA %s", step, self.total_steps, epoch,
                 metrics["loss"], metrics["learning_rate"], metrics["grad_norm"], rate,
                 _clock(now - self._start_time), _clock(eta))
    return {"examples_per_sec": rate, "epoch": epoch}
