// Block-sparse linear y = act(x @ W^T + b + residual) for W in BSR, CPU, float32.
//
// Tiles arrive transposed, (nblocks, bw, bh), so the inner loop is an axpy over the bh output
// rows of a block row: acc[b][0:bh] += tile[c][0:bh] * x[b][c]. GCC vectorizes that loop
// without -ffast-math (no reduction is reordered), and with bh fixed at compile time the
// NB x bh accumulators stay in registers. OpenMP splits the block rows across threads. The
// epilogue (bias, residual, relu: linear_common.h) is applied as the accumulators are written
// out; GELU right after, in the same op.
//
// Built twice from this one file (see sparseforge/kernels/extension.py): with -mavx2 -mfma and
// without; SF_ISA names the variant, so each registers its own op sparseforge::_bsr_linear_<isa>.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "linear_common.h"

#include <algorithm>
#include <cstdint>
#include <vector>


namespace {

struct Problem {
  const float* x;     // (B, K) row-major
  const float* vt;    // (nblocks, bw, bh)
  sparseforge::Epilogue ep;  // bias, residual, activation
  float* out;         // (B, N) row-major
  int64_t B, K, N, bw, bh;
};

// Writes the epilogue of acc (NBT, bh) into rows [i*bh, i*bh + bh) of batch rows [b0, b0 + NBT).
template <int NBT>
inline void store(const Problem& p, const float* acc, int64_t bh, int64_t i, int64_t b0) {
  const int64_t r0 = i * bh;
  const int64_t rows = std::min(bh, p.N - r0);  // the ragged last block row
  for (int b = 0; b < NBT; ++b) p.ep.row(p.out + (b0 + b) * p.N + r0, acc + b * bh, b0 + b, r0, rows);
}

// One block row `i`, batch rows [b0, b0 + NBT), tile (BW, BH) fixed at compile time: the
// fully unrolled tile loop keeps the NBT x BH accumulators in registers (an accumulator that
// round-trips through memory each step is several times slower).
template <typename index_t, int NBT, int BH, int BW>
void block_row(const Problem& p, const index_t* crow, const index_t* col, int64_t i,
               int64_t b0) {
  float acc[NBT][BH] = {};
  const float* __restrict x = p.x + b0 * p.K;
  for (int64_t q = crow[i]; q < crow[i + 1]; ++q) {
    const int64_t c0 = static_cast<int64_t>(col[q]) * BW;
    const float* __restrict t = p.vt + q * BW * BH;  // (BW, BH)
    float xv[NBT][BW];
    if (c0 + BW <= p.K) {
      for (int b = 0; b < NBT; ++b)
        for (int c = 0; c < BW; ++c) xv[b][c] = x[b * p.K + c0 + c];
    } else {  // the ragged last block column: its padding columns are zero tiles
      for (int b = 0; b < NBT; ++b)
        for (int c = 0; c < BW; ++c) xv[b][c] = c0 + c < p.K ? x[b * p.K + c0 + c] : 0.0f;
    }
#pragma GCC unroll 32
    for (int c = 0; c < BW; ++c)
      for (int b = 0; b < NBT; ++b)
        for (int r = 0; r < BH; ++r) acc[b][r] += t[c * BH + r] * xv[b][c];
  }
  const int64_t r0 = i * BH;
  const int64_t rows = std::min<int64_t>(BH, p.N - r0);  // the ragged last block row
  for (int b = 0; b < NBT; ++b) p.ep.row(p.out + (b0 + b) * p.N + r0, acc[b], b0 + b, r0, rows);
}

// The same for any block height, accumulating in `acc` (NBT * p.bh floats).
template <typename index_t, int NBT>
void block_row_any(const Problem& p, const index_t* crow, const index_t* col, int64_t i,
                   int64_t b0, float* __restrict acc) {
  const int64_t bh = p.bh;
  std::fill(acc, acc + NBT * bh, 0.0f);
  const float* __restrict x = p.x + b0 * p.K;
  for (int64_t q = crow[i]; q < crow[i + 1]; ++q) {
    const int64_t c0 = static_cast<int64_t>(col[q]) * p.bw;
    const int64_t cw = std::min(p.bw, p.K - c0);
    const float* __restrict t = p.vt + q * p.bw * bh;
    for (int64_t c = 0; c < cw; ++c) {
      const float* __restrict tc = t + c * bh;
      for (int b = 0; b < NBT; ++b) {
        const float xv = x[b * p.K + c0 + c];
        float* __restrict a = acc + b * bh;
        for (int64_t r = 0; r < bh; ++r) a[r] += tc[r] * xv;
      }
    }
  }
  store<NBT>(p, acc, bh, i, b0);
}

constexpr int NB = 4;  // batch rows per register tile

template <typename index_t, int BH, int BW>
void run(const Problem& p, const index_t* crow, const index_t* col, int64_t nbr) {
  const int nthreads = at::get_num_threads();
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> acc(BH ? 0 : NB * p.bh);
#pragma omp for schedule(dynamic, 4)
    for (int64_t i = 0; i < nbr; ++i) {
      int64_t b0 = 0;
      if constexpr (BH > 0) {
        for (; b0 + NB <= p.B; b0 += NB) block_row<index_t, NB, BH, BW>(p, crow, col, i, b0);
        for (; b0 < p.B; ++b0) block_row<index_t, 1, BH, BW>(p, crow, col, i, b0);
      } else {
        for (; b0 + NB <= p.B; b0 += NB) block_row_any<index_t, NB>(p, crow, col, i, b0, acc.data());
        for (; b0 < p.B; ++b0) block_row_any<index_t, 1>(p, crow, col, i, b0, acc.data());
      }
    }
  }
}

// Square tiles of 4, 8 and 16 get the register-tiled path; other shapes the general one.
template <typename index_t>
void dispatch_tile(const Problem& p, const index_t* crow, const index_t* col, int64_t nbr) {
  const int64_t tile = p.bh == p.bw ? p.bh : 0;
  switch (tile) {
    case 4: return run<index_t, 4, 4>(p, crow, col, nbr);
    case 8: return run<index_t, 8, 8>(p, crow, col, nbr);
    case 16: return run<index_t, 16, 16>(p, crow, col, nbr);
    default: return run<index_t, 0, 0>(p, crow, col, nbr);
  }
}

at::Tensor bsr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                      const at::Tensor& values_t, const std::optional<at::Tensor>& bias,
                      int64_t out_features, std::string_view activation,
                      const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(values_t.dim() == 3 && values_t.scalar_type() == at::kFloat,
              "values_t must be float32 (nblocks, bw, bh)");
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1 && crow.scalar_type() == col.scalar_type(),
              "crow_indices and col_indices must be 1-D with one integer dtype");
  TORCH_CHECK(col.size(0) == values_t.size(0), "one col index per tile");
  const int64_t nbr = crow.size(0) - 1, bw = values_t.size(1), bh = values_t.size(2);
  TORCH_CHECK(nbr >= 0 && out_features <= nbr * bh && out_features > (nbr - 1) * bh,
              "out_features ", out_features, " does not fit ", nbr, " block rows of ", bh);
  const int64_t K = x.size(-1);
  const at::Tensor x2 = sparseforge::input_rows(x);
  const at::Tensor vt = values_t.contiguous();
  const at::Tensor b = sparseforge::checked_bias(bias, out_features);
  const at::Tensor res = sparseforge::checked_residual(residual, x, out_features);
  const sparseforge::Epilogue ep{sparseforge::data_or_null(b), sparseforge::data_or_null(res),
                                 sparseforge::parse_activation(activation), out_features};
  at::Tensor out = at::empty({x2.size(0), out_features}, x.options());
  Problem p{x2.data_ptr<float>(), vt.data_ptr<float>(), ep, out.data_ptr<float>(), x2.size(0), K,
            out_features, bw, bh};
  const at::Tensor cr = crow.contiguous(), cl = col.contiguous();
  if (cr.scalar_type() == at::kInt) {
    dispatch_tile<int32_t>(p, cr.data_ptr<int32_t>(), cl.data_ptr<int32_t>(), nbr);
  } else {
    TORCH_CHECK(cr.scalar_type() == at::kLong, "indices must be int32 or int64");
    dispatch_tile<int64_t>(p, cr.data_ptr<int64_t>(), cl.data_ptr<int64_t>(), nbr);
  }
  sparseforge::finish(out, ep.act);
  return sparseforge::output_like(out, x, out_features);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_bsr_linear_" SF_STR(SF_ISA)
        "(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values_t, Tensor? bias, "
        "int out_features, str activation=\"none\", Tensor? residual=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_bsr_linear_" SF_STR(SF_ISA), &bsr_linear);
}
