"""Masked-LM continued pretraining (task.kind masked_lm): masking, the LM head against
transformers' BertForMaskedLM, training, resume, export, and fine-tuning the result."""

import json
import logging
import os
import shutil
import signal

import datasets
import jax
import numpy as np
import pytest
import torch
import transformers

from conftest import REPO
from helpers import (assert_same_params, final_state, load_encoded, tiny_checkpoint, tiny_config,
                     train_losses)
from research import config_lib, errors, inference, tasks, train
from research.data import masking, sources, streaming, tokenization
from research.data.batches import TrainBatches, make_batch
from research.data.encoded import IGNORE
from research.errors import DataError
from research.models import bert, builder, hf_io

SLICE = REPO / "data" / "sst2"  # real sentences that ship with the repository


def mlm_config(**updates):
  """The tiny SST-2 config as continued pretraining on its sentences (labels unused)."""
  return tiny_config(**{"data.dataset": str(SLICE), "task.kind": "masked_lm",
                        "task.label_names": (), "task.metrics": ("accuracy", "perplexity"),
                        "eval.best_metric": "loss", "optimizer.learning_rate": 1e-3,
                        **updates})


def _sentences(n):
  rows = [json.loads(line) for line in (SLICE / "train.jsonl").read_text().splitlines()[:n]]
  return datasets.Dataset.from_dict({"sentence": [r["sentence"] for r in rows]})


def _encode(n=5000, **task):
  config = mlm_config(**{f"task.{k}": v for k, v in task.items()})
  tokenizer = tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())
  split = tasks.kind_of(config.task).encode(_sentences(n), tokenizer, config.task, 64, "sst2 slice")
  return split, tokenizer


def _masked_batches(split, epoch=0, batch_size=250):
  """Every row of `split` masked as in training epoch `epoch`, in batches."""
  for start in range(0, len(split), batch_size):
    indices = np.arange(start, min(start + batch_size, len(split)))
    yield indices, make_batch(split, indices, (64,), mask_key=masking.train_mask_key(0, epoch))


def test_masking_follows_bert_80_10_10_and_never_touches_special_tokens_or_padding():
  split, tokenizer = _encode()
  special = set(tokenizer.all_special_ids)
  counts = {"mask": 0, "random": 0, "kept": 0}
  for indices, batch in _masked_batches(split):
    for r, i in enumerate(indices):
      original = split.input_ids[i, :64]
      targets = batch["labels"][r] != IGNORE
      positions = batch["masked_positions"][r][targets]
      maskable = np.flatnonzero(split.mask_groups[i, :64] >= 0)
      # BERT's count: 15% of the maskable tokens, rounded, at least one; distinct positions.
      assert len(positions) == max(1, int(0.15 * len(maskable) + 0.5))
      assert len(set(positions)) == len(positions) and set(positions) <= set(maskable)
      assert not special & set(original[positions].tolist())
      np.testing.assert_array_equal(batch["labels"][r][targets], original[positions])
      changed = np.flatnonzero(batch["input_ids"][r] != original)
      assert set(changed) <= set(positions)  # nothing else is touched, padding stays 0
      now = batch["input_ids"][r][positions]
      counts["mask"] += int(np.sum(now == tokenizer.mask_token_id))
      counts["kept"] += int(np.sum(now == original[positions]))
      counts["random"] += int(np.sum((now != original[positions])
                                     & (now != tokenizer.mask_token_id)))
  total = sum(counts.values())
  assert total > 8000
  # 8,000+ draws: a standard deviation of at most 0.0045 on each share.
  assert abs(counts["mask"] / total - 0.8) < 0.02, counts
  assert abs(counts["random"] / total - 0.1) < 0.015, counts
  assert abs(counts["kept"] / total - 0.1) < 0.015, counts


def test_whole_word_masking_masks_every_sub_word_of_a_chosen_word():
  split, tokenizer = _encode(whole_word_masking=True)
  multi_piece_words = rows_without_targets = 0
  for indices, batch in _masked_batches(split):
    for r, i in enumerate(indices):
      groups = split.mask_groups[i, :64]
      targets = batch["labels"][r] != IGNORE
      positions = set(batch["masked_positions"][r][targets].tolist())
      maskable = np.flatnonzero(groups >= 0)
      count = max(1, int(0.15 * len(maskable) + 0.5))
      assert len(positions) <= count
      if not positions:  # as BERT: only when every word has more pieces than the count
        assert min(np.unique(groups[maskable], return_counts=True)[1]) > count
        rows_without_targets += 1
      for word in {groups[p] for p in positions}:
        pieces = set(np.flatnonzero(groups == word).tolist())
        assert pieces <= positions, (tokenizer.convert_ids_to_tokens(split.input_ids[i, :64]))
        multi_piece_words += len(pieces) > 1
  # The groups are the tokenizer's words: "##" pieces belong to the word before them.
  tokens = tokenizer.convert_ids_to_tokens(split.input_ids[0, :split.lengths[0]])
  groups = split.mask_groups[0, :split.lengths[0]]
  for k in range(1, len(tokens)):
    assert (groups[k] == groups[k - 1] and groups[k] >= 0) == tokens[k].startswith("##")
  assert multi_piece_words > 50 and rows_without_targets < len(split) // 10


def test_masks_depend_on_seed_epoch_and_example_only():
  split, _ = _encode(200)
  indices = np.arange(40, 80)
  key = masking.train_mask_key(3, 1)
  whole = make_batch(split, indices, (64,), mask_key=key)
  # The same rows in another batch (other neighbours, padding rows, another order).
  other = make_batch(split, np.concatenate([[-1, 7], indices[::-1]]), (64,), mask_key=key)
  for name in ("input_ids", "masked_positions", "labels"):
    np.testing.assert_array_equal(other[name][2:][::-1], whole[name])
  assert np.all(other["labels"][0] == IGNORE)  # a padding row predicts nothing
  next_epoch = make_batch(split, indices, (64,), mask_key=masking.train_mask_key(3, 2))
  other_seed = make_batch(split, indices, (64,), mask_key=masking.train_mask_key(4, 1))
  for changed in (next_epoch, other_seed):
    assert np.mean(np.any(changed["masked_positions"] != whole["masked_positions"], -1)) > 0.6
  evaluation = [make_batch(split, indices, (64,)) for _ in range(2)]
  np.testing.assert_array_equal(evaluation[0]["input_ids"], evaluation[1]["input_ids"])


def test_texts_are_concatenated_into_full_rows_or_kept_one_per_row(tmp_path):
  text = tmp_path / "train.txt"
  lines = ["A first line of text.", "", "   ", "The second line, a little longer than the first.",
           "Third."]
  text.write_text("\n".join(lines) + "\n")
  rows = sources.read_file(text)
  assert rows["text"][:2] == [lines[0], ""]
  tokenizer = tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())
  config = mlm_config(**{"task.text_fields": ("text",)})
  one_per_row = tasks.kind_of(config.task).encode(rows, tokenizer, config.task, 64, "train.txt")
  assert len(one_per_row) == 3  # blank lines dropped
  expected = [tokenizer(line)["input_ids"] for line in lines if line.strip()]
  for i, ids in enumerate(expected):
    assert one_per_row.input_ids[i, :one_per_row.lengths[i]].tolist() == ids
  config.task.line_by_line = False
  grouped = tasks.kind_of(config.task).encode(rows, tokenizer, config.task, 8, "train.txt")
  stream = sum(expected, [])
  assert len(grouped) == len(stream) // 8 and set(grouped.lengths) == {8}
  assert grouped.input_ids.reshape(-1).tolist() == stream[:len(grouped) * 8]  # rest dropped
  # Word groups stay unique across texts: no word spans two rows' texts.
  words = grouped.mask_groups.reshape(-1)
  words = words[words >= 0]
  assert np.all(np.diff(words) >= 0) and np.all(np.diff(words) <= 1)


def _torch_mlm_dir(tmp_path, vocab_size=120):
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, max_position_embeddings=64)).eval()
  with torch.no_grad():  # a bias and LayerNorm that are not at their init values
    for name, p in model.cls.named_parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  return tmp_path, model


def _logits_at(torch_model, ids, mask, types, positions):
  with torch.no_grad():
    out = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types)).logits.numpy()
  return np.take_along_axis(out, positions[:, :, None], axis=1)


def test_lm_head_equals_transformers_and_exports_back(tmp_path):
  checkpoint, reference = _torch_mlm_dir(tmp_path / "torch")
  config, hf_config = hf_io.load_config(checkpoint)
  state = hf_io.read_state_dict(checkpoint)
  model = bert.BertForMaskedLM(config)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, config.vocab_size, (3, 11))
  mask = np.ones_like(ids)
  mask[0, 6:] = mask[2, 9:] = 0
  ids = ids * mask
  types = np.zeros_like(ids)
  types[1, 5:] = 1
  positions = np.array([[1, 3, 5, 0], [2, 7, 9, 10], [8, 4, 4, 1]])
  template = jax.jit(model.init)(jax.random.key(1), ids, mask, types, positions)["params"]
  assert hf_io.has_head(state, template)
  assert not hf_io.has_head({k: v for k, v in state.items() if "predictions.bias" not in k},
                            template)
  params = hf_io.params_from_state_dict(state, jax.tree.map(np.asarray, template),
                                        load_head=True)
  ours = np.asarray(model.apply({"params": params}, ids, mask, types, positions))
  theirs = _logits_at(reference, ids, mask, types, positions)
  assert ours.shape == (3, 4, config.vocab_size)
  # measured 7.2e-7 max abs (logits up to 1.9) on 2-core EPYC (AVX2); 14x
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
  # Export: transformers loads it as BertForMaskedLM with the same logits.
  hf_io.export(params, tmp_path / "export", base_config=hf_config,
               architecture="BertForMaskedLM", label_names=(), num_labels=0,
               tokenizer_dir=hf_io.embedded_checkpoint_dir())
  loaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "export").eval()
  assert type(loaded).__name__ == "BertForMaskedLM"
  # measured bit-equal (torch on the same weights); 1e-6, our floor for float32 logits
  np.testing.assert_allclose(_logits_at(loaded, ids, mask, types, positions), theirs,
                             atol=1e-6, rtol=0)
  assert torch.equal(loaded.cls.predictions.decoder.weight,
                     loaded.bert.embeddings.word_embeddings.weight)  # still tied


def test_a_masked_lm_imports_the_checkpoints_head_or_starts_one(tmp_path, caplog):
  checkpoint, reference = _torch_mlm_dir(tmp_path / "with_head", vocab_size=30522)
  config = mlm_config(**{"model.checkpoint": str(checkpoint), "model.tokenizer": ""})
  transformers.AutoTokenizer.from_pretrained(hf_io.embedded_checkpoint_dir()).save_pretrained(
      checkpoint)
  setup = builder.build_model(config)
  params = builder.init_params(setup, jax.random.key(0))
  np.testing.assert_array_equal(params["cls"]["predictions"]["bias"],
                                reference.cls.predictions.bias.detach().numpy())
  np.testing.assert_array_equal(
      params["cls"]["predictions"]["transform"]["dense"]["kernel"],
      reference.cls.predictions.transform.dense.weight.detach().numpy().T)
  # A BertModel checkpoint (like the embedded one) has no head: a fresh one, and the log says.
  config.model.checkpoint = str(tiny_checkpoint(tmp_path / "no_head"))
  with caplog.at_level(logging.INFO):
    params = builder.init_params(builder.build_model(config), jax.random.key(0))
  assert "no masked-LM head" in caplog.text
  assert not np.any(params["cls"]["predictions"]["bias"])


def test_one_step_lowers_the_loss_of_its_batch():
  """A fixed batch of real sentences, masked: the loss on it before and after one AdamW step
  on it (the tiny random model; the loss starts at about ln(vocab) = 10.3)."""
  from research import optim, parallel, steps
  config = mlm_config(**{"optimizer.warmup_ratio": 0.0})
  setup = builder.build_model(config)
  params = builder.init_params(setup, jax.random.key(0))
  split = load_encoded(config.data, config.task, setup.tokenizer, "train", 32)
  batch = make_batch(split, np.arange(32), (64,), mask_key=masking.train_mask_key(0, 0))
  tx, schedule = optim.make_optimizer(config.optimizer, params, 1)
  dp = parallel.DataParallel("pmap", 1)
  kind = tasks.get("masked_lm")
  step = dp.compile_train_step(steps.make_train_step(setup.model, tx, schedule, kind))
  evaluate = dp.compile_eval_step(steps.make_eval_step(setup.model, kind))
  state = steps.TrainState(step=np.int32(0), params=params, frozen={},
                           opt_state=tx.init(params), rng=np.asarray(jax.random.PRNGKey(0)))

  def loss(placed_params):
    out = dp.get_metrics(evaluate(placed_params, dp.put_eval_batch(batch)))
    return float(out["loss_sum"] / out["weight_sum"])

  placed = dp.put_replicated(state)
  before = loss(dp.put_replicated(params))
  placed, _ = step(placed, dp.put_train_batch({k: v[None] for k, v in batch.items()}),
                   dp.put_signals(np.zeros(2)))
  after = loss(dp.put_replicated(dp.get_replicated(placed).params))
  assert after < before - 0.05  # measured: 10.294 -> 10.214


def _interrupt_at(monkeypatch, step):
  original = TrainBatches.batch

  def batch(self, s, *args):
    if s == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, s, *args)
  monkeypatch.setattr(TrainBatches, "batch", batch)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
  """An uninterrupted tiny masked-LM run continuing a tiny checkpoint (it has a pooler, no LM
  head): 24 steps over the slice's sentences. Returns (workdir, summary, config)."""
  root = tmp_path_factory.mktemp("mlm")
  config = mlm_config(**{"model.checkpoint": str(tiny_checkpoint(root / "source")),
                         "model.tokenizer": ""})
  summary = train.train_and_evaluate(config, root / "run")
  return root / "run", summary, config


def test_masked_lm_training_learns_and_resumes_bit_exactly(mlm_run, tmp_path, monkeypatch):
  reference_dir, reference, config = mlm_run
  losses = train_losses(reference_dir)
  evals = [json.loads(line) for line in (reference_dir / "metrics.jsonl").read_text().splitlines()
           if '"validation"' in line]
  print(losses, evals)
  # measured equal: the same np.exp of the same float64 (JSON keeps it); 1e-12 allows another libm
  assert evals[-1]["perplexity"] == pytest.approx(np.exp(evals[-1]["loss"]), rel=1e-12)
  workdir = tmp_path / "run"
  with monkeypatch.context() as patch:
    _interrupt_at(patch, 9)
    with pytest.raises(errors.Interrupted):
      train.train_and_evaluate(config, workdir)
  step, _ = final_state(workdir)
  assert 5 <= step < 12
  summary = train.train_and_evaluate(config, workdir)
  assert_same_params(final_state(workdir)[1], final_state(reference_dir)[1])
  assert train_losses(workdir) == losses
  assert summary["final"]["results"] == reference["final"]["results"]


def test_export_loads_in_transformers_and_fine_tunes_as_a_checkpoint(mlm_run, tmp_path):
  workdir, _, config = mlm_run
  inference.export(config, workdir, tmp_path / "export")
  loaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "export").eval()
  setup, params, _ = inference.load_best(config, workdir)
  split = load_encoded(config.data, config.task, setup.tokenizer, "validation", 8)
  batch = make_batch(split, np.arange(8), (64,))
  ours = np.asarray(setup.model.apply({"params": params}, batch["input_ids"],
                                      batch["attention_mask"], batch["token_type_ids"],
                                      batch["masked_positions"]))
  theirs = _logits_at(loaded, batch["input_ids"].astype(np.int64),
                      batch["attention_mask"].astype(np.int64),
                      batch["token_type_ids"].astype(np.int64),
                      batch["masked_positions"].astype(np.int64))
  # measured 3.0e-7 max abs (logits up to 0.78) on 2-core EPYC (AVX2); 10x
  np.testing.assert_allclose(ours, theirs, atol=3e-6, rtol=0)
  # The continued encoder is a checkpoint for any task: its weights, a fresh classifier.
  classify = tiny_config(**{"model.checkpoint": str(tmp_path / "export"), "model.tokenizer": "",
                            "train.num_epochs": 0.1})
  start = builder.init_params(builder.build_model(classify), jax.random.key(0))
  for ours_leaf, exported in zip(jax.tree.leaves(start["bert"]["encoder"]),
                                 jax.tree.leaves(params["bert"]["encoder"])):
    np.testing.assert_array_equal(ours_leaf, exported)
  # ... and the pooler of the checkpoint it continued, which masked-LM training leaves alone.
  direct = builder.init_params(builder.build_model(tiny_config(**{
      "model.checkpoint": config.model.checkpoint, "model.tokenizer": ""})), jax.random.key(1))
  for continued, source in zip(jax.tree.leaves(start["bert"]["pooler"]),
                               jax.tree.leaves(direct["bert"]["pooler"])):
    np.testing.assert_array_equal(continued, source)
  summary = train.train_and_evaluate(classify, tmp_path / "fine_tune")
  assert "accuracy" in summary["final"]["results"]["validation"]
  with pytest.raises(inference.RunError, match="--mode=export"):
    inference.predict(config, workdir, tmp_path / "in.txt", tmp_path / "out.jsonl")


# ---- a corpus read as a stream ---------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A folder with train.txt (the slice's first 300 sentences) and validation.txt (50 more)."""
  folder = tmp_path_factory.mktemp("corpus")
  texts = _sentences(350)["sentence"]
  (folder / "train.txt").write_text("\n".join(texts[:300]) + "\n")
  (folder / "validation.txt").write_text("\n".join(texts[300:]) + "\n")
  return folder


def _stream_config(corpus, **updates):
  return mlm_config(**{"data.dataset": str(corpus), "task.text_fields": ("text",),
                       "data.streaming": True, "train.num_steps": 12, **updates})


def _tokenizer():
  return tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())


def _stream_batches(config, chunk_texts=1000):
  tokenizer = _tokenizer()
  data = config.data
  kind = tasks.kind_of(config.task)

  def encode(chunk, where):
    return kind.encode_chunk(chunk, tokenizer, config.task, data.max_length, where)

  return streaming.StreamedTrainBatches(
      sources.load_stream(data.dataset, "", "train"), encode,
      batch_size=config.train.batch_size, accum_steps=config.train.grad_accum_steps,
      seed=config.seed, buckets=tuple(data.length_buckets), total_steps=config.train.num_steps,
      shuffle_buffer=data.shuffle_buffer, chunk_texts=chunk_texts)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_a_stream_gives_the_rows_of_the_whole_file_and_any_step_alone(corpus):
  """In stream order (no shuffle buffer) the steps' rows are the file's rows tokenised whole,
  across chunk boundaries; and batches from step k on equal those of a read from step 0."""
  config = _stream_config(corpus, **{"data.shuffle_buffer": 0})
  batches = _stream_batches(config, chunk_texts=37)
  rows = _take(batches._steps(), 18)  # 288 of the 300 rows
  whole = tasks.kind_of(config.task).encode(sources.read_file(corpus / "train.txt"),
                                            _tokenizer(), config.task, 64, "train.txt")
  for name in ("input_ids", "lengths", "mask_groups"):
    got = np.concatenate([getattr(r, name) for r in rows])
    expected = getattr(whole, name)[:288]
    if name == "mask_groups":  # word numbers restart per chunk: compare which tokens share one
      got, expected = got >= 0, expected >= 0
    np.testing.assert_array_equal(got, expected)
  from_zero = list(batches(0, 6))
  from_three = list(_stream_batches(config, chunk_texts=37)(3, 6))
  for a, b in zip(from_zero[3:], from_three, strict=True):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_a_stream_is_shuffled_anew_each_pass_and_reproducibly(corpus):
  config = _stream_config(corpus, **{"data.shuffle_buffer": 64, "data.max_length": 64})
  texts = sources.read_file(corpus / "train.txt")["text"]
  tokenizer = tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())
  first = {tuple(tokenizer(t, truncation=True, max_length=64)["input_ids"]): t for t in texts}

  def passes():  # 300 texts = 18 full batches and 12 rows of pass 0, then pass 1
    steps = _take(_stream_batches(config, chunk_texts=50)._steps(), 36)
    ids = [tuple(r[:n]) for s in steps for r, n in zip(s.input_ids, s.lengths)]
    return ids[:300], ids[300:]

  zero, one = passes()
  assert sorted(zero) == sorted(first)  # every text once in a pass
  assert zero != list(first) and one[:50] != zero[:50]  # shuffled, and differently in pass 1
  assert passes() == (zero, one)


def _interrupt_stream_at(monkeypatch, step):
  original = streaming.make_batch

  def stopping_make_batch(split, indices, buckets, width=None, mask_key=masking.EVAL_MASK_KEY):
    if mask_key[:2] == (masking.MASK_STREAM, 2) and mask_key[3] == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(split, indices, buckets, width, mask_key)
  monkeypatch.setattr(streaming, "make_batch", stopping_make_batch)


def _resume_on_an_edited_corpus(config, corpus, workdir):
  """Edits every text of train.txt but those of the first step (whose fingerprint data.json
  holds): the resume is refused before it trains on, as it had trained on edited rows."""
  path = corpus / "train.txt"
  original = path.read_text()
  batches = _stream_batches(config)
  step_0 = next(batches._steps())
  first = {tuple(r[:n]) for r, n in zip(step_0.input_ids, step_0.lengths)}
  unseen = [t if tuple(_tokenizer()(t, truncation=True, max_length=64)["input_ids"]) in first
            else t + " too" for t in original.splitlines()]
  try:
    path.write_text("\n".join(unseen) + "\n")
    assert _stream_batches(config).record(str(corpus), "train") == batches.record(str(corpus),
                                                                                   "train")
    with pytest.raises(DataError, match=r"streamed\]: the rows of the first \d+ steps differ "
                       "from those the run trained on before its checkpoint"):
      train.train_and_evaluate(config, workdir)
  finally:
    path.write_text(original)


def test_a_streamed_run_trains_and_resumes_bit_exactly(corpus, tmp_path, monkeypatch):
  config = _stream_config(corpus, **{"data.shuffle_buffer": 100})
  reference = train.train_and_evaluate(config, tmp_path / "reference")
  losses = train_losses(tmp_path / "reference")
  assert sorted(losses) == list(range(1, 13)) and losses[12] < losses[1]
  data = json.loads((tmp_path / "reference" / "data.json").read_text())
  assert data["train"]["examples"] == "streamed"
  with monkeypatch.context() as patch:
    _interrupt_stream_at(patch, 7)
    with pytest.raises(errors.Interrupted):
      train.train_and_evaluate(config, tmp_path / "run")
  assert 5 <= final_state(tmp_path / "run")[0] < 12
  shutil.copytree(tmp_path / "run", tmp_path / "edited")
  _resume_on_an_edited_corpus(config, corpus, tmp_path / "edited")
  summary = train.train_and_evaluate(config, tmp_path / "run")
  assert_same_params(final_state(tmp_path / "run")[1], final_state(tmp_path / "reference")[1])
  assert train_losses(tmp_path / "run") == losses
  assert summary["final"]["results"] == reference["final"]["results"]


@pytest.mark.parametrize("update,field", [
    ({"data.streaming": True}, "train.num_steps"),
    ({"data.streaming": True, "train.num_steps": 5, "data.validation_from_train": 0.1},
     "data.validation_from_train"),
    ({"task.mlm_probability": 0.0}, "task.mlm_probability"),
    ({"task.line_by_line": False, "task.text_fields": ("a", "b")}, "task.line_by_line"),
    ({"eval.best_metric": "perplexity"}, "eval.best_metric"),
])
def test_bad_masked_lm_configs_name_the_field(update, field):
  with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
    config_lib.validate(mlm_config(**update))
  if field == "train.num_steps":  # only a masked LM streams
    with pytest.raises(config_lib.ConfigError, match=r"data\.streaming"):
      config_lib.validate(tiny_config(**{**update, "train.num_steps": 5}))
