"""Knowledge distillation (research/distill.py): the loss against a hand-written reference, the
cached teacher outputs against a live teacher (to the bit), the cache's key, a student trained
from a teacher workdir end to end, and the bad inputs."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_data
from helpers import load_encoded, tiny_config
from research import config_lib, distill, evaluation, inference, steps, tasks, train
from research.config_base import ConfigError
from research.parallel import DataParallel


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_the_loss_is_the_textbook_one():
  """alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * cross-entropy, over the real
  rows (a padding row counts in neither sum); alpha 0 is the plain loss; regression's soft
  loss is the squared distance to the teacher's score."""
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(5, 3)) * 2, rng.normal(size=(5, 3)) * 2
  labels, mask = np.array([0, 2, 1, 1, 0]), np.array([1, 1, 1, 1, 0], np.float32)
  kind = tasks.get("classification")
  loss, weight = kind.distill_loss_sum(jnp.asarray(student), jnp.asarray(teacher), labels, mask,
                                       None, 2.0, 0.3)
  p_teacher = np.exp(_log_softmax(teacher / 2))
  kl = (p_teacher * (_log_softmax(teacher / 2) - _log_softmax(student / 2))).sum(-1) * 4
  ce = -_log_softmax(student)[np.arange(5), labels]
  expected = ((0.3 * kl + 0.7 * ce) * mask).sum()
  assert float(weight) == 4.0
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  plain = kind.loss_sum(jnp.asarray(student), labels, mask)
  np.testing.assert_allclose(
      kind.distill_loss_sum(jnp.asarray(student), jnp.asarray(teacher), labels, mask, None,
                            2.0, 0.0), plain, rtol=1e-7)
  regression = tasks.get("regression")
  scores = rng.normal(size=5)
  loss, _ = regression.distill_loss_sum(jnp.asarray(student[:, :1]), jnp.asarray(teacher[:, :1]),
                                        scores, mask, None, 2.0, 0.3)
  expected = ((0.3 * (student[:, 0] - teacher[:, 0]) ** 2
               + 0.7 * (student[:, 0] - scores) ** 2) * mask).sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A finished SST-2 run of the tiny BERT (the teacher workdir)."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  config = tiny_config(**{"train.num_epochs": 1.0, "data.train_examples": 96})
  train.train_and_evaluate(config, str(workdir))
  return workdir


def _student(teacher, **updates):
  return tiny_config(**{"distill.teacher": str(teacher), "train.num_epochs": 1.0,
                        "data.train_examples": 64, "seed": 1, **updates})


def test_cached_outputs_are_a_live_teachers_to_the_bit(teacher):
  """The first student run computes the teacher's outputs and caches them; the next reads the
  cache: both equal the teacher's best checkpoint run live over the split, bit for bit."""
  config = _student(teacher)
  setup, params, _ = inference.load_best(distill.teacher_config(teacher), teacher)
  split = load_encoded(config.data, config.task, setup.tokenizer, "train", 64)
  shutil.rmtree(teacher / distill.CACHE, ignore_errors=True)
  computed = distill.teacher_outputs(config, split, setup.tokenizer)
  cached = list((teacher / distill.CACHE).glob("*.npy"))
  assert len(cached) == 1
  read = distill.teacher_outputs(config, split, setup.tokenizer)
  dp = DataParallel(config.parallel.backend, 1)
  live, _ = evaluation.run_model(
      dp.compile_eval_step(steps.make_eval_step(setup.model, tasks.get("classification"))), dp,
      dp.put_replicated(params), split, batch_size=config.eval.batch_size,
      buckets=tuple(config.data.length_buckets))
  assert computed.shape == (64, 2)
  np.testing.assert_array_equal(computed, live)
  np.testing.assert_array_equal(read, live)
  # Other rows (or a changed teacher: its parameters are in the key) make another entry.
  other = load_encoded(config.data, config.task, setup.tokenizer, "train", 32)
  distill.teacher_outputs(config, other, setup.tokenizer)
  assert len(list((teacher / distill.CACHE).glob("*.npy"))) == 2
  changed = jax.tree.map(lambda x: np.asarray(x) + 1e-3, params)
  keys = {distill.cache_key(p, split, 128, (64,)) for p in (params, changed)}
  assert len(keys) == 2


def test_a_student_distils_from_a_teacher_workdir(teacher, tmp_path):
  """A student run with distill.teacher trains on the soft loss: its first step's loss is the
  mix of the teacher's and the labels' losses (not the plain loss of the same model)."""
  config = _student(teacher, **{"distill.alpha": 1.0})
  train.train_and_evaluate(config, str(tmp_path / "student"))
  rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").open()]
  losses = [r["loss"] for r in rows if r.get("split") == "train"]
  assert losses and all(np.isfinite(losses))
  plain = tiny_config(**{"train.num_epochs": 1.0, "data.train_examples": 64, "seed": 1})
  train.train_and_evaluate(plain, str(tmp_path / "plain"))
  plain_rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").open()]
  plain_losses = [r["loss"] for r in plain_rows if r.get("split") == "train"]
  assert abs(losses[0] - plain_losses[0]) > 1e-3  # another objective from the same start
  results = json.loads((tmp_path / "student" / "results.json").read_text())
  assert 0 <= results["final"]["results"]["validation"]["accuracy"] <= 1


def test_bad_teachers_and_settings_are_refused_in_one_line(teacher, tmp_path):
  with pytest.raises(ConfigError, match="distill.teacher: .* holds no run"):
    distill.teacher_config(tmp_path)
  regression = _student(teacher, **{"task.kind": "regression", "task.label_names": ()})
  with pytest.raises(ConfigError, match="its task.kind is 'classification', the student's "
                                        "'regression'"):
    distill.check_teacher(regression, distill.teacher_config(teacher))
  config = _student(teacher, **{"distill.temperature": 0.0})
  with pytest.raises(ConfigError, match="distill.temperature: must be positive"):
    config_lib.validate(config)
  config = _student(teacher, **{"task.kind": "masked_lm", "task.label_names": (),
                                "task.metrics": ("accuracy",)})
  with pytest.raises(ConfigError, match="masked_lm has no distillation loss yet; "
                                        "classification, regression, .*question_answering.* have"):
    config_lib.validate(config)


def test_a_distilled_run_resumes_bit_exactly(teacher, tmp_path, monkeypatch):
  """A student killed after its step-5 checkpoint resumes (its teacher outputs read back from
  the cache) and ends where an uninterrupted one does: the same parameters and losses."""
  from helpers import assert_same_params, final_state, train_losses
  from research.data.batches import TrainBatches
  config = _student(teacher, **{"train.num_epochs": 2.0})
  train.train_and_evaluate(config, str(tmp_path / "whole"))
  original = TrainBatches.batch

  def batch(self, step, *args):
    if step == 7:
      raise RuntimeError("killed")
    return original(self, step, *args)

  with monkeypatch.context() as patch:
    patch.setattr(TrainBatches, "batch", batch)
    with pytest.raises(RuntimeError, match="killed"):
      train.train_and_evaluate(_student(teacher, **{"train.num_epochs": 2.0}),
                               str(tmp_path / "resumed"))
  assert final_state(tmp_path / "resumed")[0] == 5
  train.train_and_evaluate(_student(teacher, **{"train.num_epochs": 2.0}),
                           str(tmp_path / "resumed"))
  assert_same_params(final_state(tmp_path / "resumed")[1], final_state(tmp_path / "whole")[1])
  assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "whole")


def _ner(**updates):
  """CoNLL-2003 with the tiny random BERT on a slice."""
  from configs import conll2003
  config = conll2003.get_config()
  tiny = tiny_config()
  config.model = tiny.model
  config.data.update(train_examples=64, eval_examples=32, max_length=64, length_buckets=(64,),
                     eval_splits=tuple(config.data.eval_splits[:1]))
  config.train.update(num_epochs=1.0, batch_size=16)
  config.eval.batch_size = 16
  config.checkpoint.every_steps = 1000
  config.parallel.num_devices = 1
  for key, value in updates.items():
    config_lib.set_field(config, key, value)
  return config


def test_a_token_task_distils_on_first_sub_words(tmp_path):
  """NER: the soft loss is a KL per position, counted where the task's own loss is (each word's
  first sub-word); the teacher's outputs are a row of logits per position, cut to each batch's
  width; a student trains from a teacher workdir."""
  require_data("conll2003")
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 4, 3)) * 2, rng.normal(size=(2, 4, 3)) * 2
  labels = np.array([[1, -100, 2, 0], [0, 1, -100, -100]])
  mask = np.array([1.0, 1.0], np.float32)
  kind = tasks.get("token_classification")
  loss, weight = kind.distill_loss_sum(jnp.asarray(student), jnp.asarray(teacher), labels, mask,
                                       None, 3.0, 1.0)
  p_teacher = np.exp(_log_softmax(teacher / 3))
  kl = (p_teacher * (_log_softmax(teacher / 3) - _log_softmax(student / 3))).sum(-1) * 9
  assert float(weight) == 5.0
  np.testing.assert_allclose(float(loss), kl[labels != -100].sum(), rtol=1e-6)

  train.train_and_evaluate(_ner(), str(tmp_path / "teacher"))
  student_dir = tmp_path / "student"
  config = _ner(**{"distill.teacher": str(tmp_path / "teacher"), "seed": 1})
  train.train_and_evaluate(config, str(student_dir))
  cached = list((tmp_path / "teacher" / distill.CACHE).glob("*.npy"))
  assert len(cached) == 1 and np.load(cached[0]).shape[1:] == (64, 9)
  results = json.loads((student_dir / "results.json").read_text())["final"]["results"]
  assert all(np.isfinite(v) for split in results.values() for v in split.values())


def test_two_processes_distil_what_one_process_does(teacher, tmp_path):
  """A student over 2 processes x 2 devices (the teacher's outputs computed there, by all
  processes together) trains what one process with 4 devices trains from the cache."""
  import jax
  from helpers import final_state, train_losses
  from test_distributed import OVERRIDES, Launch
  shutil.rmtree(teacher / distill.CACHE, ignore_errors=True)
  launch = Launch(tmp_path / "two", "pmap", overrides={"distill.teacher": str(teacher)})
  assert launch.wait() == [0, 0], launch.output()
  assert "running the teacher" in launch.output(0)
  (cached,) = (teacher / distill.CACHE).glob("*.npy")
  written = cached.stat().st_mtime_ns
  one = tiny_config(**OVERRIDES, **{"parallel.backend": "pmap", "distill.teacher": str(teacher)})
  train.train_and_evaluate(one, str(tmp_path / "one"))
  assert [p.stat().st_mtime_ns for p in (teacher / distill.CACHE).glob("*.npy")] == [written]
  (step_two, two), (step_one, single) = final_state(tmp_path / "two"), final_state(tmp_path / "one")
  assert step_two == step_one == 24
  worst = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(single)))
  assert worst < 1e-6
  losses_two, losses_one = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
  np.testing.assert_allclose([losses_two[s] for s in range(1, 25)],
                             [losses_one[s] for s in range(1, 25)], rtol=1e-6)


def test_question_answering_distils_start_and_end_over_real_tokens():
  """QA's soft loss: the KL of the teacher's start (end) distribution over each window's real
  tokens to the student's, T^2, start and end averaged; padding logits change nothing."""
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 5, 2)) * 2, rng.normal(size=(2, 5, 2)) * 2
  attention = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
  kind = tasks.get("question_answering")
  soft = np.asarray(kind.distill_losses(jnp.asarray(student), jnp.asarray(teacher),
                                        jnp.asarray(attention), 2.0))
  for row in range(2):
    n = attention[row].sum()  # the window's real tokens
    sides = []
    for side in range(2):  # start, end
      t, s = _log_softmax(teacher[row, :n, side] / 2), _log_softmax(student[row, :n, side] / 2)
      sides.append((np.exp(t) * (t - s)).sum() * 4)
    np.testing.assert_allclose(soft[row], np.mean(sides), rtol=1e-5)
  padded = student.copy()
  padded[attention == 0] = 1e4  # padding positions' logits are never read
  np.testing.assert_allclose(kind.distill_losses(jnp.asarray(padded), jnp.asarray(teacher),
                                                 jnp.asarray(attention), 2.0), soft, rtol=1e-6)


@pytest.mark.parametrize("kind, width", [("relation_classification", 128),
                                         ("question_answering", 128)])
def test_relations_and_qa_students_train_from_a_teacher(tmp_path, kind, width):
  """SemEval relations (entity markers added to both tokenizers alike) and SQuAD 2.0 windows:
  a student trains from a teacher workdir of its task, the teacher's outputs cached."""
  from helpers import kind_config, tiny_checkpoint
  require_data("semeval2010_task8" if kind == "relation_classification" else "squad_v2_dev5")
  checkpoint = tiny_checkpoint(tmp_path / "checkpoint")
  train.train_and_evaluate(kind_config(kind, checkpoint, width), str(tmp_path / "teacher"))
  config = kind_config(kind, checkpoint, width)
  config_lib.set_field(config, "distill.teacher", str(tmp_path / "teacher"))
  config.seed = 1
  train.train_and_evaluate(config, str(tmp_path / "student"))
  (cached,) = (tmp_path / "teacher" / distill.CACHE).glob("*.npy")
  outputs = np.load(cached)
  assert outputs.shape[-1] == 2 if kind == "question_answering" else outputs.ndim == 2
  results = json.loads((tmp_path / "student" / "results.json").read_text())["final"]["results"]
  assert all(np.isfinite(v) for split in results.values() for v in split.values()
             if isinstance(v, float))



def test_a_damaged_or_unwritable_cache_is_recomputed_not_trusted(teacher, tmp_path, caplog):
  """A cache file cut short, or of other rows, is computed again and replaced; a teacher folder
  that cannot be written (a shared, read-only teacher) leaves the run going, uncached."""
  import logging
  config = _student(teacher)
  setup, _, _ = inference.load_best(distill.teacher_config(teacher), teacher)
  split = load_encoded(config.data, config.task, setup.tokenizer, "train", 64)
  shutil.rmtree(teacher / distill.CACHE, ignore_errors=True)
  good = distill.teacher_outputs(config, split, setup.tokenizer)
  (path,) = (teacher / distill.CACHE).glob("*.npy")
  for damage in (path.read_bytes()[:100], b"not a numpy file"):
    path.write_bytes(damage)
    with caplog.at_level(logging.WARNING):
      again = distill.teacher_outputs(config, split, setup.tokenizer)
    assert "computing them again" in caplog.text
    np.testing.assert_array_equal(again, good)
    np.testing.assert_array_equal(np.load(path), good)  # replaced
  np.save(path, good[:10])
  np.testing.assert_array_equal(distill.teacher_outputs(config, split, setup.tokenizer), good)
  shutil.rmtree(teacher / distill.CACHE)
  (teacher / distill.CACHE).write_text("")  # its folder cannot be made (root ignores modes)
  try:
    with caplog.at_level(logging.WARNING):
      np.testing.assert_array_equal(distill.teacher_outputs(config, split, setup.tokenizer),
                                    good)
  finally:
    (teacher / distill.CACHE).unlink()
  assert "not cached" in caplog.text
