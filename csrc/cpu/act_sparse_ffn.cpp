// Activation-sparse FFN kernels, CPU, float32: skip the exact zeros that ReLU / FATReLU leave in
// an FFN's intermediate activation (ProSparse: ~90% of them).
//
// sparse_input_linear: y = act(a @ W^T + b + residual), a (B, K) mostly zeros (or FATReLU(a),
// given input_threshold), weight_t = W^T (K, N) row-major,
// so a zero a[:, k] skips row k of W^T entirely. The active rows are the union over the B
// tokens, their values packed (nact, B). Output columns go in chunks of up to 4096; for its
// chunk a thread accumulates into the (B, cw) output slice, streaming the active rows' slices
// in blocks of 32 rows; within a block each token applies only its own nonzero rows, eight per
// pass. So a row is read from memory once, by the first token that uses it (per-token lists
// re-read it for every token), and no FMA multiplies a zero (a pass over the union with every
// token does). Both alternatives measured slower at batch 8 and 16 (one thread, 11008 x 4096,
// 90% i.i.d. sparsity: per-token lists ~1.2x, union passes ~1.5x). OpenMP
// takes (column chunk, row part) tasks: with fewer chunks than threads the active rows are
// split too, each part into its own partial output, summed at the end.
//
// relu_gated_ffn: y = (act(x Wg^T) * (x Wu^T)) Wd^T with act = FATReLU (v if v >= threshold
// else 0). The gate is dense: gemv.h's streaming product up to GEMV_MAX_ROWS tokens (11008 x
// 4096 at batch 1: 1.8x MKL's on a 2-core EPYC, benchmarks/gemv.py), at::linear (MKL) past
// that; the up projection runs only for the (token, neuron) pairs whose gate survived, one dot
// with a contiguous row of Wu (I, H) each; the down projection is the kernel above on the
// packed activation, reading rows of Wd^T (I, N).
//
// Built twice from this one file (see sparseforge/kernels/extension.py): with -mavx2 -mfma and
// without; SF_ISA names the variant, so each registers its own ops
// sparseforge::_sparse_input_linear_<isa> and sparseforge::_relu_gated_ffn_<isa>.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "gemv.h"
#include "linear_common.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>


namespace {

using sparseforge::load8;
using sparseforge::store8;
using sparseforge::vf8;

// The nonzero rows of an activation (B, K): idx (nact,) ascending, vals (nact, B) with
// vals[j * B + b] = a[b, idx[j]] (zero where token b does not use row idx[j]).
struct Active {
  std::vector<int64_t> idx;
  std::vector<float> vals;
};

// With `threshold`, FATReLU(a) (v if v >= threshold, else 0; NaN gives 0) is what is packed:
// the activation's prologue, applied as the rows are scanned, never written back.
Active active_rows(const float* a, int64_t B, int64_t K, std::optional<float> threshold = {}) {
  const bool fat = threshold.has_value();
  const float thr = threshold.value_or(0.0f);
  auto value = [fat, thr](float v) { return !fat || v >= thr ? v : 0.0f; };
  Active act;
  if (B == 1) {
    for (int64_t k = 0; k < K; ++k)
      if (const float v = value(a[k]); v != 0.0f) act.idx.push_back(k), act.vals.push_back(v);
    return act;
  }
  std::vector<uint8_t> used(K, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) used[k] |= value(a[b * K + k]) != 0.0f;
  for (int64_t k = 0; k < K; ++k)
    if (used[k]) act.idx.push_back(k);
  const int64_t nact = static_cast<int64_t>(act.idx.size());
  act.vals.resize(nact * B);
  for (int64_t j = 0; j < nact; ++j)
    for (int64_t b = 0; b < B; ++b) act.vals[j * B + b] = value(a[b * K + act.idx[j]]);
  return act;
}

struct Down {
  const float* wt;    // (K, N) row-major: W^T
  const float* bias;  // (N,) or nullptr
  float* out;         // (B, N) row-major
  int64_t B, N;
  // The epilogue: the residual (B, N) seeds the accumulators with the bias; relu is applied
  // as a chunk is finished (while it is cache-resident), GELU after the kernel (`finish`).
  const float* residual = nullptr;
  sparseforge::Activation act = sparseforge::Activation::kNone;
};

inline void relu_inplace(float* o, int64_t n) {
  for (int64_t c = 0; c < n; ++c) o[c] = o[c] > 0.0f ? o[c] : 0.0f;
}

// acc[0:cw] += sum_r a[r] * w[r][0:cw] for R rows at once: one load and store of acc per R
// FMAs.
template <int R>
inline void axpy(float* __restrict acc, int64_t cw, const float* const* w, const float* a) {
  const float* wr[R];
  float ar[R];
  for (int r = 0; r < R; ++r) wr[r] = w[r], ar[r] = a[r];
  int64_t c = 0;
  for (; c + 8 <= cw; c += 8) {
    vf8 s = load8(acc + c);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) s += ar[r] * load8(wr[r] + c);
    store8(acc + c, s);
  }
  for (; c < cw; ++c) {
    float s = acc[c];
    for (int r = 0; r < R; ++r) s += ar[r] * wr[r][c];
    acc[c] = s;
  }
}

inline void axpy_n(float* acc, int64_t cw, const float* const* w, const float* a, int n) {
  switch (n) {
    case 1: return axpy<1>(acc, cw, w, a);
    case 2: return axpy<2>(acc, cw, w, a);
    case 3: return axpy<3>(acc, cw, w, a);
    case 4: return axpy<4>(acc, cw, w, a);
    case 5: return axpy<5>(acc, cw, w, a);
    case 6: return axpy<6>(acc, cw, w, a);
    case 7: return axpy<7>(acc, cw, w, a);
    default: return axpy<8>(acc, cw, w, a);
  }
}

constexpr int PACK = 8;       // rows per axpy pass
constexpr int64_t ROWS = 32;  // active rows per block: their slices stay cached across tokens
// Widest column chunk. Wider is faster (measured on 4096 columns, one thread: batch 16 at 90%
// sparsity 1.4x faster at 4096 than at 2048, 1.65x than at 1024; batch 1 1.05x), as each
// active row slice is then one long contiguous read.
constexpr int64_t CW_MAX = 4096;

// Columns [n0, n0 + cw) of every token from active rows [j_lo, j_hi), into o (B, ldo), which
// starts from the bias and residual (`first`: the part that owns the output) or zero. Blocks of
// ROWS active rows; within a block each token takes only its own nonzero rows, PACK at a time,
// so a row is read from memory once (by the first token that uses it) and no FMA multiplies a
// zero. `last`: no other part adds to these outputs, so relu is applied here.
void down_chunk(const Down& p, const Active& act, int64_t j_lo, int64_t j_hi, int64_t n0,
                int64_t cw, float* out, int64_t ldo, bool first, bool last) {
  const int64_t B = p.B, N = p.N;
  for (int64_t b = 0; b < B; ++b) {
    float* o = out + b * ldo + n0;
    if (first && p.bias) std::copy(p.bias + n0, p.bias + n0 + cw, o);
    else std::fill(o, o + cw, 0.0f);
    if (first && p.residual) {
      const float* res = p.residual + b * N + n0;
      for (int64_t c = 0; c < cw; ++c) o[c] += res[c];
    }
  }
  const float* w[ROWS];
  float a[ROWS];
  for (int64_t j0 = j_lo; j0 < j_hi; j0 += ROWS) {
    const int64_t nr = std::min(ROWS, j_hi - j0);
    const float* v = act.vals.data() + j0 * B;  // (nr, B)
    for (int64_t b = 0; b < B; ++b) {
      int n = 0;
      for (int64_t r = 0; r < nr; ++r)
        if (v[r * B + b] != 0.0f) w[n] = p.wt + act.idx[j0 + r] * N + n0, a[n++] = v[r * B + b];
      float* o = out + b * ldo + n0;
      for (int q = 0; q < n; q += PACK) axpy_n(o, cw, w + q, a + q, std::min(PACK, n - q));
    }
  }
  if (last && p.act == sparseforge::Activation::kRelu)
    for (int64_t b = 0; b < B; ++b) relu_inplace(out + b * ldo + n0, cw);
}

// out (B, N) = packed activation @ W^T + bias. Threads take (column chunk, row part) tasks:
// column chunks first; when there are fewer chunks than threads the active rows are split too,
// each part summing into its own (B, N) buffer, added up at the end (a few KiB), so every
// thread keeps full-width row reads.
void down(const Down& p, const Active& act) {
  const int64_t B = p.B, N = p.N, nact = static_cast<int64_t>(act.idx.size());
  const int64_t nthreads = at::get_num_threads();
  const bool parallel = nthreads > 1 && nact * N * B >= (1 << 16);  // else not worth a fork
  const int64_t threads = parallel ? nthreads : 1;
  const int64_t cw = std::min(N, CW_MAX);
  const int64_t nchunks = (N + cw - 1) / cw;
  const int64_t nblocks = (nact + ROWS - 1) / ROWS;
  const int64_t nparts = std::max<int64_t>(1, std::min((threads + nchunks - 1) / nchunks, nblocks));
  std::vector<float> partial((nparts - 1) * B * N);  // parts 1.. (part 0 writes out)
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (parallel)
  for (int64_t t = 0; t < nchunks * nparts; ++t) {
    const int64_t c = t % nchunks, r = t / nchunks;
    const int64_t j_lo = std::min(nact, nblocks * r / nparts * ROWS);
    const int64_t j_hi = std::min(nact, nblocks * (r + 1) / nparts * ROWS);
    float* o = r == 0 ? p.out : partial.data() + (r - 1) * B * N;
    down_chunk(p, act, j_lo, j_hi, c * cw, std::min(cw, N - c * cw), o, N, r == 0,
               nparts == 1);
  }
  if (nparts > 1) {
    const bool relu = p.act == sparseforge::Activation::kRelu;
#pragma omp parallel for num_threads(threads)
    for (int64_t q = 0; q < B * N; ++q) {
      float v = p.out[q];
      for (int64_t r = 1; r < nparts; ++r) v += partial[(r - 1) * B * N + q];
      p.out[q] = relu && v < 0.0f ? 0.0f : v;
    }
  }
}

// The product of the leading dims of t (..., K): its rows, also when K is 0.
int64_t rows_of(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

void check_float_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kFloat, name,
              " must be a float32 matrix, got ", t.scalar_type(), " of shape ", t.sizes());
}

at::Tensor sparse_input_linear(const at::Tensor& a, const at::Tensor& weight_t,
                               const std::optional<at::Tensor>& bias, std::string_view activation,
                               const std::optional<at::Tensor>& residual,
                               std::optional<double> input_threshold) {
  TORCH_CHECK(a.dim() >= 1 && a.scalar_type() == at::kFloat,
              "a must be float32 (..., K), got ", a.scalar_type(), " of shape ", a.sizes());
  check_float_matrix(weight_t, "weight_t (K, N)");
  TORCH_CHECK(a.size(-1) == weight_t.size(0), "a (..., K) has K = ", a.size(-1),
              " but weight_t is ", weight_t.sizes(), "; weight_t must be W^T, (K, N)");
  const int64_t K = weight_t.size(0), N = weight_t.size(1);
  const at::Tensor a2 = a.reshape({rows_of(a), K}).contiguous();  // (B, K)
  const at::Tensor wt = weight_t.contiguous();
  const at::Tensor b = sparseforge::checked_bias(bias, N);
  const at::Tensor res = sparseforge::checked_residual(residual, a, N);
  const sparseforge::Activation fn = sparseforge::parse_activation(activation);
  at::Tensor out = at::empty({a2.size(0), N}, a.options());
  if (a2.size(0) > 0 && N > 0) {
    std::optional<float> thr;
    if (input_threshold) thr = static_cast<float>(*input_threshold);
    const Active act = active_rows(a2.data_ptr<float>(), a2.size(0), K, thr);
    down(Down{wt.data_ptr<float>(), sparseforge::data_or_null(b), out.data_ptr<float>(),
              a2.size(0), N, sparseforge::data_or_null(res), fn}, act);
    sparseforge::finish(out, fn);
  }
  return sparseforge::output_like(out, a, N);
}

// dot(x[0:n], w[0:n]) with sixteen partial sums.
inline float dot(const float* __restrict x, const float* __restrict w, int64_t n) {
  vf8 s0 = {}, s1 = {};
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    s0 += load8(x + c) * load8(w + c);
    s1 += load8(x + c + 8) * load8(w + c + 8);
  }
  for (; c + 8 <= n; c += 8) s0 += load8(x + c) * load8(w + c);
  s0 += s1;
  float s = ((s0[0] + s0[1]) + (s0[2] + s0[3])) + ((s0[4] + s0[5]) + (s0[6] + s0[7]));
  for (; c < n; ++c) s += x[c] * w[c];
  return s;
}

at::Tensor relu_gated_ffn(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up,
                          const at::Tensor& w_down_t, double threshold) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat,
              "x must be float32 (..., H), got ", x.scalar_type(), " of shape ", x.sizes());
  check_float_matrix(w_gate, "w_gate (I, H)");
  check_float_matrix(w_up, "w_up (I, H)");
  check_float_matrix(w_down_t, "w_down_t (I, N)");
  TORCH_CHECK(w_gate.sizes() == w_up.sizes() && w_gate.size(1) == x.size(-1),
              "w_gate and w_up must both be (I, H) with H = x.shape[-1] = ", x.size(-1),
              ", got ", w_gate.sizes(), " and ", w_up.sizes());
  TORCH_CHECK(w_down_t.size(0) == w_gate.size(0), "w_down_t must be W_down^T, (I, N) with I = ",
              w_gate.size(0), ", got ", w_down_t.sizes());
  const int64_t H = x.size(-1), I = w_gate.size(0), N = w_down_t.size(1);
  const at::Tensor x2 = x.reshape({rows_of(x), H}).contiguous();  // (B, H)
  const int64_t B = x2.size(0);
  at::Tensor out = at::empty({B, N}, x.options());
  if (B == 0 || N == 0) return sparseforge::output_like(out, x, N);
  at::Tensor gate;  // (B, I), dense
  if (B <= sparseforge::GEMV_MAX_ROWS) {  // the weight streamed by every thread (gemv.h)
    const at::Tensor wg = w_gate.contiguous();
    gate = at::empty({B, I}, x2.options());
    sparseforge::gemv({wg.data_ptr<float>(), x2.data_ptr<float>(), {}, gate.data_ptr<float>(),
                       B, H, I});
  } else {
    gate = at::linear(x2, w_gate).contiguous();
  }
  // FATReLU in place, then the union of surviving neurons with their gate values
  float* g = gate.data_ptr<float>();
  const float thr = static_cast<float>(threshold);
  for (int64_t q = 0; q < B * I; ++q) g[q] = g[q] >= thr ? g[q] : 0.0f;
  Active act = active_rows(g, B, I);
  // up projection for the surviving (token, neuron) pairs: h = gate * (x . w_up[i])
  const at::Tensor wu = w_up.contiguous(), wd = w_down_t.contiguous();
  const float* xp = x2.data_ptr<float>();
  const float* wup = wu.data_ptr<float>();
  const int64_t nact = static_cast<int64_t>(act.idx.size());
  const int64_t nthreads = at::get_num_threads();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16) if (nact * H >= (1 << 16))
  for (int64_t j = 0; j < nact; ++j) {
    const float* row = wup + act.idx[j] * H;
    for (int64_t b = 0; b < B; ++b) {
      float& v = act.vals[j * B + b];
      if (v != 0.0f) v *= dot(xp + b * H, row, H);
    }
  }
  down(Down{wd.data_ptr<float>(), nullptr, out.data_ptr<float>(), B, N}, act);
  return sparseforge::output_like(out, x, N);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_sparse_input_linear_" SF_STR(SF_ISA)
        "(Tensor a, Tensor weight_t, Tensor? bias, str activation=\"none\", Tensor? residual=None, "
        "float? input_threshold=None) -> Tensor");
  m.def("_relu_gated_ffn_" SF_STR(SF_ISA)
        "(Tensor x, Tensor w_gate, Tensor w_up, Tensor w_down_t, float threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_sparse_input_linear_" SF_STR(SF_ISA), &sparse_input_linear);
  m.impl("_relu_gated_ffn_" SF_STR(SF_ISA), &relu_gated_ffn);
}
