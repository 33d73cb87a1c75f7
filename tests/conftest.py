"""Test setup: offline hub, the data, and 4 virtual CPU devices for parallelism tests.

The environment is set here, before anything imports JAX. Training tests use one device (fast
on 2 cores); the parallelism tests use all 4.
"""

import os
import pathlib
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# The workplace's datasets beside the checkout; on a clone without them, the repository's own
# data/ (the SST-2 slice): the SST-2 tests run, those needing other datasets skip.
_SHARED = REPO.parent / "shared" / "data"
os.environ.setdefault("RESEARCH_DATA_DIR", str(_SHARED if _SHARED.is_dir() else REPO / "data"))
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # 4, not 8: on 2 cores 8 virtual devices have deadlocked in the all-reduce rendezvous.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests compile the same small steps many times: reuse them across tests and test runs, the
# small programs too (JAX caches only those that took a second to compile unless told).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "research-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

DATA_DIR = pathlib.Path(os.environ["RESEARCH_DATA_DIR"])


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (pyproject.toml): one worker per core this process may use, at most 4 — each
  worker runs 4 virtual devices and some tests start 2 processes of their own."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")  # not on macOS
           else os.cpu_count() or 1)
  return max(1, min(cores, 4))


# The longest test files, longest first: xdist hands out files in collection order, and one
# of these started last keeps a worker busy long after the other has finished.
LONGEST_FIRST = ("test_reliability.py", "test_distributed.py", "test_parallel.py",
                 "test_train.py", "test_bench.py", "test_mlm.py", "test_model.py",
                 "test_first_run.py", "test_sweep.py", "test_reference_training.py",
                 "test_peft.py", "test_relations.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


def require_data(name: str) -> pathlib.Path:
  """The shared dataset folder, or a skip that says where it was looked for."""
  path = DATA_DIR / name
  if not path.is_dir():
    pytest.skip(f"needs the shared dataset {path} (set RESEARCH_DATA_DIR to ../shared/data)")
  return path


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """An uninterrupted tiny run (tests/helpers.py): 24 steps (12 per epoch), evaluated after
  each epoch, checkpointed every 5 steps. Tests compare stopped and resumed runs with it."""
  require_data("sst2")
  from helpers import tiny_config
  from research import train
  workdir = tmp_path_factory.mktemp("reference")
  config = tiny_config()
  summary = train.train_and_evaluate(config, workdir)
  return workdir, config, summary


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
  """A 2-layer, 32-wide random BERT saved by transformers (`helpers.tiny_checkpoint`), read
  only: a `model.checkpoint` that loads in seconds."""
  from helpers import tiny_checkpoint
  return tiny_checkpoint(tmp_path_factory.mktemp("small-bert"))


@pytest.fixture(scope="module")
def quiet_transformers():
  """transformers' *For* models loaded from base checkpoints report every fresh head at
  length: a module that loads many says `pytestmark = pytest.mark.usefixtures(...)`."""
  import transformers
  level = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()
  yield
  transformers.logging.set_verbosity(level)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Each module's compiled programs are dropped after it: this process would hold every one
  the suite compiles (train_and_evaluate releases its own; many tests compile directly)."""
  yield
  import jax
  jax.clear_caches()
