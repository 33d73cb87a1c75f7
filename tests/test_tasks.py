"""The task kinds' registry, the configs of every registered task and of the learning checks,
and Chinese tokenisation.

Whether each task family learns from real data (STS-B, CoNLL-2003, SemEval, SST-2 on the
embedded MiniLM) is experiments/learning/run.py: minutes per family, outside the suite.
"""

import pathlib
import re

import ml_collections
import pytest

from conftest import require_data
from helpers import experiment_script, load_encoded
from configs import chnsenticorp, conll2003, glue, mlm, semeval2010_task8, squad, squad_v2
from research import config_lib, named_tasks, tasks
from research.tasks import masked_lm, question_answering, relations, sequence, tokens

RESEARCH = pathlib.Path(__file__).resolve().parents[1] / "research"


def test_every_kind_resolves_to_its_object_and_an_unknown_one_is_one_config_error():
  expected = {"classification": sequence.Classification, "regression": sequence.Regression,
              "token_classification": tokens.TokenClassification,
              "relation_classification": relations.RelationClassification,
              "question_answering": question_answering.QuestionAnswering,
              "masked_lm": masked_lm.MaskedLM}
  assert tasks.KINDS == tuple(expected)
  for name, kind_class in expected.items():
    kind = tasks.kind_of(ml_collections.ConfigDict({"kind": name}))
    assert type(kind) is kind_class and kind.name == name
    assert tasks.kind_of({"kind": name}) is kind  # a saved config.json's task (compare)
  config = glue.get_config("rte")
  config.task.kind = "multiple_choice"
  with pytest.raises(config_lib.ConfigError) as raised:
    config_lib.validate(config)
  assert str(raised.value) == (
      "config.task.kind: 'multiple_choice' is not one of ('classification', 'regression', "
      "'token_classification', 'relation_classification', 'question_answering', 'masked_lm')")


def test_a_registered_kind_is_one_that_configs_can_name(monkeypatch):
  """A new kind is a TaskKind subclass and one `register` line: validation accepts its name
  and checks its metrics, and the core finds its object."""
  monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # undone after the test
  monkeypatch.setattr(tasks, "KINDS", tasks.KINDS)

  class Pairs(sequence.Classification):
    name = "pairs"
    metrics = ("accuracy",)

  pairs = tasks.register(Pairs())
  assert tasks.KINDS[-1] == "pairs"
  config = glue.get_config("rte")
  config.task.kind = "pairs"
  config_lib.validate(config)
  assert tasks.kind_of(config.task) is pairs
  config.task.metrics = ("f1",)
  with pytest.raises(config_lib.ConfigError, match=r"'f1' is not one of \('accuracy',\) for pairs"):
    config_lib.validate(config)


def test_no_module_outside_research_tasks_branches_on_the_task_kind():
  """What differs between kinds lives in research/tasks/ (tune.py's and search_space.py's
  `kind` is a search-space dimension's, not a task's)."""
  branches = [f"{path.relative_to(RESEARCH.parent)}:{number}: {line.strip()}"
              for path in sorted(RESEARCH.rglob("*.py"))
              if path.relative_to(RESEARCH).parts[0] != "tasks"
              and path.name not in ("tune.py", "search_space.py")
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"kind ==|kind !=|kind in \(", line)]
  assert branches == []


def test_every_registered_task_has_a_valid_config():
  for name in named_tasks.GLUE:
    config = glue.get_config(name)
    config_lib.validate(config)
    assert config.task.metrics == named_tasks.GLUE[name].metrics
  for config in (conll2003.get_config(), chnsenticorp.get_config(),
                 semeval2010_task8.get_config(), semeval2010_task8.get_config("markers=0"),
                 semeval2010_task8.get_config("representation=cls"), squad.get_config(),
                 squad_v2.get_config(), mlm.get_config(), mlm.get_config("task=rte,whole_word"),
                 mlm.get_config("dataset=/tmp/corpus,group,quick")):
    config_lib.validate(config)
  with pytest.raises(config_lib.ConfigError, match="task='sst3' is not a registered task"):
    mlm.get_config("task=sst3")
  assert glue.get_config("mnli").data.eval_splits == ("validation_matched",
                                                      "validation_mismatched")
  assert glue.get_config("stsb").task.kind == "regression"
  with pytest.raises(config_lib.ConfigError, match="needs a task"):
    glue.get_config("")


def test_every_learning_check_has_a_valid_config():
  """experiments/learning/run.py builds its configs from the registered ones: a renamed field
  or a changed default fails here, not after minutes of training there."""
  learning = experiment_script("experiments/learning/run.py")
  assert set(learning.CHECKS) == {"sst2", "stsb", "conll2003", "semeval"}
  for name, check in learning.CHECKS.items():
    config = check.config()
    config_lib.validate(config)
    assert config.train.num_epochs == 1.0 and config.parallel.num_devices == 1, name


def test_chinese_text_is_tokenised_one_character_per_token():
  """Every CJK character is a token of its own: itself if the vocabulary has it, else [UNK].

  The embedded (English) vocabulary has only 244 CJK characters: it covers 27% of the
  character occurrences of ChnSentiCorp's training set (measured; see configs/chnsenticorp.py).
  """
  require_data("chnsenticorp")
  from research.data import sources, tokenization
  from research.models import hf_io
  config = chnsenticorp.get_config()
  tokenizer = tokenization.load_tokenizer(hf_io.embedded_checkpoint_dir())
  split = load_encoded(config.data, config.task, tokenizer, "validation", limit=50)
  vocab = tokenizer.get_vocab()
  rows = sources.load_split(sources.resolve_source(config.data), "", "validation").select(range(50))
  for i, text in enumerate(rows["sentence"]):
    if split.lengths[i] == config.data.max_length:
      continue  # truncated
    cjk = [c for c in text if "\u4e00" <= c <= "\u9fff"]
    ids = split.input_ids[i, :split.lengths[i]].tolist()
    expected = [vocab.get(c, tokenizer.unk_token_id) for c in cjk]
    it = iter(ids)  # the characters' tokens appear in order among the others
    assert all(any(token == e for token in it) for e in expected)
    assert sum(t in set(expected) for t in ids) >= len(cjk)
  assert sorted(set(split.labels.tolist())) == [0, 1]
