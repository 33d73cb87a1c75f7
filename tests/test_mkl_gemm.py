"""MKL's GEMM as an XLA custom call (research/models/mkl_gemm.py) against XLA's own matmuls, the
per-machine choice between them, and what a run records of it."""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from helpers import tiny_config, train_rows
from research import config_lib, train
from research.config_base import ConfigError
from research.models import bert, builder, mkl_gemm

AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})
# Largest difference from XLA's product of the same operands, relative to the largest value
# (both accumulate in float32, in another order), measured on a 2-core AMD EPYC (AVX2): float32
# 1.2e-6 (K = 384); bfloat16 2.6e-3, one rounding of the result to bfloat16 (0 for the small
# shapes).
FLOAT32_TOLERANCE = 5e-6
BFLOAT16_TOLERANCE = 8e-3
# A 24-step tiny training run (tests/helpers.py) with MKL's matmuls against XLA's: largest
# relative difference of a step's loss, measured 8.6e-8 in float32 and 0 in bfloat16 on the
# AVX2 EPYC (without bfloat16 units MKL widens to float32 as XLA does). On AMX the products
# round once more each (BFLOAT16_TOLERANCE): not yet measured there, 1e-2 allows a few.
RUN_TOLERANCE = {"float32": 1e-6, "bfloat16": 1e-2}


def _relative(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("m, k, n", [(96, 40, 72), (1, 7, 5), (33, 1, 17), (256, 384, 1536)])
def test_products_and_their_gradients_equal_xla(dtype, m, k, n):
  """The forward product and both backward products (g w^T, x^T g) of a dense layer."""
  tolerance = FLOAT32_TOLERANCE if dtype == "float32" else BFLOAT16_TOLERANCE
  x = jax.random.normal(jax.random.key(0), (m, k), dtype)
  w = jax.random.normal(jax.random.key(1), (k, n), dtype)
  cotangent = jax.random.normal(jax.random.key(2), (m, n), dtype)

  def forward_and_grads(matmul, x, w, cotangent):
    y, pullback = jax.vjp(matmul, x, w)
    return (y, *pullback(cotangent))

  ours = jax.jit(forward_and_grads, static_argnums=0)(mkl_gemm.matmul, x, w, cotangent)
  xla = jax.jit(forward_and_grads, static_argnums=0)(jnp.matmul, x, w, cotangent)
  for name, a, b in zip(("product", "dx", "dw"), ours, xla):
    assert a.dtype == b.dtype == jnp.dtype(dtype), name
    assert a.shape == b.shape, name
    error = _relative(a, b)
    assert error <= tolerance, (name, error)
  # Anything other than a plain 2-D product of one dtype is left to XLA.
  hlo = jax.jit(lambda x: mkl_gemm.dot_general(
      x[None], w, (((2,), (0,)), ((), ())))).lower(x).as_text()
  assert mkl_gemm.TARGET not in hlo
  hlo = jax.jit(lambda x: mkl_gemm.dot_general(x, w, (((1,), (0,)), ((), ())))).lower(x).as_text()
  assert mkl_gemm.TARGET in hlo


def test_auto_takes_mkl_for_bfloat16_on_cpus_with_bfloat16_units(monkeypatch):
  assert mkl_gemm.choose("auto", "bfloat16", flags=AMX)[0] == "mkl"
  assert mkl_gemm.choose("auto", "bfloat16", flags=frozenset({"avx512_bf16"}))[0] == "mkl"
  gemm, why = mkl_gemm.choose("auto", "bfloat16", flags=frozenset({"avx2", "avx512f"}))
  assert (gemm, why) == ("xla", "bfloat16 compute, but this CPU has neither AMX nor AVX512-BF16")
  assert mkl_gemm.choose("auto", "float32", flags=AMX)[0] == "xla"
  assert mkl_gemm.choose("xla", "bfloat16", flags=AMX)[0] == "xla"
  assert mkl_gemm.choose("mkl", "float32")[0] == "mkl"  # asked for: on any CPU
  assert mkl_gemm.choose("auto", "bfloat16", backend="gpu", flags=AMX)[0] == "xla"
  with pytest.raises(ValueError, match="gemm 'fast' is not one of"):
    mkl_gemm.choose("fast", "float32")

  def unavailable():
    raise mkl_gemm.Unavailable("no C++ compiler")

  monkeypatch.setattr(mkl_gemm, "load", unavailable)
  assert mkl_gemm.choose("auto", "bfloat16", flags=AMX) == (
      "xla", "bfloat16 units present, but MKL's GEMM is unavailable: no C++ compiler")
  config = tiny_config(**{"model.gemm": "mkl"})
  with pytest.raises(ConfigError, match=r"^config.model.gemm: 'mkl' cannot run here: no C\+\+"):
    builder.choose_gemm(config.model)


def test_a_machine_that_cannot_build_it_says_why_in_one_line(tmp_path):
  """No compiler: 'auto' runs XLA's matmuls and says why; 'mkl' asked for is exit 2 and one
  line, before anything is written."""
  env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
             RESEARCH_KERNEL_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  probe = ("from research.models import mkl_gemm; "
           "print(mkl_gemm.choose('auto', 'bfloat16', flags=frozenset({'avx512_bf16'}))[1])")
  out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().startswith(
      "bfloat16 units present, but MKL's GEMM is unavailable: ")
  assert "no-such-compiler failed to run" in out.stdout
  # A kernel cache that cannot be a folder (a file holds its name): the same, saying where.
  (tmp_path / "a-file").write_text("")
  out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                       env=dict(env, CXX="", RESEARCH_KERNEL_CACHE=str(tmp_path / "a-file")),
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().startswith(
      f"bfloat16 units present, but MKL's GEMM is unavailable: cannot build into "
      f"{tmp_path / 'a-file'} (")
  workdir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "research.main", "--config", "tests/helpers.py",
                        "--config.model.gemm=mkl", "--workdir", str(workdir)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: config.model.gemm: 'mkl' cannot run here: ")
  assert not workdir.exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_with_mkl_follows_xla_and_says_so(tmp_path, dtype, caplog):
  """The same 24 tiny steps with either library's matmuls; train.log and run.json say which
  computed and why."""
  caplog.set_level(logging.INFO)  # train.log's records (research.main sets this level)
  runs = {}
  for gemm in ("xla", "mkl"):
    workdir = tmp_path / gemm
    train.train_and_evaluate(tiny_config(**{"model.gemm": gemm, "model.dtype": dtype}), workdir)
    runs[gemm] = [row["loss"] for row in train_rows(workdir)]
    compute = json.loads((workdir / "run.json").read_text())["compute"]
    assert compute["gemm"] == gemm and compute["dtype"] == dtype
    assert compute["gemm_reason"] == f"config.model.gemm = '{gemm}'"
    assert compute["cpu"] == mkl_gemm.cpu_description()
    assert (f"dense matmuls: {gemm.upper()} (config.model.gemm = '{gemm}')"
            in (workdir / "train.log").read_text())
  assert len(runs["mkl"]) == len(runs["xla"]) == 24
  error = _relative(runs["mkl"], runs["xla"])
  assert error < RUN_TOLERANCE[dtype], error


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_every_dense_layer_and_the_vocabulary_projection_go_through_mkl(model_type):
  """A masked-LM model of each family (encoder, pooler-free head, tied decoder) with MKL's
  matmuls: the same logits and parameter gradients as with XLA's, and no XLA dot left outside
  attention's batched products."""
  config = bert.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, model_type=model_type,
                           pad_token_id=1, embedding_size=16 if model_type == "electra" else None)
  ids = jax.random.randint(jax.random.key(0), (3, 12), 3, 97)
  mask, types = jnp.ones_like(ids), jnp.zeros_like(ids)
  positions = jnp.array([[1, 4], [2, 3], [5, 9]])
  models = {gemm: bert.BertForMaskedLM(dataclasses.replace(config, gemm=gemm))
            for gemm in ("xla", "mkl")}
  params = models["xla"].init(jax.random.key(1), ids, mask, types, positions)["params"]

  def loss(params, model):
    return jnp.sum(jnp.sin(model.apply({"params": params}, ids, mask, types, positions)))

  outputs = {gemm: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, model)
             for gemm, model in models.items()}
  assert _relative(outputs["mkl"][0], outputs["xla"][0]) < FLOAT32_TOLERANCE
  # Against the largest gradient anywhere: some leaves are zero up to rounding (the key bias's).
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(outputs["xla"][1]))
  for a, b in zip(jax.tree.leaves(outputs["mkl"][1]), jax.tree.leaves(outputs["xla"][1])):
    assert float(jnp.abs(a - b).max()) < FLOAT32_TOLERANCE * scale
  hlo = jax.jit(loss, static_argnums=1).lower(params, models["mkl"]).as_text()
  dense_layers = 2 * 6 + 1 + (model_type == "electra")  # per layer 6; the head's; ELECTRA's
  assert hlo.count(f"@{mkl_gemm.TARGET}(") == dense_layers + 1  # + the vocabulary projection
  assert hlo.count("stablehlo.dot_general") == 2 * 2  # attention's two products per layer


@pytest.mark.parametrize("field, value", [("model.gemm", "fast"), ("model.attention", "flash")])
def test_an_unknown_matmul_library_or_attention_is_one_clear_error(field, value):
  with pytest.raises(ConfigError, match=rf"^config\.{field}: '{value}' is not one of \("):
    config_lib.validate(tiny_config(**{field: value}))
