// N:M sparse linear y = act(x @ W^T + b + residual) for W in N:M form, CPU, float32.
//
// W (N, K) is stored as values (N, G * n) and indices (N, G * n), G = K / m: entry j of group g
// of row o is W[o, g * m + indices[o, g * n + j]] (see sparseforge/formats/nm.py). Row-wise like
// the CSR kernel, but the column of a stored entry is implicit (group base + a uint8 offset), so
// the index stream is 1 byte per value and the n entries of a group read x within m floats.
// Batch 1: eight independent partial sums per row. Batch > 1: x is transposed once to (K, Bp),
// Bp = B rounded up to 8 (zero padding); each row's columns are decoded once into a per-thread
// buffer, then every stored value multiplies up to 32 contiguous batch values held as 8-float
// vectors, so a decoded weight is reused across the whole batch. OpenMP splits the rows. The
// epilogue (bias, residual, relu: linear_common.h) is applied as each output leaves its
// accumulator; GELU right after.
//
// Built twice from this one file (see sparseforge/kernels/extension.py): with -mavx2 -mfma and
// without; SF_ISA names the variant, so each registers its own op sparseforge::_nm_linear_<isa>.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "linear_common.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

template <typename index_t>
struct Problem {
  const float* val;    // (N, G * n)
  const index_t* idx;  // (N, G * n), each in [0, m)
  sparseforge::Epilogue ep;
  float* out;  // (B, N) row-major
  int64_t B, K, N, n, m;
  int64_t stored() const { return K / m * n; }  // stored entries per row
};

// Batch 1: out[o] = sum_g sum_j val[o, g n + j] * x[g m + idx[o, g n + j]].
template <typename index_t>
void rows_b1(const Problem<index_t>& p, const float* __restrict x) {
  const int64_t S = p.stored(), G = p.K / p.m;
  const int nthreads = at::get_num_threads();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
  for (int64_t o = 0; o < p.N; ++o) {
    const float* __restrict v = p.val + o * S;
    const index_t* __restrict id = p.idx + o * S;
    float s[8] = {};
    if (p.n == 2) {  // the common 2:m case, groups unrolled by 4 into the eight sums
      int64_t g = 0;
      for (; g + 4 <= G; g += 4)
        for (int u = 0; u < 4; ++u) {
          const float* xg = x + (g + u) * p.m;
          const int64_t q = (g + u) * 2;
          s[2 * u] += v[q] * xg[id[q]];
          s[2 * u + 1] += v[q + 1] * xg[id[q + 1]];
        }
      for (; g < G; ++g) s[0] += v[2 * g] * x[g * p.m + id[2 * g]] +
                                 v[2 * g + 1] * x[g * p.m + id[2 * g + 1]];
    } else {
      int64_t q = 0;
      for (int64_t g = 0; g < G; ++g) {
        const float* xg = x + g * p.m;
        for (int64_t j = 0; j < p.n; ++j, ++q) s[q & 7] += v[q] * xg[id[q]];
      }
    }
    const float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    p.out[o] = p.ep(sum, 0, o);
  }
}

using sparseforge::load8;
using sparseforge::vf8;

// Row o for batch columns [b0, b0 + 8 * NV) of xt (K, Bp); off[q] = column(q) * Bp, decoded.
template <int NV, typename index_t>
inline void row_tile(const Problem<index_t>& p, const float* __restrict xt, int64_t Bp,
                     const float* __restrict v, const int64_t* __restrict off, int64_t o,
                     int64_t b0) {
  vf8 acc[NV] = {};
  const int64_t S = p.stored();
  for (int64_t q = 0; q < S; ++q) {
    const float w = v[q];
    const float* xc = xt + off[q] + b0;
    for (int u = 0; u < NV; ++u) acc[u] += w * load8(xc + 8 * u);
  }
  const int64_t nb = std::min<int64_t>(8 * NV, p.B - b0);  // drop the zero padding
  for (int64_t b = 0; b < nb; ++b) p.out[(b0 + b) * p.N + o] = p.ep(acc[b / 8][b % 8], b0 + b, o);
}

template <typename index_t>
void rows_batched(const Problem<index_t>& p, const float* __restrict xt, int64_t Bp) {
  const int64_t S = p.stored();
  const int nthreads = at::get_num_threads();
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<int64_t> off(S);  // this thread's decoded row: column * Bp per stored entry
#pragma omp for schedule(dynamic, 16)
    for (int64_t o = 0; o < p.N; ++o) {
      const float* v = p.val + o * S;
      const index_t* id = p.idx + o * S;
      for (int64_t q = 0; q < S; ++q)
        off[q] = (q / p.n * p.m + static_cast<int64_t>(id[q])) * Bp;
      int64_t b0 = 0;
      for (; b0 + 32 <= Bp; b0 += 32) row_tile<4>(p, xt, Bp, v, off.data(), o, b0);
      if (b0 + 16 <= Bp) row_tile<2>(p, xt, Bp, v, off.data(), o, b0), b0 += 16;
      if (b0 < Bp) row_tile<1>(p, xt, Bp, v, off.data(), o, b0);
    }
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

at::Tensor nm_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                     const std::optional<at::Tensor>& bias, int64_t out_features, int64_t n,
                     int64_t m, std::string_view activation,
                     const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(0 < n && n < m, "N:M needs 0 < n < m, got ", n, ":", m);
  const int64_t K = x.size(-1);
  TORCH_CHECK(K % m == 0, "x has ", K, " input features, not a multiple of the group size m=", m);
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kFloat &&
                  values.size(0) == out_features && values.size(1) == K / m * n,
              "values must be float32 (out_features, K / m * n) = (", out_features, ", ",
              K / m * n, "), got ", values.sizes());
  TORCH_CHECK(indices.sizes() == values.sizes(), "indices must be shaped like values");
  const at::Tensor x2 = sparseforge::input_rows(x);
  const at::Tensor v = values.contiguous(), id = indices.contiguous();
  const at::Tensor b = sparseforge::checked_bias(bias, out_features);
  const at::Tensor res = sparseforge::checked_residual(residual, x, out_features);
  at::Tensor out = at::empty({x2.size(0), out_features}, x.options());
  const sparseforge::Epilogue ep{sparseforge::data_or_null(b), sparseforge::data_or_null(res),
                                 sparseforge::parse_activation(activation), out_features};
  if (x2.size(0) > 0 && out_features > 0) {
    if (id.scalar_type() == at::kByte) {
      TORCH_CHECK(m <= 256, "uint8 indices need m <= 256");
      run(Problem<uint8_t>{v.data_ptr<float>(), id.data_ptr<uint8_t>(), ep, out.data_ptr<float>(),
                           x2.size(0), K, out_features, n, m}, x2);
    } else if (id.scalar_type() == at::kShort) {
      run(Problem<int16_t>{v.data_ptr<float>(), id.data_ptr<int16_t>(), ep, out.data_ptr<float>(),
                           x2.size(0), K, out_features, n, m}, x2);
    } else {
      TORCH_CHECK(id.scalar_type() == at::kInt, "indices must be uint8, int16 or int32, got ",
                  id.scalar_type());
      run(Problem<int32_t>{v.data_ptr<float>(), id.data_ptr<int32_t>(), ep, out.data_ptr<float>(),
                           x2.size(0), K, out_features, n, m}, x2);
    }
  }
  sparseforge::finish(out, ep.act);
  return sparseforge::output_like(out, x, out_features);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_nm_linear_" SF_STR(SF_ISA)
        "(Tensor x, Tensor values, Tensor indices, Tensor? bias, int out_features, int n, int m, "
        "str activation=\"none\", Tensor? residual=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_nm_linear_" SF_STR(SF_ISA), &nm_linear);
}
