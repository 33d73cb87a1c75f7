"""Knowledge distillation: a student trained on a fine-tuned teacher's outputs.

`distill.teacher` names a finished workdir of the same task. Before the student trains, the
teacher's best checkpoint runs once over the student's training split, in the eval step's length
buckets, and its outputs (logits; a regression's scores) are cached in the teacher's workdir
under a key of the teacher's parameters, the split's tokens and labels and the batching: every
seed, every resume and every student of that split reads them instead of running the teacher.
Another teacher checkpoint, other data or another tokenization makes another key.

The student's loss is the task kind's `distill_loss_sum`: alpha * soft + (1 - alpha) * its own
loss, the soft loss KL(teacher_T || student_T) * T^2 for classification and relations (per
labelled position for token classification, over each window's start and end positions for
QA), the squared distance to the teacher's score for regression. The teacher reads the
student's token ids, so both must share a tokenizer (checked: the same vocabulary).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pathlib

import jax
import ml_collections
import numpy as np

from research import evaluation, steps, tasks, writers
from research.config_base import ConfigError
from research.data.encoded import EncodedSplit
from research.errors import DataError
from research.parallel import DataParallel

CACHE = "distill_cache"  # the folder of cached outputs in the teacher's workdir


def teacher_config(teacher: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a teacher workdir was trained with (its config.json); one line when the folder
  holds no finished run."""
  path = pathlib.Path(teacher) / "config.json"
  if not path.is_file():
    raise ConfigError(f"config.distill.teacher: {teacher} holds no run (no config.json)")
  if not (pathlib.Path(teacher) / "best").is_dir():
    raise ConfigError(f"config.distill.teacher: {teacher} has no best checkpoint (a finished "
                      "run evaluates at least once)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def check_teacher(config: ml_collections.ConfigDict, teacher: ml_collections.ConfigDict) -> None:
  """The teacher solves the student's task: the same kind, labels and text fields."""
  for field in ("kind", "label_names", "text_fields"):
    ours, theirs = config.task[field], teacher.task[field]
    if tuple(np.atleast_1d(ours).tolist()) != tuple(np.atleast_1d(theirs).tolist()):
      raise ConfigError(f"config.distill.teacher: its task.{field} is {theirs!r}, the "
                        f"student's {ours!r}")


def cache_key(params, split: EncodedSplit, batch_size: int, buckets: tuple[int, ...]) -> str:
  """A digest of what the teacher's outputs depend on: its parameters, the split's token ids,
  token types, lengths and labels, and the eval batching (batch size, buckets)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  for array in (split.input_ids, split.token_type_ids, split.lengths, split.labels):
    digest.update(np.ascontiguousarray(array).tobytes())
  digest.update(json.dumps([batch_size, list(buckets)]).encode())
  return digest.hexdigest()[:32]


def teacher_outputs(config: ml_collections.ConfigDict, split: EncodedSplit, tokenizer
                    ) -> np.ndarray:
  """The teacher's outputs for every row of `split` ([N, outputs] float32), from its cache or
  computed once (and cached by process 0)."""
  from research import inference
  teacher_dir = pathlib.Path(config.distill.teacher)
  tconfig = teacher_config(teacher_dir)
  check_teacher(config, tconfig)
  setup, params, meta = inference.load_best(tconfig, teacher_dir)  # validates its config
  if setup.tokenizer.get_vocab() != tokenizer.get_vocab():
    raise ConfigError(f"config.distill.teacher: {teacher_dir}'s tokenizer differs from the "
                      "student's (the teacher reads the student's token ids)")
  batch_size, buckets = tconfig.eval.batch_size, tuple(config.data.length_buckets)
  path = teacher_dir / CACHE / f"{cache_key(params, split, batch_size, buckets)}.npy"
  if _on_process_0(path.is_file()):  # every process computes (a collective) or none does
    outputs = _read_cache(path, len(split))
    if _on_process_0(outputs is not None):
      if outputs is None:
        raise DataError(f"{path}: process 0 read the teacher's outputs there, process "
                        f"{jax.process_index()} cannot")
      logging.info("teacher outputs of %d rows read from %s", len(outputs), path)
      return outputs
  logging.info("running the teacher (%s, best step %d) over %d rows ...", teacher_dir,
               meta["step"], len(split))
  dp = DataParallel(config.parallel.backend, config.parallel.num_devices)
  eval_step = dp.compile_eval_step(steps.make_eval_step(setup.model,
                                                        tasks.kind_of(tconfig.task)))
  outputs, _ = evaluation.run_model(eval_step, dp, dp.put_replicated(params), split,
                                    batch_size=batch_size, buckets=buckets)
  buffer = io.BytesIO()
  np.save(buffer, outputs)
  try:
    writers.write_bytes(path, buffer.getvalue())  # process 0, all or nothing
    logging.info("teacher outputs cached in %s", path)
  except writers.WorkdirError as e:  # a read-only or full teacher folder: the run goes on
    logging.warning("teacher outputs not cached (%s): the next student runs the teacher "
                    "again", e)
  return outputs


def _read_cache(path: pathlib.Path, rows: int) -> np.ndarray | None:
  """The cached outputs, or None (logged) when the file is unreadable or not of `rows` rows:
  they are computed again and the file replaced."""
  try:
    outputs = np.load(path)
  except (OSError, ValueError, EOFError) as e:
    logging.warning("teacher outputs in %s are unreadable (%s): computing them again", path, e)
    return None
  if outputs.ndim < 2 or len(outputs) != rows:
    logging.warning("teacher outputs in %s hold %s, not %d rows: computing them again", path,
                    outputs.shape, rows)
    return None
  return outputs


def _on_process_0(flag: bool) -> bool:
  """Process 0's `flag`, on every process."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))
