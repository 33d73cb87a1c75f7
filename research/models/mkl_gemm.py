"""The dense layers' matmuls through Intel MKL on CPUs whose bfloat16 units XLA:CPU leaves idle.

XLA:CPU's GEMMs (YNNPACK, Eigen) use neither the AMX tiles nor AVX512-BF16: on a Xeon with AMX
a bfloat16 matmul runs about 9x slower through XLA than through oneDNN/MKL, below XLA's own
float32 (experiments/perf/NOTES.md). MKL's `cblas_gemm_bf16bf16f32` uses those units. Here it
is an XLA custom call (`mkl_gemm.cc`, through `jax.ffi`) that `bert.BertConfig.gemm = "mkl"`
puts under every `nn.Dense`; the forward and both backward products of a dense layer are MKL
calls, accumulated in float32 as XLA's are.

The library comes from the `mkl` wheel (requirements.txt, x86-64 Linux) and is found at run
time; the custom call is compiled on first use with the system's C++ compiler against the FFI
headers that jaxlib ships, into a cache folder (`$RESEARCH_KERNEL_CACHE`, default
~/.cache/research/kernels) keyed by the source and the jaxlib version. So `pip install -r
requirements.txt` is the whole install, and a machine without a compiler or MKL runs XLA's
GEMMs and says why.

`config.model.gemm` chooses: "xla", "mkl", or "auto" (the default), which takes MKL for a
bfloat16 model on a CPU with AMX or AVX512-BF16 and XLA everywhere else: float32 GEMMs of MKL
and XLA were level on the machines measured, and without bfloat16 units a bfloat16 model is
slower than a float32 one whichever library multiplies (`choose`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jaxlib.version
import jax.numpy as jnp
import numpy as np

LIBRARIES = ("xla", "mkl")  # what computes a run's dense matmuls (`bert.BertConfig.gemm`)
GEMMS = ("auto", *LIBRARIES)  # config.model.gemm: a library, or the machine's choice
TARGET = "research_mkl_gemm"
SOURCE = pathlib.Path(__file__).with_name("mkl_gemm.cc")
# The /proc/cpuinfo flags that decide which kernels a library can use, and how they are shown.
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16",
                "amx_bf16": "AMX-BF16", "amx_tile": "AMX"}
# The flags with which MKL's bfloat16 GEMM runs on bfloat16 hardware (either suffices).
BF16_UNITS = ({"amx_tile", "amx_bf16"}, {"avx512_bf16"})


class Unavailable(Exception):
  """MKL's GEMM cannot run here (no library, no compiler, a failed build): the reason."""


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
  """The CPU's model name and its /proc/cpuinfo flags ('unknown CPU' and none elsewhere)."""
  try:
    info = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return "unknown CPU", frozenset()
  fields = {key.strip(): value.strip() for key, value in
            (line.split(":", 1) for line in info.splitlines() if ":" in line)}
  return fields.get("model name", "unknown CPU"), frozenset(fields.get("flags", "").split())


def cpu_description() -> str:
  """The CPU's name and the vector and matrix units its kernels can use (`CPU_FEATURES`)."""
  name, flags = cpu_info()
  found = [shown for flag, shown in CPU_FEATURES.items() if flag in flags]
  return f"{name}, {', '.join(found) or 'no AVX2'}"


def has_bf16_units(flags: frozenset[str] | set[str]) -> bool:
  return any(units <= flags for units in BF16_UNITS)


def choose(requested: str, dtype, backend: str | None = None,
           flags: frozenset[str] | None = None) -> tuple[str, str]:
  """("xla" or "mkl", why) for `config.model.gemm` = `requested` and compute `dtype`.

  "mkl" asked for explicitly and unavailable raises `Unavailable`; "auto" falls back to XLA
  with the reason."""
  if requested not in GEMMS:
    raise ValueError(f"gemm {requested!r} is not one of {GEMMS}")
  backend = backend or jax.default_backend()
  if requested == "xla":
    return "xla", "config.model.gemm = 'xla'"
  if backend != "cpu":
    return "xla", f"MKL's GEMM is for CPUs; this run computes on {backend}"
  if requested == "auto":
    flags = cpu_info()[1] if flags is None else flags
    if jnp.dtype(dtype) != jnp.bfloat16:
      return "xla", (f"{jnp.dtype(dtype).name} compute: XLA's GEMMs (MKL's float32 is no faster "
                     "on the CPUs measured)")
    if not has_bf16_units(flags):
      return "xla", "bfloat16 compute, but this CPU has neither AMX nor AVX512-BF16"
    try:
      load()
    except Unavailable as e:
      return "xla", f"bfloat16 units present, but MKL's GEMM is unavailable: {e}"
    return "mkl", "bfloat16 compute on a CPU with AMX or AVX512-BF16: MKL's GEMM uses them"
  load()
  return "mkl", "config.model.gemm = 'mkl'"


def _mkl_library() -> str:
  """The path of MKL's single dynamic library: the `mkl` wheel puts it in <prefix>/lib."""
  for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
    found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    if found:
      return found[-1]
  found = ctypes.util.find_library("mkl_rt")
  if found:
    return found
  raise Unavailable("no libmkl_rt (pip install mkl)")


def _cache_dir() -> pathlib.Path:
  default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
  return pathlib.Path(os.environ.get("RESEARCH_KERNEL_CACHE", default / "research" / "kernels"))


def _build() -> pathlib.Path:
  """The compiled custom call, built once per source and jaxlib version (atomically: several
  processes may build at once, and each renames its own finished file into place)."""
  source = SOURCE.read_bytes()
  key = hashlib.sha256(source + jaxlib.version.__version__.encode()).hexdigest()[:16]
  library = _cache_dir() / f"mkl_gemm-{key}.so"
  if library.exists():
    return library
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not compiler:
    raise Unavailable("no C++ compiler (c++ or g++, or $CXX) to build the custom call")
  try:
    library.parent.mkdir(parents=True, exist_ok=True)
    return _compile(compiler, library)
  except OSError as e:  # an unwritable or misnamed cache folder, a full disk
    raise Unavailable(f"cannot build into {library.parent} ({e.strerror or e}); set "
                      "RESEARCH_KERNEL_CACHE to a writable folder") from None


def _compile(compiler: str, library: pathlib.Path) -> pathlib.Path:
  with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
    built = pathlib.Path(tmp) / library.name
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(built)]
    try:
      done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
      raise Unavailable(f"{compiler} failed to run: {e}") from None
    if done.returncode:
      last = (done.stderr.strip().splitlines() or ["no output"])[-1]
      raise Unavailable(f"{compiler} failed to build {SOURCE.name}: {last}")
    os.replace(built, library)
  return library


@functools.cache
def load() -> str:
  """Builds (if needed) and registers the custom call; the MKL library's path. Raises
  `Unavailable` with the reason (cached: one failure is not retried in a process)."""
  try:
    mkl = ctypes.CDLL(_mkl_library())
  except OSError as e:
    raise Unavailable(f"MKL does not load: {e}") from None
  try:
    entry_points = [ctypes.cast(getattr(mkl, name), ctypes.c_void_p)
                    for name in ("cblas_sgemm", "cblas_gemm_bf16bf16f32")]
  except AttributeError as e:
    raise Unavailable(f"this MKL lacks {e}") from None
  library = _build()
  try:
    kernel = ctypes.CDLL(str(library))
  except OSError as e:
    raise Unavailable(f"the built custom call does not load ({e}); delete {library} to "
                      "rebuild it") from None
  kernel.research_mkl_gemm_init(*entry_points)
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(kernel.ResearchMklGemm),
                              platform="cpu")
  return mkl._name


def _gemm(a, b, transpose_a: bool, transpose_b: bool):
  """op(a) @ op(b) in float32, op a transpose or not."""
  load()  # registers the target before the first trace that calls it
  m = a.shape[1] if transpose_a else a.shape[0]
  n = b.shape[0] if transpose_b else b.shape[1]
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32),
                          vmap_method="sequential")
  return call(a, b, transpose_a=np.int32(transpose_a), transpose_b=np.int32(transpose_b))


@jax.custom_vjp
def matmul(x, w):
  """x [M, K] @ w [K, N] through MKL, in x's dtype (float32 accumulation)."""
  return _gemm(x, w, False, False).astype(x.dtype)


def _matmul_fwd(x, w):
  return matmul(x, w), (x, w)


def _matmul_bwd(residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  return (_gemm(g, w, False, True).astype(x.dtype),   # dx = g w^T
          _gemm(x, g, True, False).astype(w.dtype))   # dw = x^T g


matmul.defvjp(_matmul_fwd, _matmul_bwd)

_PLAIN = (((1,), (0,)), ((), ()))  # a [M, K] x [K, N] product, as nn.Dense asks for on 2-D x


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`jax.lax.dot_general` with MKL under the 2-D products of one float32 or bfloat16 dtype
  (every dense layer of the model, `bert.dense_on_tokens`); XLA's for any other."""
  plain = (lhs.ndim == 2 and rhs.ndim == 2 and lhs.dtype == rhs.dtype
           and lhs.dtype in (jnp.float32, jnp.bfloat16)
           and tuple(tuple(map(tuple, pair)) for pair in dimension_numbers) == _PLAIN
           and preferred_element_type in (None, lhs.dtype))
  if not plain:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return matmul(lhs, rhs)
