// The dense layers' matrix products through Intel MKL, as an XLA:CPU custom call (jax.ffi).
//
// XLA:CPU's own GEMMs do not use the AMX tiles (nor AVX512-BF16) that MKL's bfloat16 GEMM runs
// on, so on those CPUs a bfloat16 product here is several times faster. research/models/
// mkl_gemm.py compiles this file on first use and hands it MKL's two entry points: the
// library is found at run time (the `mkl` wheel), so this file needs no MKL headers to build.
//
// One handler: C = op(A) op(B) with op a transpose or not, row-major 2-D operands of one dtype
// (float32 or bfloat16), accumulated and returned in float32.

#include <climits>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// CBLAS's enumerations (mkl_cblas.h) and MKL's LP64 integer.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                       float, float*, int);
using Bf16Gemm = void (*)(int, int, int, int, int, int, float, const uint16_t*, int,
                          const uint16_t*, int, float, float*, int);
Sgemm sgemm = nullptr;
Bf16Gemm bf16_gemm = nullptr;

ffi::Error Gemm(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::Buffer<ffi::F32>> c,
                int32_t transpose_a, int32_t transpose_b) {
  auto da = a.dimensions(), db = b.dimensions();
  if (da.size() != 2 || db.size() != 2) {
    return ffi::Error::InvalidArgument("research_mkl_gemm: operands must be 2-D");
  }
  if (a.element_type() != b.element_type()) {
    return ffi::Error::InvalidArgument("research_mkl_gemm: operands of different dtypes");
  }
  const int64_t m = transpose_a ? da[1] : da[0], k = transpose_a ? da[0] : da[1];
  const int64_t n = transpose_b ? db[0] : db[1], kb = transpose_b ? db[1] : db[0];
  if (k != kb) return ffi::Error::InvalidArgument("research_mkl_gemm: inner dimensions differ");
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX || da[1] > INT_MAX || db[1] > INT_MAX) {
    return ffi::Error::InvalidArgument("research_mkl_gemm: a dimension exceeds 32 bits");
  }
  float* out = c->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::memset(out, 0, sizeof(float) * m * n);
    return ffi::Error::Success();
  }
  const int ta = transpose_a ? kTrans : kNoTrans, tb = transpose_b ? kTrans : kNoTrans;
  const int lda = static_cast<int>(da[1]), ldb = static_cast<int>(db[1]);
  switch (a.element_type()) {
    case ffi::F32:
      if (sgemm == nullptr) return ffi::Error::Internal("research_mkl_gemm: not initialised");
      sgemm(kRowMajor, ta, tb, m, n, k, 1.0f, static_cast<const float*>(a.untyped_data()), lda,
            static_cast<const float*>(b.untyped_data()), ldb, 0.0f, out, n);
      return ffi::Error::Success();
    case ffi::BF16:
      if (bf16_gemm == nullptr) return ffi::Error::Internal("research_mkl_gemm: not initialised");
      bf16_gemm(kRowMajor, ta, tb, m, n, k, 1.0f, static_cast<const uint16_t*>(a.untyped_data()),
                lda, static_cast<const uint16_t*>(b.untyped_data()), ldb, 0.0f, out, n);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("research_mkl_gemm: float32 or bfloat16 operands only");
  }
}

}  // namespace

// MKL's cblas_sgemm and cblas_gemm_bf16bf16f32, found by the caller.
extern "C" void research_mkl_gemm_init(void* sgemm_fn, void* bf16_gemm_fn) {
  sgemm = reinterpret_cast<Sgemm>(sgemm_fn);
  bf16_gemm = reinterpret_cast<Bf16Gemm>(bf16_gemm_fn);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchMklGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("transpose_a")
                                  .Attr<int32_t>("transpose_b"));
