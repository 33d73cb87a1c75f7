"""Our trainer against transformers' Trainer, step by step, on the same batches with dropout off.

test_model.py shows the forward passes agree. This covers the rest of training: the loss and its
mean, the backward pass, clipping, AdamW with its weight-decay mask, the warm-up and decay of the
learning rate, and the number of steps an epoch count gives. The Trainer gets the arguments the
glue_minilm reference uses (experiments/glue_minilm/run.py), our batches in our order, and our
initial head; both then train a tiny BERT for two epochs and must end with the same weights.
With dropout on, the two differ only by their random streams (dropout masks, data order).
"""

import importlib.util
import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers

from conftest import REPO
from configs import glue
from research import train
from research.data import input_pipeline
from research.models import hf_io

WORDS = ("the cat dog sat ran on under a big small red blue house tree river saw "
         "quickly slowly and not every some ate bird fish").split()


def _runner():
  spec = importlib.util.spec_from_file_location("glue_minilm_run",
                                                REPO / "experiments/glue_minilm/run.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_pairs(path, n, rng):
  """RTE-shaped rows: sentence pairs of varied lengths, labels as names."""
  with path.open("w") as f:
    for _ in range(n):
      a = " ".join(rng.choice(WORDS, rng.integers(3, 30)))
      b = " ".join(rng.choice(WORDS, rng.integers(2, 12)))
      label = "entailment" if set(b.split()) <= set(a.split()) else "not_entailment"
      f.write(json.dumps({"sentence1": a, "sentence2": b, "label": label}) + "\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("reference_training")
  checkpoint, data = tmp / "checkpoint", tmp / "data"
  torch.manual_seed(0)
  transformers.BertModel(transformers.BertConfig(
      vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, max_position_embeddings=128)).save_pretrained(checkpoint)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"):
    source = hf_io.embedded_checkpoint_dir() / name
    if source.is_file():
      shutil.copyfile(source, checkpoint / name)
  data.mkdir()
  rng = np.random.default_rng(0)
  _write_pairs(data / "train.jsonl", 100, rng)  # 12 batches of 8, 4 examples dropped
  _write_pairs(data / "validation.jsonl", 16, rng)

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

  workdir = tmp / "ours"
  train.train_and_evaluate(c, workdir)
  ours_losses = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text()
                 .splitlines()]
  ours_losses = [r for r in ours_losses if r["split"] == "train"]
  train.export(c, workdir, tmp / "ours_export")
  ours_final = hf_io.read_state_dict(tmp / "ours_export")

  # The reference sees our two epochs of batches, in our order, as one epoch of its own.
  model_setup = train.build_model(c)
  tokenizer = input_pipeline.load_tokenizer(model_setup.tokenizer_dir)
  split = input_pipeline.load_encoded(c.data, c.task, tokenizer, "train")
  batches = input_pipeline.TrainBatches(split, batch_size=8, accum_steps=1, seed=c.seed,
                                        buckets=tuple(c.data.length_buckets),
                                        group_by_length=c.data.group_by_length)
  order = np.concatenate([batches.epoch_order(e).reshape(-1) for e in range(2)])
  rows = input_pipeline.load_split(str(data), "", "train").select(order.tolist())
  encoded = tokenizer(list(rows["sentence1"]), list(rows["sentence2"]), truncation=True,
                      max_length=c.data.max_length)
  encoded["labels"] = [("entailment", "not_entailment").index(v) for v in rows["label"]]
  import datasets
  dataset = datasets.Dataset.from_dict(dict(encoded))

  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(checkpoint), num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  initial = train.init_params(model_setup, jax.random.split(jax.random.PRNGKey(c.seed))[0])
  with torch.no_grad():  # our head's initialisation
    model.classifier.weight.copy_(torch.from_numpy(np.asarray(initial["classifier"]["kernel"]).T))
    model.classifier.bias.copy_(torch.from_numpy(np.asarray(initial["classifier"]["bias"])))

  reference_losses = []

  class InOrder(transformers.Trainer):
    def _get_train_sampler(self, train_dataset=None):
      return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    def compute_loss(self, model, inputs, *args, **kwargs):
      loss = super().compute_loss(model, inputs, *args, **kwargs)
      reference_losses.append(float(loss[0] if isinstance(loss, tuple) else loss))
      return loss

  args = _runner().reference_training_args(c, c.seed, 1.0, tmp / "reference", logging_steps=1,
                                           save_strategy="no")
  trainer = InOrder(model=model, args=args, train_dataset=dataset,
                    data_collator=transformers.DataCollatorWithPadding(tokenizer),
                    processing_class=tokenizer)
  trainer.train()
  logs = [r for r in trainer.state.log_history if "grad_norm" in r]
  reference_final = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  initial_flat = hf_io.state_dict_from_params(initial)
  return dict(ours=ours_losses, ours_final=ours_final, reference_losses=reference_losses,
              reference_logs=logs, reference_final=reference_final, initial=initial_flat)


def test_same_number_of_steps_and_learning_rates(setup):
  ours, logs = setup["ours"], setup["reference_logs"]
  assert len(ours) == len(logs) == 24
  ours_lr = [r["learning_rate"] for r in ours]  # the rate each step used, in both logs
  np.testing.assert_allclose(ours_lr, [r["learning_rate"] for r in logs], rtol=1e-6, atol=1e-12)
  assert ours_lr[0] == 0.0 and max(ours_lr) == pytest.approx(1e-3)


def test_same_losses_and_gradient_norms_step_by_step(setup):
  ours, logs = setup["ours"], setup["reference_logs"]
  np.testing.assert_allclose([r["loss"] for r in ours], setup["reference_losses"], rtol=2e-5)
  np.testing.assert_allclose([r["grad_norm"] for r in ours], [r["grad_norm"] for r in logs],
                             rtol=1e-4)
  assert setup["reference_losses"][-1] < setup["reference_losses"][0] - 0.05  # it trained


def test_same_weights_after_training(setup):
  """Every tensor's update agrees to 1% of its size; the updates are far from zero, except the
  attention key biases': softmax is invariant to them, so their gradient is zero but for
  rounding in both systems."""
  ours, reference, initial = setup["ours_final"], setup["reference_final"], setup["initial"]
  assert set(initial) <= set(ours)
  for key, start in initial.items():
    ref_key = key if key in reference else key.removeprefix("bert.")
    ours_update, ref_update = ours[key] - start, reference[ref_key] - start
    scale = np.abs(ref_update).max()
    if key.endswith("attention.self.key.bias"):
      assert max(scale, np.abs(ours_update).max()) < 1e-6, key
      continue
    assert scale > 1e-4, key  # every tensor moved (decayed ones included)
    np.testing.assert_allclose(ours_update, ref_update, atol=0.01 * scale, err_msg=key)
