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
"""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, workdir: pathlib.Path, *, keep: int, best_metric: str, best_mode: str):
    self.best_metric, self.best_mode = best_metric, best_mode

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
    self._latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)))

  def restore_state(self, template: Any) -> tuple[Any, dict[str, Any]]:
    """The newest train state, with the structure and dtypes of `template` (None: as saved)."""
    step = self._latest.latest_step()
    restored = self._latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  # ---- best params -----------------------------------------------------------------------------

  def is_better(self, value: float, best: float | None) -> bool:
    if best is None:
      return True
    return value > best if self.best_mode == "max" else value < best

  def save_best(self, step: int, params: Any, meta: dict[str, Any]) -> None:
    self._best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                  meta=ocp.args.JsonSave(meta)),
                    metrics={self.best_metric: meta["metrics"][self.best_metric]})

  def best_step(self) -> int | None:
    return self._best.best_step()

  def restore_best(self, template: Any) -> tuple[Any, dict[str, Any]]:
    step = self._best.best_step()
    if step is None:
      raise FileNotFoundError("no best checkpoint yet")
    restored = self._best.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return restored.params, restored.meta

  def close(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()
    self._latest.close()
    self._best.close()
