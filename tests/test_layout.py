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
