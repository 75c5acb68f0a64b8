// The dense product of a few rows with a weight streamed once by every thread:
// out = ep(x @ W^T), x (B, K), W (N, K) row-major, out (B, N), for B up to GEMV_MAX_ROWS.
//
// At a few rows (batch-1 inference, decoding) a linear is a matrix-vector product: it reads the
// whole weight for two FLOPs per element, so its speed is memory bandwidth. The stock paths
// measured on a 2-core AMD EPYC (torch 2.14, 2 threads; benchmarks/gemv.py) read 13-26 GB/s at
// batch 1 (F.linear -> MKL sgemv, inductor's packed mkl_linear, oneDNN's packed linear), about
// what one core streams, where two threads stream about twice that. Here the output rows are split into
// one contiguous range per thread; a tile of R weight rows x BB tokens keeps R * BB dot
// products in 8-float registers while the R rows stream once, so x (a few KB, in L1) is the only
// thing read again. Tiles: R = 8 rows at one token; at more, R = 4 rows x pairs of tokens (the 4
// rows stay in L1/L2 between pairs). Measured there at 3072 x 768 and 768 x 3072, batch 1-8,
// these beat R = 1 or 2, and pairs beat chunks of 4 tokens. Each sum leaves its registers
// through the epilogue (bias, residual, relu: linear_common.h).
//
// Used by gemv_linear.cpp (the op) and act_sparse_ffn.cpp (the gated FFN's dense gate).
#pragma once

#include <ATen/Parallel.h>

#include "linear_common.h"

#include <algorithm>
#include <cstdint>

namespace sparseforge {

// Rows of x the streaming product takes: past that the product turns compute-bound and blocked
// GEMM (at::linear) wins.
constexpr int64_t GEMV_MAX_ROWS = 16;

struct GemvProblem {
  const float* w;  // (N, K) row-major
  const float* x;  // (B, K) row-major
  Epilogue ep;
  float* out;      // (B, N) row-major
  int64_t B, K, N;
};

// The sum of a vector's 8 lanes, pairwise.
inline float lanes_sum(vf8 v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Outputs (b0 .. b0 + BB) x (n0 .. n0 + R): R rows of W dotted with BB rows of x.
template <int R, int BB>
inline void gemv_tile(const GemvProblem& p, int64_t n0, int64_t b0) {
  vf8 acc[R][BB] = {};
  const float* __restrict w = p.w + n0 * p.K;
  const float* __restrict x = p.x + b0 * p.K;
  const int64_t K = p.K, K8 = K / 8 * 8;
  for (int64_t k = 0; k < K8; k += 8) {
    vf8 xv[BB];
    for (int b = 0; b < BB; ++b) xv[b] = load8(x + b * K + k);
    for (int r = 0; r < R; ++r) {
      const vf8 wv = load8(w + r * K + k);
      for (int b = 0; b < BB; ++b) acc[r][b] += wv * xv[b];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < BB; ++b) {
      float s = lanes_sum(acc[r][b]);
      for (int64_t k = K8; k < K; ++k) s += w[r * K + k] * x[b * K + k];
      p.out[(b0 + b) * p.N + n0 + r] = p.ep(s, b0 + b, n0 + r);
    }
}

// R rows from n0, every token: in pairs of tokens (R * 2 accumulators) for R <= 4, then one.
template <int R>
inline void gemv_rows(const GemvProblem& p, int64_t n0) {
  int64_t b = 0;
  if constexpr (R <= 4) {
    for (; b + 2 <= p.B; b += 2) gemv_tile<R, 2>(p, n0, b);
  }
  for (; b < p.B; ++b) gemv_tile<R, 1>(p, n0, b);
}

// Rows [0, N) in groups of R, split across threads (contiguous ranges); the last N % R rows one
// at a time.
template <int R>
inline void gemv_run(const GemvProblem& p) {
  const int64_t groups = p.N / R;
  // at least ~64 KB of weight per task: below that threads cost more than they save
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (R * p.K * 4 + 1));
  at::parallel_for(0, groups, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) gemv_rows<R>(p, g * R);
  });
  for (int64_t n = groups * R; n < p.N; ++n) gemv_rows<1>(p, n);
}

// The whole product, p.B <= GEMV_MAX_ROWS.
inline void gemv(const GemvProblem& p) {
  if (p.B == 1) {
    gemv_run<8>(p);
  } else if (p.B > 1) {
    gemv_run<4>(p);
  }
}

}  // namespace sparseforge
