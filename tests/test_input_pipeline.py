"""Sources, tokenisation, batching order and the every-example-once evaluation."""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import require_data
from helpers import load_encoded
from research import evaluation, steps, tasks
from research.data import sources, splits, tokenization
from research.data.batches import TrainBatches, eval_batches, register_batch_order
from research.data.encoded import IGNORE
from research.errors import DataError
from research.models import bert, hf_io
from research.parallel import DataParallel
from research.tasks import tokens


@pytest.fixture(scope="module")
def tokenizer():
  return tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())


def _task(kind="classification", fields=("sentence",), label_field="label",
          label_names=("negative", "positive")):
  return ml_collections.ConfigDict(dict(kind=kind, text_fields=fields, label_field=label_field,
                                        label_names=label_names, metrics=("accuracy",)))


def _data(dataset, **kw):
  values = dict(dataset=str(dataset), subset="", local_name="", max_length=64)
  values.update(kw)
  return ml_collections.ConfigDict(values)


def _sst2(tokenizer, n=100):
  require_data("sst2")
  return load_encoded(_data("", local_name="sst2"), _task(), tokenizer, "train", limit=n)


def _cached_maps(rows) -> list[str]:
  """The `map` results `datasets` cached beside a file-backed dataset's arrow file."""
  folder = pathlib.Path(rows.cache_files[0]["filename"]).parent
  return sorted(p.name for p in folder.glob("cache-*.arrow"))


def _zorblax_file(tmp_path) -> pathlib.Path:
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps({"sentence": f"a zorblax film number {i}", "label": i % 2})
                          + "\n" for i in range(20)))
  return path


def test_a_cached_tokenisation_is_reused_only_by_the_same_tokenizer_and_arguments(tmp_path):
  """`datasets` caches each `map` under a fingerprint we compute (its own pickles the whole
  tokenizer, most of a small split's encoding time): the same tokenizer and arguments reuse
  the cached result; another max_length or a tokenizer with one token more do not."""
  path = _zorblax_file(tmp_path)
  kind, embedded = tasks.get("classification"), hf_io.embedded_checkpoint_dir()
  # Each call as a new run makes it: the split read again, the tokenizer loaded again.
  encode = lambda max_length, tokenizer=None: kind.encode(  # noqa: E731
      sources.read_file(path), tokenizer or tokenization.load_tokenizer(embedded), _task(),
      max_length, "t")
  first = encode(16)
  files = _cached_maps(sources.read_file(path))
  assert len(files) == 1
  again = encode(16)
  assert _cached_maps(sources.read_file(path)) == files  # reused, not tokenised again
  np.testing.assert_array_equal(again.input_ids, first.input_ids)
  shorter = encode(4)
  assert shorter.lengths.max() == 4 < first.lengths.max()
  grown = tokenization.load_tokenizer(embedded)
  assert grown.add_tokens(["zorblax"]) == 1  # a word the vocabulary splits
  with_token = encode(16, grown)
  assert (with_token.input_ids == len(grown) - 1).sum() == 20  # the new id, once per row
  assert len(_cached_maps(sources.read_file(path))) == 3
  assert (first.input_ids == len(grown) - 1).sum() == 0


def test_an_edit_to_a_kinds_code_is_a_cache_miss(tmp_path, monkeypatch):
  """The cache key covers the code of every file that shapes encoded rows: research/data/ and
  the modules of the encoding kind's classes. A researcher's kind, edited between two runs,
  tokenises anew; unedited, it reuses the cached split; a built-in kind's key covers its own
  module, not another kind's."""
  from research.data import cache
  from research.tasks import relations, sequence, tokens
  module_file = tmp_path / "my_kind.py"
  source = ("from research.tasks.sequence import Classification\n\n\n"
            "class Mine(Classification):\n  name = 'mine'\n")
  module_file.write_text(source)

  def fresh_kind():
    spec = importlib.util.spec_from_file_location("my_kind", module_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "my_kind", module)  # imported, as a plug-in kind is
    spec.loader.exec_module(module)
    return module.Mine()

  path = _zorblax_file(tmp_path)
  tokenizer = tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())
  fresh_kind().encode(sources.read_file(path), tokenizer, _task(), 16, "t")
  files = _cached_maps(sources.read_file(path))
  assert len(files) == 1
  fresh_kind().encode(sources.read_file(path), tokenizer, _task(), 16, "t")
  assert _cached_maps(sources.read_file(path)) == files  # the same code: reused
  module_file.write_text(source + "  # an edit that changes no row: still another key\n")
  edited = fresh_kind()
  edited.encode(sources.read_file(path), tokenizer, _task(), 16, "t")
  assert len(_cached_maps(sources.read_file(path))) == 2  # tokenised anew
  digests = {kind: cache.code_digest(kind) for kind in (
      sequence.Classification, sequence.Regression, tokens.TokenClassification,
      relations.RelationClassification, type(edited))}
  assert len(set(digests.values())) == 4  # classification and regression share sequence.py
  assert digests[sequence.Classification] == digests[sequence.Regression]


# ---- sources -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_local_files_of_each_format(tmp_path, tokenizer, suffix):
  rows = [{"text": "a fine film", "label": "pos"}, {"text": "dull , dull", "label": "neg"}]
  path = tmp_path / f"train{suffix}"
  if suffix == ".jsonl":
    path.write_text("\n".join(f'{{"text": "{r["text"]}", "label": "{r["label"]}"}}'
                              for r in rows))
  elif suffix == ".parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
  else:
    import csv
    with path.open("w", newline="") as f:
      writer = csv.DictWriter(f, ["text", "label"], delimiter="\t" if suffix == ".tsv" else ",")
      writer.writeheader()
      writer.writerows(rows)
  split = load_encoded(_data(tmp_path), _task(fields=("text",), label_names=("neg", "pos")),
                       tokenizer, "train")
  assert split.labels.tolist() == [1, 0]  # label strings mapped through label_names
  assert split.lengths.tolist() == [5, 5]  # [CLS] + 3 words + [SEP]; "," is a token


def test_missing_split_names_what_exists(tmp_path):
  (tmp_path / "train.jsonl").write_text('{"sentence": "x", "label": 0}\n')
  with pytest.raises(DataError, match=r"no file for split 'dev'.*\['train'\]"):
    sources.load_split(str(tmp_path), "", "dev")


def test_unreadable_file_is_named(tmp_path):
  (tmp_path / "train.csv").write_text("text,label\na,b,c,d\n\"unclosed\n")
  with pytest.raises(DataError, match="train.csv"):
    sources.load_split(str(tmp_path), "", "train")


@pytest.mark.parametrize("kind,rows,message", [
    ("classification", ['"x", "label": 1', '"y", "label": 5'],
     "row 2: label 5 is neither one of task.label_names ['negative', 'positive'] nor an id 0..1"),
    ("classification", ['"x", "label": "positive"', '"y", "label": "meh"', '"z", "label": "no"'],
     "row 2: label 'meh' is neither one of task.label_names ['negative', 'positive'] nor an id "
     "0..1; 2 such labels"),
    ("classification", ['"x", "label": 1', '"y", "label": null'], "row 2: label None is"),
    ("classification", ['"x", "label": 1', '"y", "label": NaN'], "row 2: label nan is"),
    ("classification", ['"x", "label": -1'], "row 1: label -1 is neither one of task.label_names "
     "['negative', 'positive'] nor an id 0..1 (a GLUE test split has no labels: -1)"),
    ("regression", ['"x", "label": 0.5', '"y", "label": NaN'],
     "row 2: label nan is not a finite number"),
    ("regression", ['"x", "label": 0.5', '"y", "label": null', '"z", "label": 1.0'],
     "row 2: label None is not a finite number"),
])
def test_every_bad_label_is_named_with_its_row(tmp_path, tokenizer, kind, rows, message):
  """NaN and null labels once trained (or scored a Pearson of 0.0) without a word."""
  (tmp_path / "validation.jsonl").write_text("".join('{"sentence": %s}\n' % r for r in rows))
  task = _task(kind=kind, label_names=() if kind == "regression" else ("negative", "positive"))
  with pytest.raises(DataError) as raised:
    load_encoded(_data(tmp_path), task, tokenizer, "validation")
  assert str(raised.value).startswith(f"{tmp_path} [validation]: {message}")


def test_bad_tags_and_missing_fields_are_named(tmp_path, tokenizer):
  (tmp_path / "train.jsonl").write_text('{"tokens": ["a", "b"], "tags": ["O", "B-PER"]}\n'
                                        '{"tokens": ["c", "d"], "tags": ["O", "X"]}\n'
                                        '{"tokens": ["e"], "tags": ["O", "O"]}\n')
  task = _task(kind="token_classification", fields=("tokens",), label_field="tags",
               label_names=("O", "B-PER"))
  with pytest.raises(DataError, match=r"\[train\]: row 2, word 2: label 'X' is neither"):
    load_encoded(_data(tmp_path), task, tokenizer, "train")
  with pytest.raises(DataError, match=r"no field \['text'\]"):
    load_encoded(_data(tmp_path), _task(fields=("text",), label_field="tags"), tokenizer,
                 "train")


def test_research_data_dir_overrides_the_hub_name(monkeypatch, tmp_path):
  (tmp_path / "mytask").mkdir()
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
  assert (sources.resolve_source(_data("nyu-mll/glue", local_name="mytask"))
          == str(tmp_path / "mytask"))
  with pytest.raises(DataError, match="has no folder 'other'"):
    sources.resolve_source(_data("nyu-mll/glue", local_name="other"))
  monkeypatch.delenv(sources.DATA_DIR_ENV)
  monkeypatch.setattr(sources, "hub_reachable", lambda: True)
  assert sources.resolve_source(_data("nyu-mll/glue", local_name="mytask")) == "nyu-mll/glue"
  monkeypatch.setattr(sources, "hub_reachable", lambda: False)  # and no slice of 'mytask' shipped
  with pytest.raises(DataError, match="no data for 'mytask': RESEARCH_DATA_DIR is not set; "
                     r"the hub \(nyu-mll/glue\) is offline or unreachable. Set"):
    sources.resolve_source(_data("nyu-mll/glue", local_name="mytask"))


# ---- tokenisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [128, 24])
def test_sentence_pairs_match_the_hugging_face_tokenizer(tokenizer, max_length):
  require_data("mrpc")
  task = _task(fields=("sentence1", "sentence2"),
               label_names=("not_equivalent", "equivalent"))
  split = load_encoded(_data("", local_name="mrpc", max_length=max_length), task, tokenizer,
                       "validation", limit=40)
  rows = sources.load_split(sources.resolve_source(_data("", local_name="mrpc")), "", "validation")
  rows = rows.select(range(40))
  reference = tokenizer(list(rows["sentence1"]), list(rows["sentence2"]), truncation=True,
                        max_length=max_length)
  truncated = 0
  for i in range(40):
    n = split.lengths[i]
    assert split.input_ids[i, :n].tolist() == reference["input_ids"][i]
    assert split.token_type_ids[i, :n].tolist() == reference["token_type_ids"][i]
    assert (split.input_ids[i, n:] == 0).all()
    ids = reference["input_ids"][i]
    assert ids.count(tokenizer.sep_token_id) == 2  # both sentences survive truncation
    truncated += n == max_length
  assert (truncated > 0) == (max_length == 24)


def test_token_labels_sit_on_first_sub_words(tmp_path, tokenizer):
  (tmp_path / "train.jsonl").write_text(
      '{"tokens": ["Peter", "Blackburn", "visited", "1996-08-22"], '
      '"ner_tags": ["B-PER", "I-PER", "O", "O"]}\n')
  names = ("O", "B-PER", "I-PER")
  task = _task(kind="token_classification", fields=("tokens",), label_field="ner_tags",
               label_names=names)
  split = load_encoded(_data(tmp_path), task, tokenizer, "train")
  word_ids = tokenizer(["Peter", "Blackburn", "visited", "1996-08-22"],
                       is_split_into_words=True).word_ids()
  n = split.lengths[0]
  labels, words = split.labels[0, :n], split.word_index[0, :n]
  seen = set()
  for position, word in enumerate(word_ids):
    if word is None or word in seen:
      assert labels[position] == IGNORE and words[position] == -1
    else:
      seen.add(word)
      assert words[position] == word
      assert names[labels[position]] == ["B-PER", "I-PER", "O", "O"][word]
  assert (labels == IGNORE).sum() > 2  # the date splits into several sub-words
  # Round trip: logits that pick each first sub-word's gold tag give back the word tags.
  one_hot = np.eye(len(names))[np.where(split.labels == IGNORE, 0, split.labels)]
  assert tokens.word_predictions(split, one_hot)[0].tolist() == [1, 2, 0, 0]


def test_words_beyond_max_length_are_predicted_as_the_first_tag(tmp_path, tokenizer):
  words = [f"w{i}" for i in range(30)]
  (tmp_path / "train.jsonl").write_text(
      '{"tokens": %s, "ner_tags": %s}\n' % (str(words).replace("'", '"'),
                                           str(["B-PER"] * 30).replace("'", '"')))
  task = _task(kind="token_classification", fields=("tokens",), label_field="ner_tags",
               label_names=("O", "B-PER"))
  split = load_encoded(_data(tmp_path, max_length=16), task, tokenizer, "train")
  assert len(split.word_labels[0]) == 30  # gold keeps every word
  one_hot = np.eye(2)[np.where(split.labels == IGNORE, 0, split.labels)]
  predicted = tokens.word_predictions(split, one_hot)[0]
  covered = (split.word_index[0] >= 0).sum()
  assert 0 < covered < 30
  assert predicted[:covered].tolist() == [1] * covered
  assert predicted[covered:].tolist() == [0] * (30 - covered)


# ---- batches --------------------------------------------------------------------------------


def test_training_order_is_a_function_of_seed_and_epoch(tokenizer):
  split = _sst2(tokenizer)
  make = lambda seed, group=0: TrainBatches(  # noqa: E731
      split, batch_size=8, accum_steps=2, seed=seed, buckets=(16, 32, 64), group_by_length=group)
  a, b = make(0), make(0)
  assert a.steps_per_epoch == 12  # 100 // 8: the remainder is dropped
  sequential = list(a(0, 30))
  for step in (29, 3, 17, 12):  # random access, another instance: the same batches
    for key in sequential[step]:
      np.testing.assert_array_equal(b.batch(step)[key], sequential[step][key])
  first, second = a.epoch_order(0), a.epoch_order(1)
  assert len(set(first.ravel())) == 96 and not np.array_equal(first, second)
  assert not np.array_equal(make(1).epoch_order(0), first)
  batch = sequential[0]
  assert batch["input_ids"].shape[:2] == (2, 4)  # [accum, micro-batch, width]
  assert batch["input_ids"].shape[2] in (16, 32, 64)


def test_batches_use_the_smallest_bucket_and_grouping_cuts_padding(tokenizer):
  split = _sst2(tokenizer, n=400)
  def padding(group):
    batches = TrainBatches(split, batch_size=16, accum_steps=1, seed=0,
                           buckets=(16, 32, 64), group_by_length=group)
    tokens = pad = 0
    for batch in batches(0, batches.steps_per_epoch):
      real = batch["attention_mask"].sum()
      width = batch["input_ids"].shape[-1]
      longest = batch["attention_mask"].sum(-1).max()
      assert width == min(b for b in (16, 32, 64) if b >= longest)
      tokens, pad = tokens + batch["attention_mask"].size, pad + batch["attention_mask"].size - real
    covered = np.sort(batches.epoch_order(0).ravel())
    return pad / tokens, covered
  plain, covered_plain = padding(0)
  grouped, covered_grouped = padding(10)
  np.testing.assert_array_equal(covered_plain, covered_grouped)  # same examples, other order
  assert grouped < plain - 0.1


def test_eval_sees_every_example_once_and_matches_a_plain_loop(tokenizer):
  split = _sst2(tokenizer, n=37)  # 37 = 4 batches of 10 with 3 padding rows
  config = bert.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
  model = tasks.get("classification").build_model(config, 2, dtype=jnp.float32,
                                                  param_dtype=jnp.float32, classifier_dropout=None)
  ids = jnp.ones((1, 4), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), ids, ids)["params"]
  dp = DataParallel("pmap", 2)
  eval_step = dp.compile_eval_step(steps.make_eval_step(model, tasks.get("classification")))
  outputs, loss = evaluation.run_model(eval_step, dp, dp.put_replicated(params), split,
                                       batch_size=10, buckets=(16, 32, 64))
  expected, losses = [], []
  one = jax.jit(lambda ids, mask, types: model.apply({"params": params}, ids, mask, types))
  for i in range(len(split)):  # one example at a time, at the full width of 64
    mask = (np.arange(64) < split.lengths[i])[None].astype(np.int32)
    logits = one(split.input_ids[i:i + 1], mask, split.token_type_ids[i:i + 1])
    expected.append(np.asarray(logits[0]))
    losses.append(-jax.nn.log_softmax(logits[0])[split.labels[i]])
  np.testing.assert_allclose(outputs, np.stack(expected), atol=1e-5)
  assert loss == pytest.approx(float(np.mean(losses)), rel=1e-5)
  scalars, report = evaluation.score(_task(), split, outputs, loss)
  assert report["macro avg"]["support"] == 37
  assert scalars["accuracy"] == pytest.approx(
      np.mean(np.stack(expected).argmax(-1) == split.labels))


def test_each_process_builds_its_block_of_every_batch_at_the_whole_batchs_width(tokenizer):
  """Two processes' blocks, side by side, are the one-process batch: same rows, same width."""
  split = _sst2(tokenizer, n=200)
  batches = TrainBatches(split, batch_size=16, accum_steps=2, seed=0, buckets=(16, 32, 64),
                         group_by_length=0)
  for step in range(12):
    whole = batches.batch(step)
    blocks = [batches.batch(step, slice(0, 4)), batches.batch(step, slice(4, 8))]
    for key, value in whole.items():
      np.testing.assert_array_equal(np.concatenate([b[key] for b in blocks], axis=1), value)
    assert sorted(whole["example_index"].ravel()) == sorted(batches.epoch_order(
        step // batches.steps_per_epoch)[step % batches.steps_per_epoch])
  widths = set()
  for whole, *blocks in zip(eval_batches(split, 10, (16, 32, 64)),
                            eval_batches(split, 10, (16, 32, 64), slice(0, 5)),
                            eval_batches(split, 10, (16, 32, 64), slice(5, 10))):
    for key, value in whole.items():
      np.testing.assert_array_equal(np.concatenate([b[key] for b in blocks]), value)
    widths.add(whole["input_ids"].shape[1])
  assert len(widths) > 1  # blocks of short rows were padded to their batch's bucket


def test_a_registered_batch_order_replaces_the_shuffle(tokenizer):
  split = _sst2(tokenizer, n=100)
  register_batch_order("reversed_for_test",
                       lambda lengths, batch_size, rng: np.arange(len(lengths))[::-1])
  batches = TrainBatches(split, batch_size=8, accum_steps=1, seed=0, buckets=(16, 32, 64),
                         order="reversed_for_test")
  assert batches.epoch_order(0)[0].tolist() == list(range(99, 91, -1))
  assert batches.epoch_order(0).shape == (12, 8)  # the remainder is dropped
  with pytest.raises(DataError, match="data.batch_order 'nope' is not a registered"):
    TrainBatches(split, batch_size=8, accum_steps=1, seed=0, buckets=(64,), order="nope")


# ---- a validation split held out of train ----------------------------------------------------


def _holdout_data(tmp_path, amount):
  rows = [{"text": f"sentence number {i} " + "word " * (i % 7), "label": "neg" if i % 4 else "pos"}
          for i in range(200)]  # 50 pos, 150 neg; every text different
  (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return _data(tmp_path, train_split="train", eval_splits=("validation",),
               validation_from_train=amount)


def test_validation_from_train_is_fixed_disjoint_and_stratified(tmp_path, tokenizer):
  task = _task(fields=("text",), label_names=("neg", "pos"))
  data = _holdout_data(tmp_path, 0.1)
  train, held = (load_encoded(data, task, tokenizer, name) for name in ("train", "validation"))
  everything = load_encoded(_data(tmp_path), task, tokenizer, "train")
  rows = lambda split: [tuple(r) for r in split.input_ids]  # noqa: E731
  assert (len(train), len(held)) == (180, 20)
  assert not set(rows(train)) & set(rows(held))
  assert sorted(rows(train) + rows(held)) == sorted(rows(everything))
  assert held.labels.tolist().count(1) == 5  # a quarter of the rows are 'pos', in both parts
  again = load_encoded(_holdout_data(tmp_path, 20), task, tokenizer, "validation")
  assert rows(again) == rows(held)  # a count or a fraction, every call: the same rows
  # Training rows keep their file order; the limit takes the first of those that are left.
  first = load_encoded(data, task, tokenizer, "train", limit=10)
  assert rows(first) == rows(train)[:10]
  record = splits.data_record(data, {"train": train, "validation": held})
  assert record["validation"]["file"].endswith("train.jsonl (validation_from_train=0.1, seed 0)")
  for bad in (200, 1.5, -3):
    with pytest.raises(DataError, match="must be a fraction in"):
      load_encoded(_holdout_data(tmp_path, bad), task, tokenizer, "validation")


def test_holdout_indices_keep_each_label_share():
  labels = ["a"] * 70 + ["b"] * 27 + ["c"] * 3
  held = splits.holdout_indices(labels, 10, stratify=True)
  assert list(held) == sorted(set(held)) and len(held) == 10
  # Shares 7.0, 2.7 and 0.3 rows: the largest remainder (b's) gets the 10th.
  assert {k: [labels[i] for i in held].count(k) for k in "abc"} == {"a": 7, "b": 3, "c": 0}
  assert list(splits.holdout_indices(labels, 10, stratify=True)) == list(held)


def test_validation_from_train_needs_the_validation_split_listed():
  from configs import sst2
  from research import config_lib
  config = sst2.get_config()
  config.data.validation_from_train = 500
  config.data.eval_splits = ("test",)
  with pytest.raises(config_lib.ConfigError, match="list 'validation' in data.eval_splits"):
    config_lib.validate(config)
  config.data.eval_splits = ("validation", "test")
  config_lib.validate(config)
