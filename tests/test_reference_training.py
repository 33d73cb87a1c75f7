"""Our trainer against transformers' Trainer, step by step, on the same batches with dropout off.

test_model.py shows the forward passes agree. This covers the rest of training: the loss and its
mean, the backward pass, clipping, AdamW with its weight-decay mask, the warm-up and decay of the
learning rate, and the number of steps an epoch count gives. The Trainer gets the arguments the
glue_minilm reference uses (experiments/reference.py), our batches in our order, and our
initial head; both then train a tiny BERT for two epochs and must end with the same weights,
and the embedded MiniLM for 20 steps of real STS-B (regression) with the same losses.
With dropout on they differ by their random streams: dropout masks, and the order of batches,
whose structure moves results (experiments/glue_minilm/README.md).
"""

import json

import datasets
import numpy as np
import pytest
import torch
import transformers

from conftest import require_data
from helpers import assert_rescored, tiny_checkpoint, train_rows
from configs import glue
from experiments import reference
from research import inference, train
from research.data import sources, tokenization
from research.models import builder, hf_io

WORDS = ("the cat dog sat ran on under a big small red blue house tree river saw "
         "quickly slowly and not every some ate bird fish").split()


def _write_pairs(path, n, rng):
  """RTE-shaped rows: sentence pairs of varied lengths, labels as names."""
  with path.open("w") as f:
    for _ in range(n):
      a = " ".join(rng.choice(WORDS, rng.integers(3, 30)))
      b = " ".join(rng.choice(WORDS, rng.integers(2, 12)))
      label = "entailment" if set(b.split()) <= set(a.split()) else "not_entailment"
      f.write(json.dumps({"sentence1": a, "sentence2": b, "label": label}) + "\n")


def _config(checkpoint, data):
  c = glue.get_config("rte")
  c.model.checkpoint = str(checkpoint)
  c.model.hidden_dropout_prob = 0.0
  c.model.attention_probs_dropout_prob = 0.0
  c.data.dataset, c.data.local_name = str(data), ""
  c.data.length_buckets = (16, 32, 64, 128)
  c.train.batch_size = 8
  c.train.num_epochs = 2.0
  c.optimizer.learning_rate = 1e-3  # large enough for the weights and loss to move visibly
  c.optimizer.weight_decay = 5.0  # decay as large as Adam's step: a wrong mask would show
  c.eval.batch_size = 16
  c.eval.every_steps = 1000  # evaluate (and keep as the best) only the final weights
  c.log.every_steps = 1
  c.parallel.num_devices = 1
  return c


def _train_reference(c, model_setup, initial, workdir, epochs):
  """The Trainer on our `epochs` epochs of batches, in our order, as one epoch of its own (as
  the runner's reference_our_order system), from our initial head. Returns its per-step logs
  and losses and its final state dict."""
  tokenizer = tokenization.load_tokenizer(model_setup.tokenizer_dir)
  order = reference.our_train_order(c, epochs)
  rows = sources.load_split(sources.resolve_source(c.data), c.data.subset,
                            c.data.train_split).select(order.tolist())
  encoded, _ = reference.trainer_inputs(c.task, tokenizer, c.data.max_length, rows)
  model = reference.reference_model(c.task, str(model_setup.checkpoint_dir),
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  with torch.no_grad():  # our head's initialisation
    model.classifier.weight.copy_(torch.tensor(np.array(initial["classifier"]["kernel"]).T))
    model.classifier.bias.copy_(torch.tensor(np.array(initial["classifier"]["bias"])))
  losses = []

  class InOrder(reference.in_order_trainer()):
    def compute_loss(self, model, inputs, *args, **kwargs):
      loss = super().compute_loss(model, inputs, *args, **kwargs)
      losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
      return loss

  args = reference.reference_training_args(c, c.seed, 1.0, workdir, logging_steps=1,
                                        save_strategy="no")
  trainer = InOrder(model=model, args=args, train_dataset=datasets.Dataset.from_dict(
      dict(encoded)), data_collator=transformers.DataCollatorWithPadding(tokenizer),
                    processing_class=tokenizer)
  trainer.train()
  logs = [r for r in trainer.state.log_history if "grad_norm" in r]
  return logs, losses, {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _train_both(c, workdir):
  """Ours on `c`, then the Trainer on the same batches from the same initial weights."""
  train.train_and_evaluate(c, workdir / "ours")
  inference.export(c, workdir / "ours", workdir / "ours_export")
  # The initial parameters our run started from (its init key), for the reference's head.
  model_setup = builder.build_model(c)
  initial = builder.init_params(model_setup, train.seed_keys(c.seed)[0])
  logs, losses, final = _train_reference(c, model_setup, initial, workdir / "reference",
                                         int(c.train.num_epochs))
  return dict(ours=train_rows(workdir / "ours"), ours_workdir=workdir / "ours",
              ours_final=hf_io.read_state_dict(workdir / "ours_export"),
              reference_logs=logs, reference_losses=losses, reference_final=final,
              initial=hf_io.state_dict_from_params(initial))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("reference_training")
  tiny_checkpoint(tmp / "checkpoint")
  (tmp / "data").mkdir()
  rng = np.random.default_rng(0)
  _write_pairs(tmp / "data" / "train.jsonl", 100, rng)  # 12 batches of 8, 4 examples dropped
  _write_pairs(tmp / "data" / "validation.jsonl", 16, rng)
  return _train_both(_config(tmp / "checkpoint", tmp / "data"), tmp)


def test_same_number_of_steps_and_learning_rates(runs):
  ours, logs = runs["ours"], runs["reference_logs"]
  assert len(ours) == len(logs) == 24
  ours_lr = [r["learning_rate"] for r in ours]  # the rate each step used, in both logs
  # measured 3.2e-7 relative (ours is float32) on 2-core EPYC (AVX2); 3x
  np.testing.assert_allclose(ours_lr, [r["learning_rate"] for r in logs], rtol=1e-6, atol=1e-12)
  # float32's 1e-3 is 4.8e-8 off (measured), within one ulp anywhere
  assert ours_lr[0] == 0.0 and max(ours_lr) == pytest.approx(1e-3, rel=2e-7)


def test_same_losses_and_gradient_norms_step_by_step(runs):
  ours, logs = runs["ours"], runs["reference_logs"]
  # measured on 2-core EPYC (AVX2), relative: losses 2.8e-6 (7x), gradient norms 1.8e-5 (6x)
  np.testing.assert_allclose([r["loss"] for r in ours], runs["reference_losses"], rtol=2e-5)
  np.testing.assert_allclose([r["grad_norm"] for r in ours], [r["grad_norm"] for r in logs],
                             rtol=1e-4)
  assert runs["reference_losses"][-1] < runs["reference_losses"][0] - 0.05  # it trained


def test_same_weights_after_training(runs):
  """Every tensor's update agrees to 0.15% of its size; the updates are far from zero, except the
  attention key biases': softmax is invariant to them, so their gradient is zero but for
  rounding in both systems."""
  ours, reference, initial = runs["ours_final"], runs["reference_final"], runs["initial"]
  assert set(initial) <= set(ours)
  for key, start in initial.items():
    ref_key = key if key in reference else key.removeprefix("bert.")
    ours_update, ref_update = ours[key] - start, reference[ref_key] - start
    scale = np.abs(ref_update).max()
    if key.endswith("attention.self.key.bias"):
      assert max(scale, np.abs(ours_update).max()) < 1e-6, key  # measured 8.8e-8 at most
      continue
    assert scale > 1e-4, key  # every tensor moved (decayed ones included)
    # measured 1.2e-4 of the scale at worst (the position embeddings) on 2-core EPYC; 13x
    np.testing.assert_allclose(ours_update, ref_update, atol=0.0015 * scale, err_msg=key)


STSB_STEPS = 20


@pytest.fixture(scope="module")
def stsb_runs(tmp_path_factory):
  """At scale: the embedded MiniLM on the first batches of real STS-B, regression (MSE)."""
  require_data("stsb")
  c = glue.get_config("stsb")
  c.model.hidden_dropout_prob = 0.0
  c.model.attention_probs_dropout_prob = 0.0
  c.data.train_examples = STSB_STEPS * c.train.batch_size
  c.data.eval_examples = 32
  # One program to compile: these pairs are at most 31 tokens long (none is cut).
  c.data.max_length, c.data.length_buckets = 32, (32,)
  c.train.num_epochs = 1.0
  c.eval.every_steps = 1000
  c.log.every_steps = 1
  c.parallel.num_devices = 1
  return _train_both(c, tmp_path_factory.mktemp("reference_training_stsb"))


def test_real_checkpoint_regression_step_by_step(stsb_runs):
  """The embedded checkpoint's 6 layers of 384 on real sentence pairs: the same losses, gradient
  norms and final weights as the Trainer (what the tiny model above cannot show: numerics at
  scale, and the regression head's MSE)."""
  ours, logs = stsb_runs["ours"], stsb_runs["reference_logs"]
  assert len(ours) == len(logs) == STSB_STEPS
  # measured on 2-core EPYC (AVX2), relative: losses 5.6e-6, gradient norms 1.1e-5; ~10x
  np.testing.assert_allclose([r["loss"] for r in ours], stsb_runs["reference_losses"], rtol=6e-5)
  np.testing.assert_allclose([r["grad_norm"] for r in ours], [r["grad_norm"] for r in logs],
                             rtol=1e-4)
  losses = stsb_runs["reference_losses"]
  assert assert_rescored(stsb_runs["ours_workdir"]) == ["pearson", "spearman"]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5  # it trained
  ours_final, reference, initial = (stsb_runs[k] for k in ("ours_final", "reference_final",
                                                          "initial"))
  for key in ("classifier.weight", "bert.encoder.layer.5.output.dense.weight",
              "bert.embeddings.word_embeddings.weight"):
    ref_key = key if key in reference else key.removeprefix("bert.")
    ref_update = reference[ref_key] - initial[key]
    # measured 3.1e-3 of the largest update at worst (the word embeddings) on 2-core EPYC; 3x
    np.testing.assert_allclose(ours_final[key] - initial[key], ref_update,
                               atol=0.01 * np.abs(ref_update).max(), err_msg=key)
