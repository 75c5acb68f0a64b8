// Unstructured sparse linear y = act(x @ W^T + b + residual) for W in CSR, CPU, float32.
//
// Row-wise: output row n is the dot of its nonzeros with the gathered x. Batch 1 keeps eight
// independent partial sums (the dot is a reduction GCC will not reorder without -ffast-math);
// the AVX2 variant fills them with one hardware gather per 8 nonzeros (int32 indices).
// Batch > 1 first transposes x to (K, B), padded to a multiple of 8, so each nonzero
// multiplies up to 32 contiguous batch values held as 8-float vectors: the weight and its index
// are loaded once per 32 outputs. OpenMP splits the rows. The epilogue (bias, residual, relu:
// linear_common.h) is applied as each output leaves its accumulator; GELU right after.
//
// Built twice from this one file (see sparseforge/kernels/extension.py): with -mavx2 -mfma and
// without; SF_ISA names the variant, so each registers its own op sparseforge::_csr_linear_<isa>.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "linear_common.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <vector>


namespace {

template <typename index_t>
struct Problem {
  const index_t* crow;  // (N + 1,)
  const index_t* col;   // (nnz,)
  const float* val;     // (nnz,)
  sparseforge::Epilogue ep;  // bias, residual, activation
  float* out;           // (B, N) row-major
  int64_t B, K, N;
};

// Batch 1: out[n] = sum_q val[q] * x[col[q]], eight partial sums.
template <typename index_t>
void rows_b1(const Problem<index_t>& p, const float* __restrict x) {
  const int nthreads = at::get_num_threads();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t lo = p.crow[n], hi = p.crow[n + 1];
    float s[8] = {};
    int64_t q = lo;
#ifdef __AVX2__
    if constexpr (sizeof(index_t) == 4) {  // 8 columns per hardware gather
      __m256 acc = _mm256_setzero_ps();
      for (; q + 8 <= hi; q += 8) {
        const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.col + q));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(p.val + q), _mm256_i32gather_ps(x, idx, 4), acc);
      }
      _mm256_storeu_ps(s, acc);
    }
#endif
    for (; q + 8 <= hi; q += 8)
      for (int u = 0; u < 8; ++u) s[u] += p.val[q + u] * x[p.col[q + u]];
    for (; q < hi; ++q) s[0] += p.val[q] * x[p.col[q]];
    const float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    p.out[n] = p.ep(sum, 0, n);
  }
}

using sparseforge::load8;
using sparseforge::vf8;

// Row n for batch columns [b0, b0 + 8 * NV) of xt (K, Bp), Bp = B rounded up to 8 (zeros).
template <int NV, typename index_t>
inline void row_tile(const Problem<index_t>& p, const float* __restrict xt, int64_t Bp,
                     int64_t n, int64_t b0) {
  vf8 acc[NV] = {};
  for (int64_t q = p.crow[n]; q < p.crow[n + 1]; ++q) {
    const float v = p.val[q];
    const float* xc = xt + static_cast<int64_t>(p.col[q]) * Bp + b0;
    for (int u = 0; u < NV; ++u) acc[u] += v * load8(xc + 8 * u);
  }
  const int64_t nb = std::min<int64_t>(8 * NV, p.B - b0);  // drop the zero padding
  for (int64_t b = 0; b < nb; ++b) p.out[(b0 + b) * p.N + n] = p.ep(acc[b / 8][b % 8], b0 + b, n);
}

template <typename index_t>
void rows_batched(const Problem<index_t>& p, const float* __restrict xt, int64_t Bp) {
  const int nthreads = at::get_num_threads();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
  for (int64_t n = 0; n < p.N; ++n) {
    int64_t b0 = 0;
    for (; b0 + 32 <= Bp; b0 += 32) row_tile<4>(p, xt, Bp, n, b0);
    if (b0 + 16 <= Bp) row_tile<2>(p, xt, Bp, n, b0), b0 += 16;
    if (b0 < Bp) row_tile<1>(p, xt, Bp, n, b0);
  }
}

template <typename index_t>
void run(const Problem<index_t>& p, const at::Tensor& x2) {
  if (p.B == 1) return rows_b1(p, x2.data_ptr<float>());
  const int64_t Bp = (p.B + 7) / 8 * 8;
  at::Tensor xt = at::zeros({p.K, Bp}, x2.options());  // (K, Bp): x transposed, zero-padded
  xt.narrow(1, 0, p.B).copy_(x2.t());
  rows_batched(p, xt.data_ptr<float>(), Bp);
}

at::Tensor csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                      const at::Tensor& values, const std::optional<at::Tensor>& bias,
                      int64_t out_features, std::string_view activation,
                      const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(values.dim() == 1 && values.scalar_type() == at::kFloat,
              "values must be float32 (nnz,)");
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1 && crow.scalar_type() == col.scalar_type(),
              "crow_indices and col_indices must be 1-D with one integer dtype");
  TORCH_CHECK(crow.size(0) == out_features + 1, "crow_indices must be (out_features + 1,)");
  TORCH_CHECK(col.size(0) == values.size(0), "one col index per value");
  const int64_t K = x.size(-1);
  const at::Tensor x2 = sparseforge::input_rows(x);
  const at::Tensor v = values.contiguous();
  const at::Tensor b = sparseforge::checked_bias(bias, out_features);
  at::Tensor out = at::empty({x2.size(0), out_features}, x.options());
  const at::Tensor cr = crow.contiguous(), cl = col.contiguous();
  const at::Tensor res = sparseforge::checked_residual(residual, x, out_features);
  const sparseforge::Epilogue ep{sparseforge::data_or_null(b), sparseforge::data_or_null(res),
                                 sparseforge::parse_activation(activation), out_features};
  if (x2.size(0) > 0) {
    if (cr.scalar_type() == at::kInt) {
      TORCH_CHECK(cr[-1].item<int32_t>() == v.size(0), "crow_indices[-1] must equal nnz");
      run(Problem<int32_t>{cr.data_ptr<int32_t>(), cl.data_ptr<int32_t>(), v.data_ptr<float>(),
                           ep, out.data_ptr<float>(), x2.size(0), K, out_features}, x2);
    } else {
      TORCH_CHECK(cr.scalar_type() == at::kLong, "indices must be int32 or int64");
      TORCH_CHECK(cr[-1].item<int64_t>() == v.size(0), "crow_indices[-1] must equal nnz");
      run(Problem<int64_t>{cr.data_ptr<int64_t>(), cl.data_ptr<int64_t>(), v.data_ptr<float>(),
                           ep, out.data_ptr<float>(), x2.size(0), K, out_features}, x2);
    }
  }
  sparseforge::finish(out, ep.act);
  return sparseforge::output_like(out, x, out_features);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_csr_linear_" SF_STR(SF_ISA)
        "(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
        "int out_features, str activation=\"none\", Tensor? residual=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_csr_linear_" SF_STR(SF_ISA), &csr_linear);
}
