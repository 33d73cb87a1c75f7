"""The dependencies point one way: configs are plain data, the library is not torch's."""

import ast
import subprocess
import sys

from conftest import REPO


def _fresh_python(code: str) -> str:
  """What `code` prints in a new interpreter at the repository's root."""
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.strip()


def test_the_library_never_imports_torch():
  """torch is the reference of the tests and the benchmark (benchmarks/), not the library's:
  importing every module of research/ loads neither torch nor transformers, and no module
  imports torch later (inside a function) but hf_io's reading of a pickled PyTorch state dict
  (`pytorch_model.bin`), which only torch can read (safetensors checkpoints need none).
  transformers is imported where tokenizers are loaded: its tokenizer classes need no torch."""
  code = ("import importlib, pkgutil, sys, research\n"
          "names = [m.name for m in pkgutil.walk_packages(research.__path__, 'research.')]\n"
          "for name in names:\n"
          "  importlib.import_module(name)\n"
          "print(len(names), sorted({'torch', 'transformers'} & set(sys.modules)))\n")
  count, loaded = _fresh_python(code).split(" ", 1)
  assert int(count) > 20 and loaded == "[]"
  importers = []
  for path in sorted((REPO / "research").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      if any(n.split(".")[0] == "torch" for n in names):
        importers.append(str(path.relative_to(REPO)))
  assert importers == ["research/models/hf_io.py"]


def test_config_files_load_without_jax():
  """Every config file is plain data: loading it (and the named datasets it points at) imports
  no JAX, flax or optax, whose import takes seconds and which a config has no use for; and
  `configs/default.py`'s architecture is the model code's BERT-base default."""
  code = ("import importlib, pathlib, sys\n"
          "for path in sorted(pathlib.Path('configs').glob('*.py')):\n"
          "  importlib.import_module(f'configs.{path.stem}')\n"
          "from configs import default, glue, mlm, squad, semeval2010_task8\n"
          "[default.get_config()] + [m.get_config(a) for m, a in ((glue, 'rte'), (mlm, None),"
          " (squad, 'v2'), (semeval2010_task8, None))]\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'optax'}))\n")
  assert _fresh_python(code) == "[]"
  from configs import default
  from research.models import bert
  assert default.get_config().model.architecture.to_dict() == bert.BertConfig().to_dict()


def _imports(path) -> set[str]:
  """The modules a file imports, at its top or inside functions (`from a import b` as `a.b`
  too: b may be a module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)
  return found


def test_the_data_pipeline_knows_no_task_kind_and_inference_no_training():
  """research/data/ imports nothing of research/tasks/ (a kind's encoder lives with its kind;
  what needs a kind is handed it), and inference imports neither the training loop nor the
  optimizer (it builds its model with research.models.builder; steps.py's eval step is the
  one evaluation shares with training)."""
  data = {str(p.relative_to(REPO)): sorted(m for m in _imports(p)
                                           if m.startswith("research.tasks"))
          for p in sorted((REPO / "research" / "data").glob("*.py"))}
  assert len(data) >= 8 and not any(data.values()), data
  assert not {"research.train", "research.optim"} & _imports(
      REPO / "research" / "inference.py")
