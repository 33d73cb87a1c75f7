"""A new task kind is one module: the README's worked example, run end to end.

`HalfOrder` is a kind no module of research/tasks/ has: it makes its own labelled examples from
unlabelled text (is a text's second half after its first, or swapped before it?), so it brings
its own encoder and label names and takes everything else (the head, loss, metrics, records,
compare's scorers, the export as *ForSequenceClassification) from `Classification`. It is
registered here, trained, evaluated, asked for predictions and exported through the paths a
user runs, and every number is checked against scikit-learn or transformers.
"""

import json

import datasets
import numpy as np
import pytest
import sklearn.metrics
import torch
import transformers

from conftest import REPO, require_data
from helpers import assert_rescored, load_encoded, tiny_config
from research import config_lib, inference, tasks, train
from research.data.batches import make_batch
from research.models import hf_io
from research.tasks.sequence import Classification


# ---- the kind (README.md, "A new task kind is one module", shows it trimmed) ----------------


class HalfOrder(Classification):
  """Is a text in its order? Each text is cut at its middle word; every odd row of a split
  gets its halves swapped. Prediction reads the texts as given (in order or not)."""

  name = "half_order"
  metrics = ("accuracy", "f1", "matthews_corr")
  labels = ("in_order", "swapped")
  stratify_holdout = False  # its texts have no labels until it makes them

  def holdout_field(self, task):
    return task.text_fields[0]

  def validate(self, task, config, check):
    check(tuple(task.label_names) == self.labels, "task.label_names", f"must be {self.labels}")

  def encode(self, dataset, tokenizer, task, max_length, where, labelled=True):
    halves = [halve(text) for text in dataset[task.text_fields[0]]]
    swapped = [labelled and i % 2 == 1 for i in range(len(halves))]
    pairs = datasets.Dataset.from_dict({
        "first": [b if s else a for (a, b), s in zip(halves, swapped)],
        "second": [a if s else b for (a, b), s in zip(halves, swapped)],
        "order": [self.labels[s] for s in swapped]})
    pair_task = task.copy_and_resolve_references()
    pair_task.update(text_fields=("first", "second"), label_field="order")
    return super().encode(pairs, tokenizer, pair_task, max_length, where)


def halve(text: str) -> tuple[str, str]:
  words = text.split()
  return " ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:])


@pytest.fixture
def half_order(monkeypatch):
  """The kind, registered for one test (the registry is restored after it)."""
  monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
  monkeypatch.setattr(tasks, "KINDS", tasks.KINDS)
  return tasks.register(HalfOrder())


# ---- the run -------------------------------------------------------------------------------


def test_a_kind_defined_in_one_class_trains_evaluates_predicts_and_exports(half_order,
                                                                           tmp_path):
  require_data("sst2")
  config = tiny_config(**{"task.kind": "half_order", "task.label_names": HalfOrder.labels,
                          "task.metrics": HalfOrder.metrics, "data.train_examples": 32,
                          "train.num_epochs": 1.0, "optimizer.learning_rate": 1e-3})
  config_lib.validate(config)
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, workdir)
  assert summary["final"]["step"] == 2

  # The split the kind encoded: odd rows swapped, labelled so.
  setup, params, _ = inference.load_best(config, workdir)
  split = load_encoded(config.data, config.task, setup.tokenizer, "validation",
                       config.data.eval_examples)
  assert split.labels.tolist() == [i % 2 for i in range(50)]
  texts = ["a gorgeous , witty film", "the worst movie of the year"]
  two = tasks.kind_of(config.task).encode(datasets.Dataset.from_dict({"sentence": texts}),
                                          setup.tokenizer, config.task, 64, "two texts")
  (a, b), (c, d) = halve(texts[0]), halve(texts[1])
  assert [two.input_ids[i, :two.lengths[i]].tolist() for i in (0, 1)] == [
      setup.tokenizer(a, b)["input_ids"], setup.tokenizer(d, c)["input_ids"]]
  # Texts without labels are enough, a validation split held out of them too.
  (tmp_path / "texts").mkdir()
  (tmp_path / "texts" / "train.jsonl").write_text(
      "".join(json.dumps({"sentence": f"text number {i} of twenty"}) + "\n" for i in range(20)))
  texts_data = config.data.copy_and_resolve_references()
  texts_data.update(dataset=str(tmp_path / "texts"), validation_from_train=0.25)
  held = load_encoded(texts_data, config.task, setup.tokenizer, "validation")
  assert held.labels.tolist() == [0, 1, 0, 1, 0]

  # Its metrics, as the run reported them, from our model's logits by scikit-learn.
  batch = make_batch(split, np.arange(50), tuple(config.data.length_buckets))
  logits = np.asarray(setup.model.apply({"params": params}, batch["input_ids"],
                                        batch["attention_mask"], batch["token_type_ids"]))
  predicted = logits.argmax(-1)
  reported = json.loads((workdir / "results.json").read_text())["final"]["results"]
  final = reported["validation"]
  assert final["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(split.labels,
                                                                           predicted))
  assert final["f1"] == pytest.approx(sklearn.metrics.f1_score(split.labels, predicted))
  assert final["matthews_corr"] == pytest.approx(
      sklearn.metrics.matthews_corrcoef(split.labels, predicted))
  evaluated = json.loads((workdir / "eval" / "validation_step2.json").read_text())
  assert evaluated["metrics"] == final
  assert evaluated["report"]["swapped"]["support"] == 25  # the kind's labels, per class
  saved = json.loads((workdir / "eval" / "validation_step2_per_example.json").read_text())
  assert saved["gold"] == split.labels.tolist() and saved["prediction"] == predicted.tolist()
  assert assert_rescored(workdir) == ["accuracy", "f1", "matthews_corr", "macro_f1"]

  # --mode=eval: the best checkpoint (the final one) scores the same.
  results = inference.evaluate(config, workdir)
  for name, value in final.items():
    assert results["validation"][name] == pytest.approx(value, rel=1e-5), name

  # --mode=predict and --mode=export: the exported model gives the predicted probabilities.
  texts = ["a gorgeous , witty film", "of the year the worst movie"]
  (tmp_path / "in.txt").write_text("".join(f"{t}\n" for t in texts))
  assert inference.predict(config, workdir, tmp_path / "in.txt", tmp_path / "out.jsonl") == 2
  rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  exported = inference.export(config, workdir, tmp_path / "hf")
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(exported)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
  firsts, seconds = zip(*(halve(t) for t in texts))
  with torch.no_grad():
    theirs = model(**tokenizer(list(firsts), list(seconds), padding=True,
                               return_tensors="pt")).logits.softmax(-1).numpy()
  assert model.config.id2label == {0: "in_order", 1: "swapped"}
  for text, row, probabilities in zip(texts, rows, theirs):
    assert row["sentence"] == text
    assert row["label"] == HalfOrder.labels[probabilities.argmax()]
    np.testing.assert_allclose(list(row["probabilities"].values()), probabilities, atol=2e-6)


def test_the_readme_shows_this_kind(half_order):
  """README.md's trimmed copy of the kind runs, and encodes as the one above."""
  readme = (REPO / "README.md").read_text().split("### A new task kind is one module")[1]
  code = readme.split("```python\n")[1].split("```")[0]
  registered = []
  namespace = {"Classification": Classification, "datasets": datasets, "halve": halve,
               "register": registered.append}
  exec(code, namespace)  # pylint: disable=exec-used
  assert [type(kind).__name__ for kind in registered] == ["HalfOrder"]
  config = tiny_config(**{"task.kind": "half_order", "task.label_names": HalfOrder.labels})
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_io.embedded_checkpoint_dir())
  rows = datasets.Dataset.from_dict({"sentence": ["a gorgeous , witty film", "so bad", "yes"]})
  for labelled in (True, False):
    ours, theirs = (kind.encode(rows, tokenizer, config.task, 16, "three texts", labelled)
                    for kind in (half_order, registered[0]))
    for field in ("input_ids", "token_type_ids", "lengths", "labels"):
      np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
  assert registered[0].holdout_field(config.task) == "sentence"
  checks = []
  registered[0].validate(config.task, config, lambda *args: checks.append(args))
  assert checks == [(True, "task.label_names", "must be ('in_order', 'swapped')")]
