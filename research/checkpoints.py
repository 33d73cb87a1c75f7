"""Orbax checkpoints in the workdir: the latest N train states, and the best params.

  <workdir>/checkpoints/<step>/  state (step, params, optimizer state, rng) + meta JSON; the
                                 newest `keep` are kept; a run restarted on the workdir resumes
                                 from the newest (the data position is a function of the step)
  <workdir>/best/<step>/         params + meta of the best evaluation by the chosen dev metric

Saving is asynchronous: the loop goes on while the files are written; `close()` waits.
Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact.

With several processes, every process calls every method (orbax synchronises them with
barriers); the trees are host numpy copies of replicated values, which orbax writes from
process 0 alone and every process reads back whole. A checkpoint therefore restores on any
number of processes and devices. The workdir must be on a filesystem all processes share.

Every checkpoint's meta holds a checksum of its arrays. A restored tree must match it and be
finite; a damaged train state (truncated, overwritten, unreadable, its checksum gone) is
reported in one line, moved to `checkpoints_damaged/`, and the next older one is tried: a run
never restarts from scratch over damaged checkpoints, and never resumes from a corrupted one.
A checkpoint that is intact but holds another model's tree (the config, or the folder of its
`model.checkpoint`, changed since it was saved) is not damage: it is refused before it is read,
from the paths, shapes and dtypes its metadata lists, and nothing is moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from research import writers


class DamagedCheckpoint(RuntimeError):
  """No intact checkpoint to restore; the message names each damaged one and why."""


class CheckpointMismatch(RuntimeError):
  """An intact checkpoint whose tree is not the model's; the message names a differing leaf."""


def _array_digest(a: np.ndarray) -> str:
  digest = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
  digest.update(a.reshape(-1).view(np.uint8))  # the bytes in place: no copy of the array
  return digest.hexdigest()


def tree_checksum(tree: Any) -> str:
  """A digest of every array of a tree (dtype, shape and bytes), independent of the tree's
  container types (a restore without a template returns dicts for dataclasses)."""
  leaves = sorted(map(_array_digest, map(np.ascontiguousarray, jax.tree.leaves(tree))))
  return hashlib.sha256("".join(leaves).encode()).hexdigest()


def all_finite(tree: Any) -> bool:
  """Whether no floating-point array of a tree holds NaN or inf."""
  return all(np.isfinite(leaf).all() for leaf in map(np.asarray, jax.tree.leaves(tree))
             if np.issubdtype(leaf.dtype, np.floating))


def problem_with(tree: Any, meta: dict[str, Any]) -> str | None:
  """Why a restored tree cannot be used (no checksum to verify it, a checksum that differs,
  NaN/inf), or None. Every checkpoint this code writes holds a checksum."""
  if "checksum" not in meta:
    return "its meta holds no checksum, so its arrays cannot be verified"
  if tree_checksum(tree) != meta["checksum"]:
    return "its arrays do not match the checksum saved with them"
  if not all_finite(tree):
    return "it holds NaN or infinite values"
  return None


def _key_name(key: Any) -> str:
  for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndex
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str | None]]:
  """'path/to/leaf' -> (shape, dtype) of a tree of arrays or of orbax's array metadata (the
  saved tree holds dicts and lists where the model's holds dataclasses and tuples)."""
  specs = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = getattr(leaf, "dtype", None)
    specs["/".join(map(_key_name, path))] = (tuple(getattr(leaf, "shape", ())),
                                             None if dtype is None else str(np.dtype(dtype)))
  return specs


def _params_first(path: str) -> tuple[bool, str]:
  """Sorts the model's own leaves before the optimizer's copies of them."""
  return not path.startswith("params/"), path


def tree_difference(model: Any, saved: Any) -> str | None:
  """How a saved tree (arrays or orbax metadata) differs from the model's, naming a leaf, or
  None when every leaf has the same path, shape and dtype."""
  ours, theirs = _leaf_specs(model), _leaf_specs(saved)
  only_model = sorted(set(ours) - set(theirs), key=_params_first)
  only_saved = sorted(set(theirs) - set(ours), key=_params_first)
  if only_model or only_saved:
    parts = []
    if only_model:
      parts.append(f"{len(only_model)} leaves only in the model, e.g. {only_model[0]}")
    if only_saved:
      parts.append(f"{len(only_saved)} only in the checkpoint, e.g. {only_saved[0]}")
    return "another structure: " + "; ".join(parts)
  for path in sorted(ours, key=_params_first):
    (shape, dtype), (saved_shape, saved_dtype) = ours[path], theirs[path]
    if shape != saved_shape:
      return f"another shape: {path} is {saved_shape} in the checkpoint, {shape} in the model"
    if saved_dtype is not None and dtype != saved_dtype:
      return f"another dtype: {path} is {saved_dtype} in the checkpoint, {dtype} in the model"
  return None


def _saved_tree(folder: pathlib.Path) -> Any:
  """The array metadata (paths, shapes, dtypes) of a saved item, read without its arrays;
  None when it cannot be read (the restore then reports the damage)."""
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(folder)
  except Exception:  # a damaged checkpoint: its restore says why
    return None
  return getattr(metadata, "tree", metadata)


def _quiet_closed_loop_reports() -> None:
  """When a restore fails on a damaged file, orbax's reads still under way report into its
  closed event loop ("Event loop is closed", printed as an ignored exception): harmless, and
  not the one line a damaged checkpoint should give. Those reports alone are dropped."""
  previous = sys.unraisablehook
  if getattr(previous, "quiets_closed_loops", False):
    return

  def hook(report):
    if not (isinstance(report.exc_value, RuntimeError)
            and str(report.exc_value) == "Event loop is closed"):
      previous(report)

  hook.quiets_closed_loops = True
  sys.unraisablehook = hook


class _QuietOrbaxErrors(logging.Filter):
  """Drops orbax's own error reports (each with its traceback, from every thread that took
  part): a save that fails raises in the run, which reports it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR
                and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _quiet_orbax_errors() -> None:
  logger = logging.getLogger("absl")  # orbax logs through absl.logging
  if not any(isinstance(f, _QuietOrbaxErrors) for f in logger.filters):
    logger.addFilter(_QuietOrbaxErrors())


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Checkpoints:

  def __init__(self, workdir: pathlib.Path, *, keep: int, best_metric: str, best_mode: str):
    self.best_metric, self.best_mode = best_metric, best_mode
    self.workdir = workdir
    self._save_failed = False
    self._save_bytes = 0  # the size of the largest tree saved, for a full disk's message
    _quiet_closed_loop_reports()  # a failed save's reads and writes report into closed loops
    _quiet_orbax_errors()

    def processes(name: str):  # the two managers save concurrently: their barriers need names
      return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)

    self._latest = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True,
                                             multiprocessing_options=processes("latest")),
        item_names=("state", "meta"))
    self._best = ocp.CheckpointManager(
        (workdir / "best").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, cleanup_tmp_directories=True,
            best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode,
            multiprocessing_options=processes("best")),
        item_names=("params", "meta"))

  # ---- latest train state --------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save_state(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """`state` is a host (numpy) tree; `meta` small JSON (epoch, best so far, timings)."""
    if step in self._latest.all_steps():
      return
    meta = dict(meta, checksum=tree_checksum(state))
    with self._saving(state):
      self._latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)))

  def restore_state(self, template: Any) -> tuple[Any, dict[str, Any]]:
    """The newest intact train state, with the structure and dtypes of `template` (None: as
    saved). Damaged newer ones are set aside, each with a warning."""
    damaged = []
    _quiet_closed_loop_reports()  # installed first: the reports can come before the error
    for step in sorted(self._latest.all_steps(), reverse=True):
      self._refuse_other_model(self.workdir / "checkpoints" / str(step), "state", template)
      try:
        restored = self._latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
        problem = problem_with(restored.state, restored.meta)
      except Exception as e:  # orbax, tensorstore and json each raise their own on bad files
        problem = f"it cannot be read ({_first_line(e)})"
      if problem is None:
        return restored.state, restored.meta
      damaged.append(f"step {step}: {problem}")
      aside = self._set_aside(step)
      logging.warning("checkpoint %s is damaged: %s; moved to %s, trying the one before",
                      self.workdir / "checkpoints" / str(step), problem, aside)
    raise DamagedCheckpoint(f"no intact checkpoint in {self.workdir / 'checkpoints'} ("
                            + "; ".join(damaged) + f"); they were moved to "
                            f"{self.workdir / 'checkpoints_damaged'}. Rerun to start from the "
                            "beginning, or restore an intact copy")

  @staticmethod
  def _refuse_other_model(folder: pathlib.Path, item: str, template: Any) -> None:
    """Raises CheckpointMismatch when the saved tree is not `template`'s (None: any tree)."""
    saved = None if template is None else _saved_tree(folder / item)
    difference = None if saved is None else tree_difference(template, saved)
    if difference is not None:
      raise CheckpointMismatch(
          f"the checkpoint {folder} holds a tree of {difference}: the config, or the "
          "model.checkpoint folder it names, describes another model than the run's. Nothing "
          "was moved; rerun with the model the run started with, or use another --workdir")

  def _set_aside(self, step: int) -> pathlib.Path:
    """Moves a damaged step out of orbax's sight (process 0), so the run goes on without it."""
    source = self.workdir / "checkpoints" / str(step)
    target = self.workdir / "checkpoints_damaged" / str(step)
    if jax.process_index() == 0:
      target.parent.mkdir(exist_ok=True)
      if target.exists():
        shutil.rmtree(target)
      shutil.move(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self._latest.reload()
    return target

  # ---- best params -----------------------------------------------------------------------------

  def is_better(self, value: float, best: float | None) -> bool:
    if best is None:
      return True
    return value > best if self.best_mode == "max" else value < best

  def save_best(self, step: int, params: Any, meta: dict[str, Any]) -> None:
    if step in self._best.all_steps():  # saved before a kill, and recomputed identically since
      return
    meta = dict(meta, checksum=tree_checksum(params))
    with self._saving(params):
      self._best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                    meta=ocp.args.JsonSave(meta)),
                      metrics={self.best_metric: meta["metrics"][self.best_metric]})

  def best_step(self) -> int | None:
    return self._best.best_step()

  def restore_best(self, template: Any) -> tuple[Any, dict[str, Any]]:
    step = self._best.best_step()
    if step is None:
      raise FileNotFoundError("no best checkpoint yet")
    self._refuse_other_model(self.workdir / "best" / str(step), "params", template)
    _quiet_closed_loop_reports()
    try:
      restored = self._best.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
      problem = problem_with(restored.params, restored.meta)
    except Exception as e:  # as in restore_state
      problem = f"it cannot be read ({_first_line(e)})"
    if problem is not None:
      raise DamagedCheckpoint(f"the best checkpoint {self.workdir / 'best' / str(step)} is "
                              f"damaged: {problem}")
    return restored.params, restored.meta

  @contextlib.contextmanager
  def _saving(self, tree: Any = None):
    """Turns a failed save into one WorkdirError. Saves run in the background: orbax raises a
    save's error at the next save, or when `close` waits for it."""
    if tree is not None:
      self._save_bytes = max(self._save_bytes, sum(np.asarray(leaf).nbytes
                                                   for leaf in jax.tree.leaves(tree)))
    try:
      yield
    except Exception as e:  # orbax and tensorstore raise their own (ValueError, OSError, ...)
      self._save_failed = True
      text = " ".join(str(e).split())
      folder = re.search(r'"([^"]*/(?:checkpoints|best)/\d+)\.orbax-checkpoint-tmp', text)
      where = folder.group(1) if folder else str(self.workdir)
      if "No space left on device" in text or "RESOURCE_EXHAUSTED" in text:
        reason = (f"no space left on its device ({writers.free_bytes(self.workdir)}; a "
                  f"checkpoint needs up to {self._save_bytes:,})")
      else:
        reason = _first_line(e)
      latest = self._latest.latest_step()
      raise writers.WorkdirError(
          f"cannot save the checkpoint {where}: {reason}. The checkpoints saved before are "
          "intact" + (f" (the newest: step {latest}); rerun to resume from it"
                      if latest is not None else "") + " once there is room") from e

  def close(self) -> None:
    """Waits for the saves under way (raising if one failed, unless that was raised before),
    then closes."""
    reported = self._save_failed
    try:
      with self._saving():
        self._latest.wait_until_finished()
        self._best.wait_until_finished()
    except writers.WorkdirError:
      if not reported:
        raise
    finally:
      # After a failed save, orbax raises its error again on close: already reported.
      with contextlib.suppress(Exception) if self._save_failed else contextlib.nullcontext():
        self._latest.close()
        self._best.close()
