// BCR (GRIM) linear y = act(x @ W^T + b + residual), CPU, float32.
//
// Each stored block is a dense (kr, kc) tile at kept rows `rows` and kept columns `cols` of an
// (r, c) block of W. Per block: gather the kc kept input columns of x, multiply by the tile
// (stored transposed, (kc, kr), so the inner loop is an axpy over the kr outputs that GCC
// vectorizes without -ffast-math), scatter-add into the kr kept output rows. Blocks of one
// tile shape are contiguous (a group), so kr is a compile-time constant per group (1..16):
// the NB x kr accumulators stay in registers.
//
// Batch >= 8 instead transposes x to (K, B) (padded to a multiple of 8) and, per kept row,
// accumulates 8-float vectors over the batch (see run_batched).
//
// Threads split each group's blocks; blocks from different threads can hit the same output
// rows, so threads accumulate into their own buffers (the first into out for batch < 8),
// summed at the end; the epilogue (bias, residual, relu: linear_common.h) is applied in that
// same final pass, to each sum as it is formed; GELU right after.
//
// Built twice from this one file (see sparseforge/kernels/extension.py): with -mavx2 -mfma and
// without; SF_ISA names the variant, so each registers its own op sparseforge::_bcr_linear_<isa>.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>

#include "linear_common.h"

#include <algorithm>
#include <cstdint>
#include <vector>


namespace {

struct Problem {
  const float* x;  // (B, K) row-major
  int64_t B, K, N;
  int64_t r, c;    // block size
  int64_t nbc;     // block columns = ceil(K / c)
};

// One group's stored blocks: tiles (kc, kr) at `vt`, kept row/col positions at `rows`/`cols`.
template <typename bid_t, typename sid_t>
struct Group {
  const bid_t* ids;   // (nb,)
  const sid_t* rows;  // (nb, kr)
  const sid_t* cols;  // (nb, kc)
  const float* vt;    // (nb, kc, kr)
  int64_t kr, kc;
};

// Block q of group g, batch rows [b0, b0 + NBT), KR fixed at compile time (KR = 0: runtime kr,
// accumulating through `acc_rt`). Adds into `out` (B, N).
template <int NBT, int KR, typename bid_t, typename sid_t>
inline void block(const Problem& p, const Group<bid_t, sid_t>& g, int64_t q, int64_t b0,
                  float* __restrict out, float* __restrict acc_rt) {
  const int64_t kr = KR > 0 ? KR : g.kr, kc = g.kc;
  const int64_t id = static_cast<int64_t>(g.ids[q]);
  const int64_t r0 = id / p.nbc * p.r, c0 = id % p.nbc * p.c;
  const sid_t* rows = g.rows + q * kr;
  const sid_t* cols = g.cols + q * kc;
  const float* __restrict t = g.vt + q * kc * kr;  // (kc, kr)
  const float* __restrict x = p.x + b0 * p.K + c0;
  float acc_ct[NBT][KR > 0 ? KR : 1] = {};
  float* __restrict acc = KR > 0 ? &acc_ct[0][0] : acc_rt;
  if constexpr (KR == 0) std::fill(acc, acc + NBT * kr, 0.0f);
  for (int64_t j = 0; j < kc; ++j) {
    const int64_t col = cols[j];  // kept columns are real columns: never past K
    float xv[NBT];
    for (int b = 0; b < NBT; ++b) xv[b] = x[b * p.K + col];
    const float* __restrict tj = t + j * kr;
    if constexpr (KR > 0) {
      for (int b = 0; b < NBT; ++b)
        for (int i = 0; i < KR; ++i) acc_ct[b][i] += tj[i] * xv[b];
    } else {
      for (int b = 0; b < NBT; ++b)
        for (int64_t i = 0; i < kr; ++i) acc[b * kr + i] += tj[i] * xv[b];
    }
  }
  for (int b = 0; b < NBT; ++b) {
    float* o = out + (b0 + b) * p.N + r0;
    for (int64_t i = 0; i < kr; ++i) o[rows[i]] += acc[b * kr + i];
  }
}

constexpr int NB = 4;  // batch rows per register tile

// This thread's share of one group's blocks, every batch row.
template <int KR, typename bid_t, typename sid_t>
void group_share(const Problem& p, const Group<bid_t, sid_t>& g, int64_t nb, float* out,
                 float* acc_rt) {
#pragma omp for schedule(static) nowait
  for (int64_t q = 0; q < nb; ++q) {
    int64_t b0 = 0;
    for (; b0 + NB <= p.B; b0 += NB) block<NB, KR>(p, g, q, b0, out, acc_rt);
    for (; b0 < p.B; ++b0) block<1, KR>(p, g, q, b0, out, acc_rt);
  }
}

template <typename bid_t, typename sid_t>
void dispatch_kr(const Problem& p, const Group<bid_t, sid_t>& g, int64_t nb, float* out,
                 float* acc_rt) {
  switch (g.kr) {
#define SF_CASE(n) \
  case n: return group_share<n>(p, g, nb, out, acc_rt);
    SF_CASE(1) SF_CASE(2) SF_CASE(3) SF_CASE(4) SF_CASE(5) SF_CASE(6) SF_CASE(7) SF_CASE(8)
    SF_CASE(9) SF_CASE(10) SF_CASE(11) SF_CASE(12) SF_CASE(13) SF_CASE(14) SF_CASE(15)
    SF_CASE(16)
#undef SF_CASE
    default: return group_share<0>(p, g, nb, out, acc_rt);
  }
}

using sparseforge::load8;
using sparseforge::vf8;

// Batch >= 8: block q against batch columns [b0, b0 + 8 * NV) of xt (K, Bp), adding into
// out_t (N, Bp). Each kept row is one dot over the kc kept columns, computed for 8 * NV batch
// values at once; the kc gathered rows of xt stay in L1 across the kr kept rows.
template <int NV, typename bid_t, typename sid_t>
inline void block_t(const Problem& p, const Group<bid_t, sid_t>& g, int64_t q, const float* xt,
                    int64_t Bp, int64_t b0, float* out_t) {
  const int64_t kr = g.kr, kc = g.kc;
  const int64_t id = static_cast<int64_t>(g.ids[q]);
  const int64_t r0 = id / p.nbc * p.r, c0 = id % p.nbc * p.c;
  const sid_t* rows = g.rows + q * kr;
  const sid_t* cols = g.cols + q * kc;
  const float* t = g.vt + q * kc * kr;  // (kc, kr)
  const float* xb = xt + c0 * Bp + b0;
  for (int64_t i = 0; i < kr; ++i) {
    vf8 acc[NV] = {};
    for (int64_t j = 0; j < kc; ++j) {
      const float w = t[j * kr + i];
      const float* xc = xb + static_cast<int64_t>(cols[j]) * Bp;
      for (int u = 0; u < NV; ++u) acc[u] += w * load8(xc + 8 * u);
    }
    float* o = out_t + (r0 + rows[i]) * Bp + b0;
    for (int u = 0; u < NV; ++u) {
      const vf8 sum = load8(o + 8 * u) + acc[u];
      __builtin_memcpy(o + 8 * u, &sum, sizeof sum);
    }
  }
}

template <typename bid_t, typename sid_t>
void group_share_t(const Problem& p, const Group<bid_t, sid_t>& g, int64_t nb, const float* xt,
                   int64_t Bp, float* out_t) {
#pragma omp for schedule(static) nowait
  for (int64_t q = 0; q < nb; ++q) {
    int64_t b0 = 0;
    for (; b0 + 32 <= Bp; b0 += 32) block_t<4>(p, g, q, xt, Bp, b0, out_t);
    if (b0 + 16 <= Bp) block_t<2>(p, g, q, xt, Bp, b0, out_t), b0 += 16;
    if (b0 < Bp) block_t<1>(p, g, q, xt, Bp, b0, out_t);
  }
}

// Batch >= 8 on x transposed and zero-padded to (K, Bp); every thread adds into its own
// (N, Bp) buffer, and the sum is written transposed (through the epilogue) into out (B, N).
template <typename bid_t, typename sid_t>
void run_batched(const Problem& p, const bid_t* ids, const int64_t* shapes, const int64_t* ptr,
                 int64_t G, const sid_t* rows, const sid_t* cols, const float* vt,
                 const std::vector<int64_t>& row_at, const std::vector<int64_t>& col_at,
                 const std::vector<int64_t>& val_at, const sparseforge::Epilogue& ep,
                 float* out) {
  const int64_t Bp = (p.B + 7) / 8 * 8;
  std::vector<float> xt(static_cast<size_t>(p.K) * Bp, 0.0f);  // (K, Bp)
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t k = 0; k < p.K; ++k) xt[k * Bp + b] = p.x[b * p.K + k];
  const int nthreads = std::max(1, at::get_num_threads());
  const int64_t NBp = p.N * Bp;
  std::vector<float> bufs(static_cast<size_t>(nthreads) * NBp, 0.0f);  // (T, N, Bp)
#pragma omp parallel num_threads(nthreads)
  {
    float* mine = bufs.data() + omp_get_thread_num() * NBp;
    for (int64_t g = 0; g < G; ++g) {
      const Group<bid_t, sid_t> grp{ids + ptr[g], rows + row_at[g], cols + col_at[g],
                                    vt + val_at[g], shapes[2 * g], shapes[2 * g + 1]};
      group_share_t(p, grp, ptr[g + 1] - ptr[g], xt.data(), Bp, mine);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t n = 0; n < p.N; ++n) {
      for (int64_t b = 0; b < p.B; ++b) {
        float s = 0.0f;
        for (int t = 0; t < nthreads; ++t) s += bufs[t * NBp + n * Bp + b];
        out[b * p.N + n] = ep(s, b, n);
      }
    }
  }
}

template <typename bid_t, typename sid_t>
void run(const Problem& p, const bid_t* ids, const int64_t* shapes, const int64_t* ptr,
         int64_t G, const sid_t* rows, const sid_t* cols, const float* vt,
         const sparseforge::Epilogue& ep, float* out) {
  // where each group's indices and tiles start
  std::vector<int64_t> row_at(G + 1, 0), col_at(G + 1, 0), val_at(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t nb = ptr[g + 1] - ptr[g], kr = shapes[2 * g], kc = shapes[2 * g + 1];
    row_at[g + 1] = row_at[g] + nb * kr;
    col_at[g + 1] = col_at[g] + nb * kc;
    val_at[g + 1] = val_at[g] + nb * kr * kc;
  }
  if (p.B >= 8)
    return run_batched(p, ids, shapes, ptr, G, rows, cols, vt, row_at, col_at, val_at, ep, out);
  std::fill(out, out + p.B * p.N, 0.0f);
  const int nthreads = std::max(1, at::get_num_threads());
  const int64_t BN = p.B * p.N;
  std::vector<float> extra(static_cast<size_t>(nthreads - 1) * BN, 0.0f);  // threads 1..T-1
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    float* mine = tid == 0 ? out : extra.data() + (tid - 1) * BN;
    std::vector<float> acc_rt(NB * p.r);
    for (int64_t g = 0; g < G; ++g) {
      const Group<bid_t, sid_t> grp{ids + ptr[g], rows + row_at[g], cols + col_at[g],
                                    vt + val_at[g], shapes[2 * g], shapes[2 * g + 1]};
      dispatch_kr(p, grp, ptr[g + 1] - ptr[g], mine, acc_rt.data());
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t e = 0; e < BN; ++e) {
      float s = out[e];
      for (int t = 0; t < nthreads - 1; ++t) s += extra[t * BN + e];
      out[e] = ep(s, e / p.N, e % p.N);
    }
  }
}

template <typename bid_t>
void dispatch_sid(const Problem& p, const bid_t* ids, const int64_t* shapes, const int64_t* ptr,
                  int64_t G, const at::Tensor& rows, const at::Tensor& cols, const float* vt,
                  const sparseforge::Epilogue& ep, float* out) {
  if (rows.scalar_type() == at::kByte && cols.scalar_type() == at::kByte) {
    run(p, ids, shapes, ptr, G, rows.data_ptr<uint8_t>(), cols.data_ptr<uint8_t>(), vt, ep, out);
  } else {  // a block side over 256: widened here (rare)
    const at::Tensor r32 = rows.to(at::kInt), c32 = cols.to(at::kInt);
    run(p, ids, shapes, ptr, G, r32.data_ptr<int32_t>(), c32.data_ptr<int32_t>(), vt, ep, out);
  }
}

at::Tensor bcr_linear(const at::Tensor& x, const at::Tensor& block_ids,
                      const at::Tensor& group_shapes, const at::Tensor& group_ptr,
                      const at::Tensor& row_indices, const at::Tensor& col_indices,
                      const at::Tensor& values_t, const std::optional<at::Tensor>& bias,
                      int64_t out_features, int64_t block_rows, int64_t block_cols,
                      std::string_view activation, const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(values_t.dim() == 1 && values_t.scalar_type() == at::kFloat,
              "values_t must be float32 (sum kr * kc,)");
  TORCH_CHECK(block_rows >= 1 && block_cols >= 1, "block sizes must be positive");
  TORCH_CHECK(group_shapes.dim() == 2 && group_shapes.size(1) == 2, "group_shapes is (G, 2)");
  TORCH_CHECK(group_ptr.dim() == 1 && group_ptr.size(0) == group_shapes.size(0) + 1,
              "group_ptr is (G + 1,)");
  const int64_t K = x.size(-1), G = group_shapes.size(0);
  const at::Tensor shapes = group_shapes.to(at::kLong).contiguous();
  const at::Tensor ptr = group_ptr.to(at::kLong).contiguous();
  const int64_t* sp = shapes.data_ptr<int64_t>();
  const int64_t* pp = ptr.data_ptr<int64_t>();
  int64_t nr = 0, nc = 0, nv = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t nb = pp[g + 1] - pp[g], kr = sp[2 * g], kc = sp[2 * g + 1];
    TORCH_CHECK(nb >= 0 && kr >= 1 && kr <= block_rows && kc >= 1 && kc <= block_cols,
                "group ", g, " has a bad shape or count");
    nr += nb * kr, nc += nb * kc, nv += nb * kr * kc;
  }
  TORCH_CHECK(pp[0] == 0 && pp[G] == block_ids.numel(), "group_ptr must span block_ids");
  TORCH_CHECK(row_indices.numel() == nr && col_indices.numel() == nc && values_t.numel() == nv,
              "row/col indices or values_t do not match the groups");
  TORCH_CHECK(out_features >= 1, "out_features must be positive");
  const at::Tensor x2 = sparseforge::input_rows(x);
  at::Tensor out = at::empty({x2.size(0), out_features}, x.options());
  const at::Tensor b = sparseforge::checked_bias(bias, out_features);
  const at::Tensor res = sparseforge::checked_residual(residual, x, out_features);
  const sparseforge::Epilogue ep{sparseforge::data_or_null(b), sparseforge::data_or_null(res),
                                 sparseforge::parse_activation(activation), out_features};
  Problem p{x2.data_ptr<float>(), x2.size(0), K, out_features, block_rows, block_cols,
            (K + block_cols - 1) / block_cols};
  const at::Tensor vt = values_t.contiguous(), ri = row_indices.contiguous(),
                   ci = col_indices.contiguous(), ids = block_ids.contiguous();
  if (ids.scalar_type() == at::kInt) {
    dispatch_sid(p, ids.data_ptr<int32_t>(), sp, pp, G, ri, ci, vt.data_ptr<float>(), ep,
                 out.data_ptr<float>());
  } else {
    TORCH_CHECK(ids.scalar_type() == at::kLong, "block_ids must be int32 or int64");
    dispatch_sid(p, ids.data_ptr<int64_t>(), sp, pp, G, ri, ci, vt.data_ptr<float>(), ep,
                 out.data_ptr<float>());
  }
  sparseforge::finish(out, ep.act);
  return sparseforge::output_like(out, x, out_features);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_bcr_linear_" SF_STR(SF_ISA)
        "(Tensor x, Tensor block_ids, Tensor group_shapes, Tensor group_ptr, "
        "Tensor row_indices, Tensor col_indices, Tensor values_t, Tensor? bias, "
        "int out_features, int block_rows, int block_cols, str activation=\"none\", "
        "Tensor? residual=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_bcr_linear_" SF_STR(SF_ISA), &bcr_linear);
}
