"""Data: a file or hub dataset -> encoded splits (int matrices) -> length-bucketed batches.

  sources.py       where a run's data is read (the lookup order) and reading every format
  encoded.py       EncodedSplit, the row checks every encoder makes, the shared tokenising
  tokenization.py  loading a checkpoint's fast tokenizer; what encoders ask of one
  cache.py         the key of a cached tokenised split: input, tokenizer, arguments and code
  splits.py        a run's splits: held-out validation, encoding by the kind, data.json
  masking.py       masked-LM masks, drawn as each batch is built
  batches.py       length buckets, the training order, eval batches, prefetching
  streaming.py     masked-LM training batches from a corpus read as a stream

Each task kind's encoder lives with its kind (research/tasks/): this package imports no kind;
what needs one (`splits.load_encoded`, `streaming.StreamedTrainBatches`) is handed it.
"""
